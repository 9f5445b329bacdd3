"""Test support: finding services, starting private servers, and a latency proxy.

What lives here (fixtures that use these are in ``tests/conftest.py``):

* :func:`in_ci`, :func:`port_answers`, :func:`require_service` -- a test that needs a service
  calls ``require_service``: when the service does not answer, the test is *skipped* on a
  developer's machine but *fails* in CI (``CI=true``), so a CI run can never go green by
  silently skipping the tests it exists to run.
* :func:`free_port` -- a TCP port on 127.0.0.1 that nothing listens on right now.
* :class:`RedisServer` -- a private ``redis-server`` on a free port (no persistence), which a
  test may stop, kill, restart on the same port, or freeze with SIGSTOP (fail-open tests).
* :class:`SecantusServer` -- a private SecantusDB (MongoDB wire protocol) on a free port.
* :class:`LatencyProxy` -- an asyncio TCP proxy that adds latency, swallows traffic or drops
  connections, standing in for a slow or broken network.

Every process started here is stopped by its own PID (never by name), and an ``atexit`` hook
stops any that a crashed test left behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import pytest

LOCALHOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- finding services


def in_ci() -> bool:
    """True when running in CI (the ``CI`` environment variable is ``true`` or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to host:port can be opened."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def skip_or_fail(reason: str) -> NoReturn:
    """``pytest.fail`` in CI, ``pytest.skip`` elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service fails the run instead of skipping)")
    pytest.skip(reason)


def require_service(name: str, host: str, port: int) -> None:
    """Fail (in CI) or skip (elsewhere) the calling test unless host:port accepts connections.

    Call it from a test or fixture before using a service: ``require_service("redis",
    "127.0.0.1", 6379)``. ``make up`` / ``scripts/devstack up`` starts the usual services.
    """
    if not port_answers(host, port):
        skip_or_fail(f"{name} is not answering on {host}:{port} (start it with `make up`)")


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on host that is free right now (the OS picks it; another process could take
    it before the caller binds it, which in practice does not happen on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout seconds have passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def redis_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """A RESP PING over a raw socket: True on ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def secantusd_binary() -> str | None:
    """Path of ``secantusd-py``: next to this Python (the venv), then on $PATH."""
    candidate = Path(sys.executable).parent / "secantusd-py"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("secantusd-py")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MySQLSettings:
    """Connection settings for the test MariaDB."""

    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def dsn(self) -> str:
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def aiomysql_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiomysql.connect`` / ``aiomysql.create_pool``."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "db": self.database, "autocommit": True}


# --------------------------------------------------------------------------- private servers

_live_processes: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live_processes):
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=5)


