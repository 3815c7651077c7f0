"""The aiohttp application factory: settings in, a ready application out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from aiohttp import web

from commons import audit, identity, inbox, stations
from commons.db import Database, IndexSpec, open_database
from commons.settings import Settings
from web import i18n, jobs, keys, middleware, recordings, render
from web.views import (
    admin,
    api,
    auth,
    consult,
    consult_files,
    consult_live,
    consult_stats,
    pages,
    questions,
    rooms,
    school,
    stations_pages,
)

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

# each feature package contributes its routes and its indexes
Setup = Callable[[web.Application], None]


def kernel_indexes() -> Iterable[IndexSpec]:
    return (*stations.INDEXES, *identity.INDEXES, *audit.INDEXES, *inbox.INDEXES)


def create_app(
    settings: Settings,
    *,
    database: Database | None = None,
    demo: bool = False,
    extra_setups: Iterable[Setup] = (),
) -> web.Application:
    """Build the application; the database opens on start-up unless one is given."""
    app = web.Application(
        middlewares=middleware.stack(),
        client_max_size=settings.max_body_bytes,
    )
    app[keys.SETTINGS] = settings
    app[keys.TRANSLATIONS] = i18n.load_catalogs()
    app[keys.TEMPLATES] = render.create_environment()
    app[keys.INDEX_SPECS] = [*kernel_indexes()]
    app[keys.STARTUP_HOOKS] = []
    app[keys.CSRF_EXEMPT] = set()
    app.cleanup_ctx.append(_database_context(database, demo=demo))
    app.cleanup_ctx.append(jobs.scheduler_context)

    for setup in (
        pages.setup,
        auth.setup,
        stations_pages.setup,
        admin.setup,
        api.setup,
        questions.setup,
        recordings.setup,
        rooms.setup,
        consult.setup,
        consult_files.setup,
        consult_live.setup,
        consult_stats.setup,
        school.setup,
        *extra_setups,
    ):
        setup(app)
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=True)
    return app


def _database_context(
    given: Database | None, *, demo: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def database_context(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        database = given or await open_database(settings)
        app[keys.DATABASE] = database
        app[keys.STATIONS] = stations.StationDirectory(database)
        if database.embedded_server is not None and not given:
            database.embedded_server.adopt()
        specs: list[IndexSpec] = app[keys.INDEX_SPECS]
        await database.ensure_indexes(specs)
        seeded = await stations.seed_if_empty(database)
        if seeded is not None:
            logger.info("station network seeded created=%d", seeded.created)
        if demo:
            from web import demo as demo_accounts

            await demo_accounts.seed(database)
        for hook in app[keys.STARTUP_HOOKS]:
            await hook(app)
        yield
        if given is None:
            await database.close()

    return database_context
