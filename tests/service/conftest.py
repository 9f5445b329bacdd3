"""Service fixtures: settings pointing at the test stores, a seeded data set, an in-process server per test.

Stores: Redis DB 15 (``redis_url``; flushed per test by ``redis_client``), MariaDB database
``cachelayer_test_service`` and Mongo database ``cachelayer_test_service`` on the session's SecantusDB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio

from harness.services import MySQLSettings
from service.config import Settings
from service.seed import seed
from service.services import Services
from tests.service._support import N_WALLPAPERS, Running, make_settings, run_service, stop_service


@pytest.fixture(scope="session")
def base_settings(redis_url: str, mysql_settings: MySQLSettings, mongo_uri: str) -> Settings:
    return make_settings(redis_url, mysql_settings, mongo_uri)


@pytest.fixture(scope="session")
def seeded(base_settings: Settings) -> Settings:
    """The demo data set (300 wallpapers, 14 categories) loaded once per session."""

    async def run() -> None:
        services = await Services.start(base_settings)
        try:
            await services.wallpapers.drop()
            await services.wallpapers.ensure_indexes()
            await seed(services, N_WALLPAPERS, progress=False)
        finally:
            await services.close()

    asyncio.run(run())
    return base_settings


@pytest.fixture(params=["motor", "pymongo"])
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def service(seeded: Settings, driver: str, redis_client: redis.asyncio.Redis) -> AsyncIterator[Running]:
    """The service in this test's event loop, on a free port, with the chosen Mongo driver; Redis DB 15 empty."""
    settings = seeded.model_copy(update={"mongo": seeded.mongo.model_copy(update={"driver": driver})})
    running = await run_service(settings)
    try:
        yield running
    finally:
        await stop_service(running)
