"""Database connection: a configured MongoDB server, or the embedded one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from commons import embedded
from commons.settings import Settings

logger = logging.getLogger(__name__)

Document = dict[str, Any]


class DatabaseUnavailable(RuntimeError):
    """No database answered; the message says which and what to do."""


@dataclass(frozen=True, kw_only=True)
class IndexSpec:
    """An index a package needs; created at start-up, idempotently."""

    collection: str
    keys: Sequence[tuple[str, int]]
    unique: bool = False
    sparse: bool = False
    expire_after_seconds: int | None = None
    partial: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return "_".join(f"{key}_{direction}" for key, direction in self.keys)

    def model(self) -> IndexModel:
        options: dict[str, Any] = {"name": self.name, "unique": self.unique}
        if self.sparse:
            options["sparse"] = True
        if self.expire_after_seconds is not None:
            options["expireAfterSeconds"] = self.expire_after_seconds
        if self.partial is not None:
            options["partialFilterExpression"] = self.partial
        return IndexModel(list(self.keys), **options)


def index(collection: str, *keys: str, unique: bool = False, **extra: Any) -> IndexSpec:
    """Shorthand for an ascending index; prefix a key with '-' for descending."""
    pairs = [(k[1:], -1) if k.startswith("-") else (k, ASCENDING) for k in keys]
    return IndexSpec(collection=collection, keys=pairs, unique=unique, **extra)


@dataclass(kw_only=True)
class Database:
    """The client, the database and, when embedded, the server process."""

    client: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]
    embedded_server: embedded.EmbeddedServer | None = None
    _closed: bool = field(default=False, repr=False)

    def __getitem__(self, name: str) -> Any:
        return self.db[name]

    async def ping(self) -> bool:
        try:
            await self.db.command("ping")
        except PyMongoError:
            return False
        return True

    async def ensure_indexes(self, specs: Iterable[IndexSpec]) -> None:
        by_collection: dict[str, list[IndexModel]] = {}
        for spec in specs:
            by_collection.setdefault(spec.collection, []).append(spec.model())
        for collection, models in by_collection.items():
            await self.db[collection].create_indexes(models)
        logger.info("indexes ensured collections=%d", len(by_collection))

    async def close(self, *, stop_embedded: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        await self.client.close()
        if stop_embedded and self.embedded_server is not None:
            await asyncio.to_thread(self.embedded_server.stop)


async def open_database(
    settings: Settings, *, timeout_ms: int = 5000, database_name: str | None = None
) -> Database:
    """Connect to HUIYUN_MONGODB_URI, or start/reuse the embedded server."""
    server: embedded.EmbeddedServer | None = None
    if settings.mongodb_uri:
        uri = settings.mongodb_uri
        where = "HUIYUN_MONGODB_URI"
    else:
        try:
            server = await asyncio.to_thread(embedded.ensure_server, settings.data_dir)
        except embedded.EmbeddedDatabaseError as exc:
            raise DatabaseUnavailable(str(exc)) from None
        uri = server.uri
        where = "embedded database"
        logger.info(
            "using embedded SecantusDB port=%s data_dir=%s (production data "
            "belongs on a real MongoDB: set HUIYUN_MONGODB_URI)",
            server.port,
            settings.data_dir,
        )

    # a serverSelectionTimeoutMS in the URI is the operator's choice: keep it
    options: dict[str, Any] = {"tz_aware": True}
    if "serverselectiontimeoutms=" not in uri.lower():
        options["serverSelectionTimeoutMS"] = timeout_ms
    try:
        client: AsyncMongoClient[Document] = AsyncMongoClient(uri, **options)
    except (PyMongoError, ValueError) as exc:
        raise DatabaseUnavailable(
            f"{where} is not a usable MongoDB URI ({exc}); "
            "expected mongodb://[user:password@]host[:port][,...]/[?options]"
        ) from None
    database = Database(
        client=client,
        db=client[database_name or settings.database_name],
        embedded_server=server,
    )
    if not await database.ping():
        seconds = client.options.server_selection_timeout
        await database.close()
        raise DatabaseUnavailable(
            f"{where} did not answer within {seconds:g} s; "
            "check that the server is running and the URI is right"
        )
    return database