class ServerProcess:
    """A server process started and owned by the test session (base class).

    Subclasses give the command line (:meth:`argv`) and a readiness check (:meth:`answers`).
    The port is chosen once and kept, so :meth:`start` after :meth:`stop` or :meth:`kill`
    brings the server back on the same address. Usable as a context manager.
    """

    name = "server"
    #: seconds :meth:`start` waits for :meth:`answers`
    start_timeout = 15.0

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._resume_timer: threading.Timer | None = None

    # -- to override
    def argv(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        return port_answers(self.host, self.port, timeout=0.5)

    # -- lifecycle
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """The process exists (it may be frozen by :meth:`suspend`)."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Start the server (again) on its port and wait until it answers."""
        if self.running:
            raise RuntimeError(f"{self.name} on port {self.port} is already running (pid {self.pid})")
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _live_processes.add(self.proc)
        limit = self.start_timeout if timeout is None else timeout
        if not wait_for(lambda: self.answers() or not self.running, limit) or not self.running:
            self.kill()
            raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{self.log_tail()}")
        return self

    def _signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def _reap(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        _live_processes.discard(self.proc)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID and wait (SIGKILL if it has not exited after timeout seconds)."""
        if self.proc is None:
            return
        self._cancel_resume()
        self._signal(signal.SIGCONT)  # a frozen process would never act on SIGTERM
        self._signal(signal.SIGTERM)
        if not self._reap(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would, and wait for it."""
        if self.proc is None:
            return
        self._cancel_resume()
        self._signal(signal.SIGKILL)
        self._reap(10.0)

    def restart(self, timeout: float | None = None) -> Self:
        self.stop()
        return self.start(timeout)

    # -- freezing (the process keeps its sockets but answers nothing)
    def suspend(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered, until :meth:`resume`."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`suspend` or :meth:`pause`."""
        self._cancel_resume()
        self._signal(signal.SIGCONT)

    def pause(self, seconds: float) -> None:
        """Freeze the server now and let it go on after ``seconds``, without blocking the caller
        (a timer thread sends SIGCONT), so it can be used from inside an async test."""
        self._cancel_resume()
        self.suspend()
        self._resume_timer = threading.Timer(seconds, self._signal, args=(signal.SIGCONT,))
        self._resume_timer.daemon = True
        self._resume_timer.start()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """``with server.suspended(): ...`` -- frozen inside the block, resumed after it."""
        self.suspend()
        try:
            yield
        finally:
            self.resume()

    def _cancel_resume(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None

    # -- cleanup
    def close(self) -> None:
        """Stop the server and remove its temporary directory (if this object made it)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid} running={self.running}>"


class RedisServer(ServerProcess):
    """A private ``redis-server`` on 127.0.0.1 and a free port: no RDB, no AOF, dir in a temp
    directory. For tests that stop, kill, restart or freeze Redis (fail-open behaviour); the
    machine's Redis is never touched.

        with RedisServer() as server:
            client = redis.asyncio.Redis.from_url(server.url)
            server.stop()    # Redis is gone: the cache must fail open
            server.start()   # back on the same port, empty
    """

    name = "redis"

    def __init__(self, port: int | None = None, workdir: Path | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(port, workdir)
        self.extra_args = extra_args

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            skip_or_fail("redis-server is not installed (apt-get install redis-server)")
        return [binary, "--daemonize", "no", "--bind", self.host, "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--logfile", "",
                *self.extra_args]

    def answers(self) -> bool:
        return redis_ping(self.host, self.port, timeout=0.5)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``; see :meth:`url_for` for another database."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


class SecantusServer(ServerProcess):
    """A private SecantusDB (``secantusd-py``, MongoDB wire protocol) on a free port.

    ``storage=":memory:"`` (the default) keeps nothing; pass a directory to keep data across
    :meth:`stop`/:meth:`start`.
    """

    name = "secantus"
    start_timeout = 30.0

    def __init__(self, port: int | None = None, workdir: Path | None = None,
                 storage: str = ":memory:") -> None:
        super().__init__(port, workdir)
        self.storage = storage

    def argv(self) -> list[str]:
        binary = secantusd_binary()
        if binary is None:
            skip_or_fail("secantusd-py is not installed (pip install secantusdb; `make venv`)")
        return [binary, "--host", self.host, "--port", str(self.port), "--storage-path", self.storage,
                "--log-level", "WARNING"]

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"


# --------------------------------------------------------------------------- latency proxy


class LatencyProxy:
    """An asyncio TCP proxy inside the test process, between a client and a real server.

    It stands in for a slow or broken network, because a real one cannot be had here: every
    test talks to servers on 127.0.0.1. Point the client at ``proxy.port`` instead of the
    server's port, then:

    * ``proxy.latency = 0.05`` -- every chunk, in both directions, arrives 50 ms late (a delay,
      not a bandwidth cap: chunks in flight overlap, and order is kept). ``upstream_latency``
      (client to server) and ``downstream_latency`` (server to client) set one direction.
    * ``proxy.blackhole = True`` -- connections are still accepted, but nothing is forwarded or
      answered: bytes from either side are read and thrown away (a silent network partition;
      the client sees a timeout, not an error). Connections accepted while blackholed stay dead
      even after ``blackhole`` is set back to False.
    * ``await proxy.close_all()`` -- drop every open connection (the client sees a reset/EOF);
      new connections are accepted as usual.

    Usage, inside an async test::

        async with LatencyProxy(server.host, server.port, latency=0.02) as proxy:
            client = redis.asyncio.Redis(host=proxy.host, port=proxy.port)
            ...
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        latency: float = 0.0,
        upstream_latency: float | None = None,
        downstream_latency: float | None = None,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.upstream_latency = latency if upstream_latency is None else upstream_latency
        self.downstream_latency = latency if downstream_latency is None else downstream_latency
        self.blackhole = False
        self.host = host
        self.port = port
        #: connections accepted so far, and bytes forwarded each way
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def latency(self) -> float:
        """The larger of the two one-way latencies; setting it sets both."""
        return max(self.upstream_latency, self.downstream_latency)

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.upstream_latency = self.downstream_latency = seconds

    @property
    def open_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._tasks)

    def url(self, scheme: str = "redis", path: str = "") -> str:
        """e.g. ``proxy.url("redis", "/15")`` -> ``redis://127.0.0.1:PORT/15``."""
        return f"{scheme}://{self.host}:{self.port}{path}"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close_all(self) -> None:
        """Abort every open connection, both the client side and the server side."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        await self.close_all()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- internals
    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # The work runs in a task of its own, which close_all() cancels: asyncio (3.11) logs an
        # error when a connection handler task itself ends cancelled.
        session = asyncio.create_task(self._session(client_reader, client_writer))
        self._tasks.add(session)
        try:
            await asyncio.wait([session])
        finally:
            self._tasks.discard(session)
            if not session.done():
                session.cancel()

    async def _session(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        self.accepted += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            if self.blackhole:
                while await client_reader.read(65536):
                    pass
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return  # target down: the client sees its connection closed
            self._writers.add(upstream_writer)
            pumps = [
                asyncio.create_task(self._pump(client_reader, upstream_writer, upstream=True)),
                asyncio.create_task(self._pump(upstream_reader, client_writer, upstream=False)),
            ]
            try:
                # Both directions end on EOF (half-close is passed on); an error in one ends both.
                await asyncio.gather(*pumps)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        """Copy reader to writer, each chunk held back until its arrival time + latency.

        A reader task queues (deadline, chunk) so reading goes on while earlier chunks wait:
        latency delays every chunk by the same amount instead of adding up.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read_side() -> None:
            try:
                while chunk := await reader.read(65536):
                    delay = self.upstream_latency if upstream else self.downstream_latency
                    await queue.put((loop.time() + delay, chunk))
            finally:
                await queue.put((0.0, b""))  # EOF marker

        reading = asyncio.create_task(read_side())
        try:
            while True:
                deadline, chunk = await queue.get()
                if not chunk:
                    break
                wait = deadline - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.blackhole:
                    continue  # swallowed
                writer.write(chunk)
                await writer.drain()
                if upstream:
                    self.bytes_up += len(chunk)
                else:
                    self.bytes_down += len(chunk)
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
                await reading
