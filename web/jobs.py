"""The one periodic-job scheduler of the process (APScheduler 3).

Jobs are few and periodic (the dispatcher pass, lease expiry, escalation);
what is due lives in the database, so a restart loses nothing and several
processes may run the same jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from web import keys

logger = logging.getLogger(__name__)

Job = Callable[[web.Application], Awaitable[object]]
JOBS = web.AppKey("periodic_jobs", list[tuple[str, Job, float]])


def add_periodic_job(app: web.Application, name: str, job: Job, seconds: float) -> None:
    """Run `job(app)` every `seconds` once the application has started."""
    app.setdefault(JOBS, []).append((name, job, seconds))


def _wrapped(
    app: web.Application, name: str, job: Job
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        try:
            await job(app)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("periodic job failed job=%s", name)

    return run


async def scheduler_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: start the scheduler after the database, stop it first."""
    interval = app[keys.SETTINGS].dispatch_interval_seconds
    jobs = app.get(JOBS, [])
    if interval <= 0 or not jobs:
        logger.info("periodic jobs disabled jobs=%d", len(jobs))
        yield
        return
    scheduler = AsyncIOScheduler(timezone="Asia/Shanghai")
    for name, job, seconds in jobs:
        # coalesce + one instance: a slow pass is never stacked on itself;
        # the first pass runs at start, so catch-up does not wait a period
        scheduler.add_job(
            _wrapped(app, name, job),
            "interval",
            seconds=seconds,
            id=name,
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now(UTC),
        )
    scheduler.start()
    logger.info("periodic jobs started jobs=%s", ",".join(n for n, _, _ in jobs))
    yield
    scheduler.shutdown(wait=False)
    logger.info("periodic jobs stopped")
