"""Fault injection for the chaos benchmark: a TCP fault proxy, and private store processes to kill or freeze.

:class:`FaultProxy` (asyncio) sits between the service and one store on 127.0.0.1 and is switched at run time:

* ``pass`` -- bytes go both ways (after ``latency`` seconds per chunk, each direction, order kept);
* ``refuse`` -- the listening socket is closed (a connect gets RST: "connection refused") and every open
  connection is aborted (RST), as when the server's host is gone;
* ``blackhole`` -- connections are accepted, bytes both ways are read and thrown away, nothing is answered (a
  silent partition: the client sees only its own timeouts);
* ``drop_replies`` -- client-to-server bytes are forwarded, server-to-client bytes are thrown away (the statement
  runs, its answer never arrives: what makes a retried write count twice).

Going back to ``pass`` aborts every connection that lost bytes: its stream can no longer be parsed by either end
(as a middlebox that dropped the flow state would). The proxy accepts at most ``max_connections`` at once.

:class:`ProxyProcess` runs one proxy in a child process (``python -m benchmarks._faults serve ...``, uvloop when
installed) so that proxying Redis traffic does not compete with the benchmark's own event loop; it is switched by
one-line commands on the child's stdin, each acknowledged on its stdout.

:class:`StoreProcess` and its subclasses start a private ``redis-server``, ``secantusd-py`` or ``mariadbd`` on a
free loopback port, and stop it by its PID (never by name); an ``atexit`` hook stops any left running.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "MODES",
    "FaultProxy",
    "MariaDBServer",
    "Mode",
    "ProxyProcess",
    "RedisServer",
    "SecantusServer",
    "StoreProcess",
    "free_port",
    "stop_all",
]

LOCALHOST: Final = "127.0.0.1"
Mode = Literal["pass", "refuse", "blackhole", "drop_replies"]
MODES: Final[tuple[Mode, ...]] = ("pass", "refuse", "blackhole", "drop_replies")
CHUNK: Final = 65536

#: Stop functions of every process started here and not yet stopped (see :func:`stop_all`).
_live: list[Callable[[], None]] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"fault proxy works on loopback only, not {host!r}")


# -- the proxy --------------------------------------------------------------------------------------------------


class _Session:
    """One client connection and its upstream connection; ``tainted`` once it lost bytes."""

    __slots__ = ("client", "tainted", "task", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tainted = False
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        if self.task is not None:
            self.task.cancel()


class FaultProxy:
    """An asyncio TCP proxy on ``127.0.0.1:port`` in front of ``target``; see the module docstring."""

    def __init__(
        self, target_port: int, *, target_host: str = LOCALHOST, port: int = 0, max_connections: int = 1024
    ) -> None:
        _require_loopback(target_host)
        self.target = (target_host, target_port)
        self.port = port
        self.max_connections = max_connections
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.accepted = 0
        self.rejected = 0
        self.bytes_dropped = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()

    @property
    def open_connections(self) -> int:
        return len(self._sessions)

    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOCALHOST, self.port, reuse_address=True, limit=CHUNK)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        previous, self.mode = self.mode, mode
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            self._abort(lambda s: True)
        elif mode == "pass":
            self._abort(lambda s: s.tainted)
            if self._server is None:
                await self._listen()
        elif previous == "refuse" and self._server is None:
            await self._listen()

    def _abort(self, which: Callable[[_Session], bool]) -> None:
        for session in [s for s in self._sessions if which(s)]:
            session.abort()
            self._sessions.discard(session)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = [s.task for s in self._sessions if s.task is not None]
        self._abort(lambda s: True)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._sessions) >= self.max_connections or self.mode == "refuse":
            self.rejected += 1
            writer.transport.abort()
            return
        self.accepted += 1
        session = _Session(writer)
        self._sessions.add(session)
        # The work runs in a task of its own that abort() cancels: asyncio logs an error when a connection
        # handler task itself ends cancelled.
        session.task = asyncio.create_task(self._run(session, reader))
        try:
            await asyncio.wait([session.task])
        finally:
            self._sessions.discard(session)
            session.abort()

    async def _run(self, session: _Session, client_reader: asyncio.StreamReader) -> None:
        try:
            if self.mode == "blackhole":
                session.tainted = True
                while chunk := await client_reader.read(CHUNK):
                    self.bytes_dropped += len(chunk)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target, limit=CHUNK), 5.0)
            except (OSError, TimeoutError):
                return  # target down: the client sees its connection closed
            session.upstream = up_writer
            pumps = [
                asyncio.create_task(self._pump(session, client_reader, up_writer, upstream=True)),
                asyncio.create_task(self._pump(session, up_reader, session.client, upstream=False)),
            ]
            try:
                await asyncio.gather(*pumps)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass

    def _drops(self, upstream: bool) -> bool:
        return self.mode == "blackhole" or (self.mode == "drop_replies" and not upstream)

    async def _pump(
        self, session: _Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Copy reader to writer. A chunk read with latency on waits in a queue until its time, so reading goes on
        meanwhile and every chunk is late by the same amount; without latency it is written at once."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=1024)
        delayed: asyncio.Task[None] | None = None

        async def write_later() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if self._drops(upstream):
                    session.tainted = True
                    self.bytes_dropped += len(chunk)
                    continue
                writer.write(chunk)
                await writer.drain()

        try:
            while chunk := await reader.read(CHUNK):
                if self._drops(upstream):
                    session.tainted = True
                    self.bytes_dropped += len(chunk)
                    continue
                if self.latency > 0 or (delayed is not None and not delayed.done()):
                    if delayed is None or delayed.done():
                        delayed = asyncio.create_task(write_later())
                    await queue.put((loop.time() + self.latency, chunk))
                    continue
                writer.write(chunk)
                await writer.drain()
            if delayed is not None and not delayed.done():
                await queue.put((0.0, b""))
                await delayed
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            if delayed is not None:
                delayed.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await delayed


# -- the proxy in its own process -------------------------------------------------------------------------------


async def _serve_commands(proxy: FaultProxy) -> None:
    """Read commands from stdin (``mode M``, ``latency S``, ``stats``, ``quit``), answer each with one line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(f"ready {proxy.port}", flush=True)
    while line := (await reader.readline()).decode().strip():
        verb, _, arg = line.partition(" ")
        try:
            if verb == "mode":
                await proxy.set_mode(arg)  # type: ignore[arg-type]  # checked by set_mode
            elif verb == "latency":
                proxy.latency = max(0.0, min(float(arg), 10.0))
            elif verb == "quit":
                break
            elif verb != "stats":
                raise ValueError(f"unknown command {verb!r}")
            print(
                f"ok {proxy.mode} {proxy.latency} open={proxy.open_connections} accepted={proxy.accepted} "
                f"dropped_bytes={proxy.bytes_dropped}",
                flush=True,
            )
        except ValueError as exc:
            print(f"error {exc}", flush=True)
    await proxy.aclose()


