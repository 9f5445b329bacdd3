"""Budgets that hold under concurrency (issue 17, part 7): with MongoDB or MySQL blackholed, 40 concurrent requests
for one uncached answer over 4 worker processes all answer within the request budget + 0.2 s.

An audit measured p50 6.1 s and max 7.0 s against a 2.2 s budget: each worker waited on the lease, then loaded in
turn once the previous worker's load failed. Now the holder's failure wakes every waiter (cachelayer's
``share_failures``) and ``server.request_budget`` bounds any wait (``time_budget``). The service runs as it does in
production (``python -m service serve --processes 4``, a subprocess); the store (SecantusDB for MongoDB, or the
machine's MariaDB) sits behind a :class:`LatencyProxy` in this test's event loop, which swallows every byte once
blackholed. The answer asked for needs that store: a wallpaper's detail (MongoDB), the category list (MySQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from harness import REPO_ROOT, LatencyProxy, free_port
from service.config import Settings
from service.runtime import _children_of
from tests._doubles import eventually
from tests.service._served import Scrape
from tests.service._support import API, settings_env

pytestmark = pytest.mark.slow

WORKERS = 4
REQUESTS = 40
BUDGET = 3.5  # server.request_budget (the default)
SLACK = 0.2  # the allowance over the budget


# store -> (the path asked for, which needs that store; the 503's message)
CASES = {
    "mongo": (f"{API}/wallpaper/7.json", "mongo unavailable, try again later"),
    "mysql": (f"{API}/categories.json", "mysql unavailable, try again later"),
}


@pytest_asyncio.fixture(params=sorted(CASES))
async def blackholed(
    request: pytest.FixtureRequest, seeded: Settings
) -> AsyncIterator[tuple[str, Settings, LatencyProxy]]:
    """(the store, settings that reach it through a proxy, the proxy), in a namespace nothing is cached in yet."""
    store: str = request.param
    namespace = f"wpbudget{os.getpid()}x{time.monotonic_ns() % 100_000}"
    redis = seeded.redis.model_copy(update={"namespace": namespace})
    if store == "mongo":
        target = urlsplit(seeded.mongo.uri)
        proxy = await LatencyProxy(target.hostname or "127.0.0.1", target.port or 27017).start()
        # directConnection: the driver would otherwise follow the server's own address, around the proxy
        mongo = seeded.mongo.model_copy(update={"uri": proxy.url("mongodb", "/?directConnection=true")})
        settings = seeded.model_copy(update={"mongo": mongo, "redis": redis})
    else:
        proxy = await LatencyProxy(seeded.mysql.host, seeded.mysql.port).start()
        mysql = seeded.mysql.model_copy(update={"host": proxy.host, "port": proxy.port})
        settings = seeded.model_copy(update={"mysql": mysql, "redis": redis})
    try:
        yield store, settings, proxy
    finally:
        await proxy.aclose()


def _start(settings: Settings, port: int, admin_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLPAPER_")}
    env.update(settings_env(settings.model_dump()))
    env.update({"WALLPAPER_SERVER__HOST": "127.0.0.1", "WALLPAPER_LOG__SINK": "stderr", "PYTHONPATH": str(REPO_ROOT)})
    env["WALLPAPER_ADMIN__PORT"] = str(admin_port)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--processes", str(WORKERS)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for child in _children_of(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=5)


async def test_forty_requests_for_one_uncached_answer_hold_the_budget_when_its_store_is_blackholed(
    blackholed: tuple[str, Settings, LatencyProxy], tmp_path: Path
) -> None:
    store, settings, proxy = blackholed
    path, message = CASES[store]
    assert settings.server.request_budget == BUDGET
    port, admin_port = free_port(), free_port()
    proc = _start(settings, port, admin_port, tmp_path / "serve.log")
    client = AsyncHTTPClient(force_instance=True, max_clients=REQUESTS * 2)
    base = f"http://127.0.0.1:{port}"
    try:

        async def workers_up() -> bool:
            """Every worker serving: each publishes its figures once its servers run (a worker still starting
            would hold the requests routed to its socket: its migration waits behind the others' lock)."""
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                ready = await client.fetch(f"http://127.0.0.1:{admin_port}/readyz", request_timeout=2)
                scrape = await client.fetch(f"http://127.0.0.1:{admin_port}/metrics", request_timeout=2)
            except (HTTPClientError, OSError):
                return False
            serving = Scrape.parse(scrape.body.decode()).by_worker("process_start_time_seconds")
            return ready.code == 200 and len(serving) == WORKERS

        await eventually(workers_up, within=60, what=f"4 workers ready ({store} reachable through the proxy)")
        if store == "mongo":  # the highest id is cached: what is asked for next is the detail's own load
            await client.fetch(f"{base}{API}/wallpaper/1.json", request_timeout=10)
        proxy.blackhole = True

        async def one() -> tuple[int, float, str, dict[str, object]]:
            started = time.monotonic()
            try:
                response = await client.fetch(f"{base}{path}", request_timeout=15)
            except HTTPClientError as exc:
                if exc.response is None:
                    raise
                response = exc.response
            elapsed = time.monotonic() - started
            return response.code, elapsed, response.headers.get("X-Worker-Pid", ""), orjson.loads(response.body)

        try:
            answers = await asyncio.gather(*(one() for _ in range(REQUESTS)))
        except HTTPClientError as exc:
            pytest.fail(f"{exc!r}; the service's log:\n{(tmp_path / 'serve.log').read_text()[-6000:]}")
    finally:
        client.close()
        _stop(proc)
    durations = sorted(elapsed for _, elapsed, _, _ in answers)
    print(
        f"{store}: 40 requests: p50 {durations[len(durations) // 2]:.2f} s, max {durations[-1]:.2f} s"
    )  # with pytest -s
    assert {code for code, _, _, _ in answers} == {503}, answers
    assert all(body["code"] == 50301 for _, _, _, body in answers)
    # The store's name; or, for a request whose budget ended as the load it waited for failed, no name to give.
    assert {body["msg"] for _, _, _, body in answers} <= {message, "a dependency unavailable, try again later"}
    assert len({pid for _, _, pid, _ in answers}) >= 2, "the requests should have spread over the workers"
    assert durations[-1] <= BUDGET + SLACK, durations
