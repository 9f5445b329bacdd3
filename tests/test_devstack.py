"""scripts/devstack on free ports (never the machine's services), and the test-support fixtures."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio

from harness import REPO_ROOT, LatencyProxy, RedisServer, free_port, port_answers, redis_ping, wait_for
from harness.services import MySQLSettings, in_ci, require_service, skip_or_fail

DEVSTACK = REPO_ROOT / "scripts" / "devstack"
MACHINE_REDIS = ("127.0.0.1", 6379)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (nothing reaps orphans on some machines)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class Devstack:
    """Runs scripts/devstack with its own var/ dir and ports."""

    def __init__(self, var: Path, **ports: int) -> None:
        self.var = var
        self.env = {**os.environ, "DEVSTACK_VAR": str(var), "DEVSTACK_TIMEOUT": "30"}
        for name, port in ports.items():
            self.env[f"DEVSTACK_{name.upper()}_PORT"] = str(port)

    def __call__(self, *args: str, check: bool = True) -> str:
        result = subprocess.run([sys.executable, str(DEVSTACK), *args], env=self.env, capture_output=True,
                                text=True, timeout=100, stdin=subprocess.DEVNULL)
        output = result.stdout + result.stderr
        if check:
            assert result.returncode == 0, f"devstack {' '.join(args)} exited {result.returncode}:\n{output}"
        return output

    def pid(self, stem: str) -> int:
        return int((self.var / "run" / f"{stem}.pid").read_text().split()[0])

    def kill_leftovers(self) -> None:
        """Last-resort cleanup: SIGKILL whatever our PID files name, if it still runs."""
        for pidfile in (self.var / "run").glob("*.pid"):
            try:
                pid = int(pidfile.read_text().split()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if any(word in cmdline for word in (b"redis-server", b"secantusd", b"mariadbd")):
                os.kill(pid, 9)


def line_for(output: str, service: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(f"{service} ")]
    assert lines, f"no line for {service} in:\n{output}"
    return lines[-1]


# The private MariaDB costs ~1 s and ~120 MB of temp disk: worth it to exercise that path too.
HAVE_PRIVATE_MARIADB = bool(shutil.which("mariadb-install-db")) and (
    bool(shutil.which("mariadbd")) or os.access("/usr/sbin/mariadbd", os.X_OK)
)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Devstack, dict[str, int]]]:
    if in_ci() and not HAVE_PRIVATE_MARIADB:
        pytest.fail("CI=true: mariadb-install-db and mariadbd are needed for the private MariaDB (make system-deps)")
    ports = {"redis": free_port(), "mongo": free_port()}
    if HAVE_PRIVATE_MARIADB:
        ports["mysql"] = free_port()
    devstack = Devstack(tmp_path / "var", **ports)
    try:
        yield devstack, ports
    finally:
        devstack("down", *ports, check=False)
        devstack.kill_leftovers()


@pytest.mark.slow
def test_up_status_down_on_free_ports(stack: tuple[Devstack, dict[str, int]]) -> None:
    devstack, ports = stack
    services = list(ports)
    stems = {"redis": "redis", "mongo": "secantus", "mysql": "mariadb"}
    machine_redis_was_up = port_answers(*MACHINE_REDIS)

    before = devstack("status", *services)
    for service in services:
        assert "NOT answering" in line_for(before, service)

    out = devstack("up", *services)
    pids = {}
    for service in services:
        assert any(line.startswith(f"{service} ") and "starting it" in line for line in out.splitlines()), out
        pids[service] = devstack.pid(stems[service])
        assert pid_alive(pids[service]), f"{service} pid {pids[service]} is not running"
        assert port_answers("127.0.0.1", ports[service])
    assert redis_ping("127.0.0.1", ports["redis"])
    assert (devstack.var / "log" / "secantus.log").exists()
    assert (devstack.var / "secantus").is_dir()

    status = devstack("status", *services)
    for service in services:
        line = line_for(status, service)
        assert " answering" in line
        assert "NOT" not in line
        assert f"started by devstack (pid {pids[service]})" in line

    again = devstack("up", *services)
    for service in services:
        assert "already answering, nothing to do" in line_for(again, service)
        assert devstack.pid(stems[service]) == pids[service]

    down = devstack("down", *services)
    for service in services:
        assert f"stopped pid {pids[service]}" in line_for(down, service)
        assert not pid_alive(pids[service])
        assert not (devstack.var / "run" / f"{stems[service]}.pid").exists()
    assert wait_for(lambda: not any(port_answers("127.0.0.1", port) for port in ports.values()), 10)

    after = devstack("status", *services)
    for service in services:
        assert "NOT answering" in line_for(after, service)
        assert "not started by devstack" in line_for(after, service)

    # The machine's own Redis is untouched by all of this.
    if machine_redis_was_up:
        assert redis_ping(*MACHINE_REDIS)


def test_up_and_down_leave_a_service_devstack_did_not_start(private_redis: RedisServer, tmp_path: Path) -> None:
    devstack = Devstack(tmp_path / "var", redis=private_redis.port)
    assert "already answering, nothing to do" in devstack("up", "redis")
    assert "not started by devstack" in line_for(devstack("status", "redis"), "redis")
    assert "left alone" in devstack("down", "redis")
    assert private_redis.running
    assert redis_ping(private_redis.host, private_redis.port)


def test_down_ignores_a_pid_file_naming_another_process(tmp_path: Path) -> None:
    devstack = Devstack(tmp_path / "var", redis=free_port())
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (devstack.var / "run").mkdir(parents=True)
        (devstack.var / "run" / "redis.pid").write_text(f"{sleeper.pid}\n")
        assert "left alone" in devstack("down", "redis")
        assert sleeper.poll() is None, "devstack killed a process it did not start"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_machine_redis_answers() -> None:
    require_service("redis", *MACHINE_REDIS)
    assert redis_ping(*MACHINE_REDIS)


# --------------------------------------------------------------------------- the fixtures themselves


def test_require_service_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_service("nothing", "127.0.0.1", port)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_service("nothing", "127.0.0.1", port)


async def test_redis_client_uses_db_15_and_starts_empty(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    expected = 15 if redis_url == "redis://127.0.0.1:6379/15" else int(redis_url.rsplit("/", 1)[1])
    assert redis_client.connection_pool.connection_kwargs["db"] == expected  # 15, unless the env names another
    assert await redis_client.dbsize() == 0
    await redis_client.set("cachelayer:test:fixture", b"1")
    assert await redis_client.get("cachelayer:test:fixture") == b"1"


@pytest.mark.slow
async def test_private_redis_stop_start_kill_pause(private_redis: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(private_redis.url, socket_timeout=2, retry_on_timeout=False)
    try:
        await client.set("k", "v")
        port = private_redis.port

        private_redis.stop()
        assert not private_redis.running
        assert not redis_ping("127.0.0.1", port)
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await client.ping()

        private_redis.start()
        assert private_redis.port == port
        assert await client.ping()
        assert await client.get("k") is None  # no persistence

        private_redis.kill()
        assert not private_redis.running
        private_redis.start()
        await client.connection_pool.disconnect()  # the pooled connection died with the server
        assert await client.ping()

        private_redis.pause(0.6)
        began = time.monotonic()
        assert await client.ping()  # answered only once the server is resumed
        assert time.monotonic() - began >= 0.4
    finally:
        await client.aclose()


async def _ping_raw(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


async def test_latency_proxy_latency_blackhole_close_all(private_redis: RedisServer) -> None:
    async with LatencyProxy(private_redis.host, private_redis.port) as proxy:
        began = time.monotonic()
        assert await _ping_raw(proxy.port) == b"+PONG\r\n"
        fast = time.monotonic() - began

        proxy.latency = 0.15  # each way: a round trip takes >= 0.3 s
        began = time.monotonic()
        assert await _ping_raw(proxy.port) == b"+PONG\r\n"
        slow = time.monotonic() - began
        assert slow >= 0.29, slow
        assert slow > fast

        proxy.latency = 0
        proxy.blackhole = True
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_ping_raw(proxy.port), timeout=0.5)

        proxy.blackhole = False
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        assert await reader.readline() == b"+PONG\r\n"
        assert proxy.open_connections >= 1
        await proxy.close_all()
        assert await reader.read() == b""  # the proxy dropped the connection
        writer.close()
        assert proxy.open_connections == 0
        assert await _ping_raw(proxy.port) == b"+PONG\r\n"  # new connections still work


def test_mongo_uri_is_a_working_secantusdb(mongo_uri: str, mongo_db_name: str) -> None:
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10000)
    try:
        collection = client[mongo_db_name]["fixture_check"]
        collection.insert_one({"_id": "x", "value": 1})
        found = collection.find_one({"_id": "x"})
        assert found is not None
        assert found["value"] == 1
        collection.drop()
    finally:
        client.close()


def test_mysql_settings_reach_the_test_database(mysql_settings: MySQLSettings) -> None:
    import pymysql  # type: ignore[import-untyped]

    conn = pymysql.connect(host=mysql_settings.host, port=mysql_settings.port, user=mysql_settings.user,
                           password=mysql_settings.password, database=mysql_settings.database)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT DATABASE()")
            assert cursor.fetchone() == ("cachelayer_test",)
    finally:
        conn.close()


def _bindable(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_base_port() -> int:
    """Six consecutive free ports whose cluster-bus ports (+10000) are free too, below the kernel's ephemeral range
    (32768 and up here): a port the kernel hands out for outgoing connections can be taken between this check and
    redis-server's bind, which happened on a loaded machine."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(15_000, 22_700)
        ports = range(base, base + 6)
        if base + 10005 < 65536 and all(_bindable(p) and _bindable(p + 10000) for p in ports):
            return base
    skip_or_fail("no six consecutive free ports")  # fails in CI (CI=true), skips elsewhere