async def _child_main(target_port: int, port: int, max_connections: int) -> None:
    proxy = await FaultProxy(target_port, port=port, max_connections=max_connections).start()
    await _serve_commands(proxy)


class ProxyProcess:
    """A :class:`FaultProxy` in a child process, switched through its stdin; stopped by PID."""

    def __init__(self, name: str, target_port: int, *, log: Path, max_connections: int = 1024) -> None:
        self.name = name
        self.target_port = target_port
        self.port = free_port()
        self.mode: Mode = "pass"
        self.latency = 0.0
        self._log = log.open("ab")
        argv = [sys.executable, "-m", "benchmarks._faults", "serve", "--target-port", str(target_port)]
        argv += ["--port", str(self.port), "--max-connections", str(max_connections)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=Path(__file__).resolve().parent.parent,
            text=True,
            start_new_session=True,
        )
        _live.append(self.stop)
        line = self._read_line(15.0)
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"proxy {name} did not start: {line!r}")

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return ""
        return self.proc.stdout.readline().strip()

    def command(self, line: str, timeout: float = 5.0) -> str:
        if self.proc.poll() is not None or self.proc.stdin is None:
            raise RuntimeError(f"proxy {self.name} is not running")
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self._read_line(timeout)
        if not answer.startswith("ok"):
            raise RuntimeError(f"proxy {self.name}: {line!r} -> {answer!r}")
        return answer

    def set_mode(self, mode: Mode) -> None:
        self.command(f"mode {mode}")
        self.mode = mode

    def set_latency(self, seconds: float) -> None:
        self.command(f"latency {seconds}")
        self.latency = seconds

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


