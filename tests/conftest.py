"""Shared fixtures: one embedded database server per test session, a fresh
database per test, and a real HTTP server around the application.

Set HUIYUN_TEST_MONGODB_URI to run the same tests against a real MongoDB.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from commons import embedded, identity, stations
from commons.db import Database, open_database
from commons.settings import Settings, load_settings
from web.app import create_app


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("HUIYUN_TEST_MONGODB_URI")
    if configured:
        yield configured
        return
    server = embedded.ensure_server(tmp_path_factory.mktemp("embedded-db"))
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path, mongo_uri: str) -> Settings:
    return load_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "mongodb_uri": mongo_uri,
            "database_name": f"test_{uuid.uuid4().hex[:12]}",
            "secret_key": "test-secret-key-0123456789",
            "port": 0,
            # tests run periodic passes themselves, at the moment they choose
            "dispatch_interval_seconds": 0,
        },
        environ={},
    )


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    db = await open_database(settings)
    try:
        yield db
    finally:
        await db.client.drop_database(settings.database_name)
        await db.close()


@pytest.fixture
async def seeded(database: Database) -> Database:
    """The database with the Xi'an station network loaded."""
    await database.ensure_indexes((*stations.INDEXES, *identity.INDEXES))
    await stations.seed_if_empty(database)
    return database


AppFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_client(
    settings: Settings, database: Database
) -> AsyncIterator[AppFactory]:
    """Start the real application on a loopback port; returns a client factory."""
    clients: list[TestClient[web.Request, web.Application]] = []
    server: TestServer | None = None

    async def factory(**app_options: Any) -> TestClient[web.Request, web.Application]:
        nonlocal server
        if server is None:
            app = create_app(settings, database=database, **app_options)
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
        client: TestClient[web.Request, web.Application] = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
    if server is not None:
        await server.close()


@pytest.fixture
async def client(make_client: AppFactory) -> TestClient[web.Request, web.Application]:
    return await make_client()