@pytest.mark.slow
def test_cluster_up_status_down_on_free_ports(tmp_path: Path) -> None:
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        skip_or_fail("redis-server / redis-cli not installed (make test installs them)")
    base = _cluster_base_port()
    devstack = Devstack(tmp_path / "var", cluster=base)
    ports = list(range(base, base + 6))
    try:
        before = devstack("status", "cluster")
        assert sum("NOT answering" in line for line in before.splitlines() if line.startswith("cluster ")) == 6

        out = devstack("up", "cluster")
        assert "created: 3 masters + 3 replicas" in out, out
        pids = {port: int((devstack.var / "run" / f"cluster-{port}.pid").read_text().split()[0]) for port in ports}
        assert all(pid_alive(pid) for pid in pids.values())

        status = devstack("status", "cluster")
        for port in ports:
            line = next(line for line in status.splitlines() if f"127.0.0.1:{port} " in line)
            assert "cluster_state:ok" in line, status
            assert f"started by devstack (pid {pids[port]})" in line, status

        again = devstack("up", "cluster")  # already a cluster: nothing started, nothing re-created
        assert "created" not in again, again
        assert again.count("already answering") == 6, again

        down = devstack("down", "cluster")
        for pid in pids.values():
            assert f"stopped pid {pid}" in down
            assert not pid_alive(pid)
        assert wait_for(lambda: not any(port_answers("127.0.0.1", port) for port in ports), 10)
    finally:
        devstack("down", "cluster", check=False)
        devstack.kill_leftovers()