# -- private store processes ------------------------------------------------------------------------------------


@atexit.register
def stop_all() -> None:
    """Stop every process this module started and that still runs (also called by the benchmark's finally)."""
    while _live:
        with contextlib.suppress(Exception):
            _live.pop()()


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def _port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOCALHOST, port), timeout=0.5):
        return True
    return False


class StoreProcess:
    """One server process on a fixed loopback port (kept across restarts), in its own session, stopped by PID."""

    name = "store"
    start_timeout = 30.0

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        _live.append(self.stop)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        return _port_answers(self.port)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        if not _wait(lambda: self.answers() or not self.running, self.start_timeout) or not self.running:
            self.kill()
            tail = self.logfile.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{tail}")

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would, and reap it."""
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)  # a frozen process would never act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


class RedisServer(StoreProcess):
    name = "redis"
    start_timeout = 10.0

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server") or "redis-server"
        return [binary, "--daemonize", "no", "--bind", LOCALHOST, "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--logfile", ""]  # fmt: skip

    def answers(self) -> bool:
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class SecantusServer(StoreProcess):
    """SecantusDB (MongoDB wire protocol) with its storage in the work directory: data survives a SIGKILL as far
    as SecantusDB itself makes it durable."""

    name = "secantus"

    def argv(self) -> list[str]:
        candidate = Path(sys.executable).parent / "secantusd-py"
        binary = str(candidate) if os.access(candidate, os.X_OK) else (shutil.which("secantusd-py") or "")
        if not binary:
            raise RuntimeError("secantusd-py is not installed (`make venv`)")
        return [binary, "--host", LOCALHOST, "--port", str(self.port), "--storage-path", str(self.workdir / "data"),
                "--log-level", "WARNING"]  # fmt: skip


class MariaDBServer(StoreProcess):
    """A private ``mariadbd`` with its own datadir (as ``scripts/devstack`` starts its private MariaDB): root
    logs in over TCP from 127.0.0.1 with an empty password."""

    name = "mariadb"
    start_timeout = 60.0

    def _user(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self) -> None:
        datadir = self.workdir / "data"
        if not (datadir / "mysql").is_dir():
            install = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
            with self.logfile.open("ab") as log:
                subprocess.run(
                    [install, "--no-defaults", f"--datadir={datadir}", "--skip-test-db",
                     "--auth-root-authentication-method=normal", *self._user()],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120,
                )  # fmt: skip
        super().start()

    def argv(self) -> list[str]:
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        sock = Path("/tmp") / f"chaos-mariadb-{os.getpid()}-{self.port}.sock"  # sun_path is 108 bytes at most
        return [mariadbd, "--no-defaults", f"--datadir={self.workdir / 'data'}", f"--port={self.port}",
                f"--bind-address={LOCALHOST}", f"--socket={sock}", f"--pid-file={self.workdir / 'mariadbd.pid'}",
                "--skip-log-bin", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
                "--character-set-server=utf8mb4", "--max-connections=300", *self._user()]  # fmt: skip

    def answers(self) -> bool:
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=0.5) as sock:
                return sock.recv(5)[4:5] == b"\x0a"  # the handshake greeting, protocol 10
        except OSError:
            return False


# -- command line (the child side of ProxyProcess) --------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._faults")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one fault proxy, commands on stdin")
    serve.add_argument("--target-port", type=int, required=True)
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--max-connections", type=int, default=1024)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (quit, then SIGKILL by PID)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(_child_main(args.target_port, args.port, args.max_connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
