"""Seeding you can trust: retried while a store starts, resumable, marked complete last; `dev` finishes a partial
seed instead of serving it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pymongo.errors
import pytest
import redis.asyncio

from harness import SecantusServer, free_port
from service.__main__ import _seed
from service.config import Settings
from service.seed import BATCH, retrying, seed, seed_state
from service.services import Services
from tests.service._support import with_sections

N = 2 * BATCH + 37  # three batches, the last one partial


def own_database(settings: Settings, name: str = "cachelayer_test_seed") -> Settings:
    return with_sections(settings, mongo={"database": name})


async def test_retrying_backs_off_then_gives_up() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise pymongo.errors.AutoReconnect("starting")
        return "ok"

    assert await retrying("flaky", flaky, first_delay=0.01) == "ok"
    assert len(calls) == 3

    async def broken() -> None:
        raise pymongo.errors.AutoReconnect("still down")

    with pytest.raises(pymongo.errors.AutoReconnect):
        await retrying("broken", broken, attempts=3, first_delay=0.01)

    async def bug() -> None:
        raise ValueError("not a store problem")

    with pytest.raises(ValueError, match="store"):
        await retrying("bug", bug, first_delay=0.01)  # not retried


async def test_a_seed_that_died_is_resumed_and_marked_last(
    base_settings: Settings, redis_client: redis.asyncio.Redis
) -> None:
    settings = own_database(base_settings)
    services = await Services.start(settings, prepare=False)
    try:
        await services.wallpapers.drop()
        await services.wallpapers.collection.database["seed_state"].drop()
        assert await seed_state(services, N) == "empty"
        real = services.wallpapers.upsert_many
        written: list[int] = []

        async def dies_on_the_second_batch(docs: list[dict[str, object]]) -> None:
            if written:
                raise RuntimeError("killed")  # not a store error: the seed stops here, as a crash would
            written.append(len(docs))
            await real(docs)

        services.wallpapers.upsert_many = dies_on_the_second_batch  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await seed(services, N, progress=False)
        assert await seed_state(services, N) == "partial"
        services.wallpapers.upsert_many = real  # type: ignore[method-assign]
        done = await seed(services, N, progress=False)
        assert done["resumed_from"] == BATCH + 1
        assert await seed_state(services, N) == "complete"
        assert await services.wallpapers.collection.count_documents({}) == N
        assert await seed_state(services, N + 1) == "partial"  # another size: not this seed
    finally:
        await services.close()


async def test_dev_finishes_a_partial_seed_and_skips_a_complete_one(
    base_settings: Settings, redis_client: redis.asyncio.Redis
) -> None:
    settings = own_database(base_settings, "cachelayer_test_seed_dev")
    services = await Services.start(settings, prepare=False)
    try:
        await services.wallpapers.drop()
        state = services.wallpapers.collection.database["seed_state"]
        await state.drop()
        await state.insert_one({"_id": "demo", "wallpapers": N, "seed": 0, "next": BATCH + 1, "complete": False})
    finally:
        await services.close()
    finished = await _seed(settings, N, dev=True)
    assert finished is not None
    assert finished["resumed_from"] == BATCH + 1
    assert await _seed(settings, N, dev=True) is None


async def test_seed_waits_for_a_mongo_that_is_still_starting(
    base_settings: Settings, tmp_path: Path, redis_client: redis.asyncio.Redis
) -> None:
    server = SecantusServer(port=free_port(), workdir=tmp_path / "late-secantus")
    starter = threading.Timer(1.0, server.start)  # the store comes up after the seed started
    starter.start()
    try:
        settings = with_sections(own_database(base_settings), mongo={"uri": server.uri})
        done = await _seed(settings, BATCH, dev=False)
        assert done is not None
        assert done["wallpapers"] == BATCH
    finally:
        starter.cancel()
        await asyncio.to_thread(starter.join, 60)
        server.close()
