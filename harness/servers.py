"""Private server processes on free loopback ports, and the probes that tell when they answer.

* :func:`free_port`, :func:`port_answers`, :func:`redis_ping`, :func:`wait_for` -- finding a port, asking whether
  something answers on it, polling until it does.
* :class:`ServerProcess` -- one server started and owned by this Python process: a fixed port kept across
  restarts, its files in ``workdir/<name>``, stopped or killed by its own PID (never by name), frozen with
  SIGSTOP (:meth:`~ServerProcess.suspend`, :meth:`~ServerProcess.pause`).
* :class:`RedisServer`, :class:`SecantusServer` (MongoDB wire protocol), :class:`MariaDBServer`.

A program that is not installed raises :class:`ServerUnavailable` (the tests turn that into a skip, or a failure
in CI: ``tests/conftest.py``). Every process started here is registered; :func:`stop_all` stops those still
running, and runs at exit so a crashed test or benchmark leaves nothing behind.
"""

from __future__ import annotations

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
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self

__all__ = [
    "LOCALHOST",
    "REPO_ROOT",
    "MariaDBServer",
    "RedisServer",
    "SecantusServer",
    "ServerProcess",
    "ServerUnavailable",
    "free_port",
    "port_answers",
    "python_env",
    "redis_ping",
    "secantusd_binary",
    "stop_all",
    "wait_for",
]

LOCALHOST: Final = "127.0.0.1"
#: The repository: the working directory (and PYTHONPATH) of the Python processes the harness starts, because
#: ``service``, ``benchmarks`` and ``harness`` are not installed, only ``cachelayer`` is.
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


class ServerUnavailable(RuntimeError):
    """The server's program is not installed here (or cannot run); the message says how to get it."""


# --------------------------------------------------------------------------- probes


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on host that is free right now (the OS picks it). Another socket can take it before the caller
    binds it (it did once in CI: a test server's port, taken in between, perhaps as an outgoing connection's local
    port): a server in this process should bind port 0 itself; this is for servers in other processes, which must
    be told their port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to host:port can be opened."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """A RESP PING over a raw socket: True on ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout seconds have passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def secantusd_binary() -> str | None:
    """Path of ``secantusd-py``: next to this Python (the venv), then on $PATH."""
    candidate = Path(sys.executable).parent / "secantusd-py"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("secantusd-py")


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with :data:`REPO_ROOT` first on PYTHONPATH, for a child ``python -m ...``."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **(extra or {})}


# --------------------------------------------------------------------------- what runs


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_live: set[_Stoppable] = set()
_live_lock = threading.Lock()


def register(process: _Stoppable) -> None:
    """Track a running process for :func:`stop_all` (harness-internal: ServerProcess and ProxyProcess call it)."""
    with _live_lock:
        _live.add(process)


def unregister(process: _Stoppable) -> None:
    with _live_lock:
        _live.discard(process)


@atexit.register
def stop_all() -> None:
    """Stop every process the harness started that still runs (benchmarks call it in their ``finally``)."""
    with _live_lock:
        running = list(_live)
    for process in running:
        with contextlib.suppress(Exception):
            process.stop()
        unregister(process)


# --------------------------------------------------------------------------- server processes


class ServerProcess:
    """A server process started and owned by this Python process (base class).

    Subclasses give the command line (:meth:`argv`) and a readiness check (:meth:`answers`). The port is chosen
    once and kept, so :meth:`start` after :meth:`stop` or :meth:`kill` brings the server back on the same address.
    Its files (log, data) go in ``workdir/<name>``, so servers may share one ``workdir``; without one, a temporary
    directory that :meth:`close` removes. Usable as a context manager.
    """

    name = "server"
    #: seconds :meth:`start` waits for :meth:`answers`
    start_timeout = 15.0
    #: seconds :meth:`stop` waits after SIGTERM before it kills
    stop_timeout = 10.0

    def __init__(self, workdir: Path | None = None, *, port: int | None = None) -> None:
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()
        root = Path(tempfile.mkdtemp(prefix=f"{self.name}-")) if workdir is None else Path(workdir)
        self._temp_root = root if workdir is None else None
        self.workdir = root / self.name
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
        argv = self.argv()
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        register(self)
        limit = self.start_timeout if timeout is None else timeout
        if not wait_for(lambda: self.answers() or not self.running, limit) or not self.running:
            self.kill()
            raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{self.log_tail()}")
        return self

    def signal(self, signum: int) -> None:
        """Send signum to the process by its PID (if it still runs)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def _reap(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        unregister(self)
        return True

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM by PID and wait (SIGKILL if it has not exited after timeout seconds)."""
        if self.proc is None:
            return
        self._cancel_resume()
        self.signal(signal.SIGCONT)  # a frozen process would never act on SIGTERM
        self.signal(signal.SIGTERM)
        if not self._reap(self.stop_timeout if timeout is None else timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would, and wait for it."""
        if self.proc is None:
            return
        self._cancel_resume()
        self.signal(signal.SIGKILL)
        self._reap(10.0)

    def restart(self, timeout: float | None = None) -> Self:
        self.stop()
        return self.start(timeout)

    # -- freezing (the process keeps its sockets but answers nothing)
    def suspend(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered, until :meth:`resume`."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`suspend` or :meth:`pause`."""
        self._cancel_resume()
        self.signal(signal.SIGCONT)

    def pause(self, seconds: float) -> None:
        """Freeze the server now and let it go on after ``seconds``, without blocking the caller (a timer thread
        sends SIGCONT), so it can be used from inside an async test."""
        self._cancel_resume()
        self.suspend()
        self._resume_timer = threading.Timer(seconds, self.signal, args=(signal.SIGCONT,))
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
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)

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


def _binary(name: str, how: str, fallback: str | None = None) -> str:
    found = shutil.which(name) or (fallback if fallback and os.access(fallback, os.X_OK) else None)
    if found is None:
        raise ServerUnavailable(f"{name} is not installed ({how})")
    return found


class RedisServer(ServerProcess):
    """A private ``redis-server``: no RDB, no AOF. For tests and benchmarks that stop, kill, restart or freeze
    Redis; the machine's Redis is never touched.

        with RedisServer() as server:
            client = redis.asyncio.Redis.from_url(server.url)
            server.stop()    # Redis is gone: the cache must fail open
            server.start()   # back on the same port, empty
    """

    name = "redis"

    def __init__(self, workdir: Path | None = None, *, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(workdir, port=port)
        self.extra_args = extra_args

    def argv(self) -> list[str]:
        binary = _binary("redis-server", "apt-get install redis-server")
        return [binary, "--daemonize", "no", "--bind", self.host, "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--logfile", "",
                *self.extra_args]  # fmt: skip

    def answers(self) -> bool:
        return redis_ping(self.host, self.port, timeout=0.5)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``; see :meth:`url_for` for another database."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


class SecantusServer(ServerProcess):
    """A private SecantusDB (``secantusd-py``, MongoDB wire protocol).

    Its data is kept in ``workdir/secantus/data`` (it survives :meth:`kill` and :meth:`start` as far as SecantusDB
    makes it durable); ``storage=":memory:"`` keeps nothing.
    """

    name = "secantus"
    start_timeout = 30.0

    def __init__(self, workdir: Path | None = None, *, port: int | None = None, storage: str | None = None) -> None:
        super().__init__(workdir, port=port)
        self.storage = storage if storage is not None else str(self.workdir / "data")

    def argv(self) -> list[str]:
        binary = secantusd_binary()
        if binary is None:
            raise ServerUnavailable("secantusd-py is not installed (pip install secantusdb; `make venv`)")
        return [binary, "--host", self.host, "--port", str(self.port), "--storage-path", self.storage,
                "--log-level", "WARNING"]  # fmt: skip

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"


class MariaDBServer(ServerProcess):
    """A private ``mariadbd`` with its own datadir (as ``scripts/devstack`` starts its private MariaDB): root logs
    in over TCP from 127.0.0.1 with an empty password. The first :meth:`start` initialises the datadir."""

    name = "mariadb"
    start_timeout = 60.0
    stop_timeout = 30.0  # InnoDB's clean shutdown

    def _user(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self, timeout: float | None = None) -> Self:
        datadir = self.workdir / "data"
        if not (datadir / "mysql").is_dir():
            install = _binary("mariadb-install-db", "apt-get install mariadb-server", "/usr/bin/mariadb-install-db")
            with self.logfile.open("ab") as log:
                subprocess.run(
                    [install, "--no-defaults", f"--datadir={datadir}", "--skip-test-db",
                     "--auth-root-authentication-method=normal", *self._user()],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120,
                )  # fmt: skip
        return super().start(timeout)

    def argv(self) -> list[str]:
        mariadbd = _binary("mariadbd", "apt-get install mariadb-server", "/usr/sbin/mariadbd")
        sock = Path("/tmp") / f"harness-mariadb-{os.getpid()}-{self.port}.sock"  # sun_path is 108 bytes at most
        return [mariadbd, "--no-defaults", f"--datadir={self.workdir / 'data'}", f"--port={self.port}",
                f"--bind-address={self.host}", f"--socket={sock}", f"--pid-file={self.workdir / 'mariadbd.pid'}",
                "--skip-log-bin", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
                "--character-set-server=utf8mb4", "--max-connections=300", *self._user()]  # fmt: skip

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                return sock.recv(5)[4:5] == b"\x0a"  # the handshake greeting, protocol 10
        except OSError:
            return False
