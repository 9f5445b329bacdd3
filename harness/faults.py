"""A TCP fault proxy for the chaos benchmark (and its tests), in this process or in a child process.

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

:class:`ProxyProcess` runs one proxy in a child process (``python -m harness fault-proxy ...``, uvloop when
installed) so that proxying Redis traffic does not compete with the benchmark's own event loop; it is switched by
one-line commands on the child's stdin, each acknowledged on its stdout.

The stores behind the proxies are :mod:`harness.servers` processes; a :class:`ProxyProcess` is stopped by
:func:`harness.servers.stop_all` like them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from harness.servers import LOCALHOST, REPO_ROOT, free_port, python_env, register, unregister

__all__ = ["MODES", "FaultProxy", "Mode", "ProxyProcess", "main"]

Mode = Literal["pass", "refuse", "blackhole", "drop_replies"]
MODES: Final[tuple[Mode, ...]] = ("pass", "refuse", "blackhole", "drop_replies")
CHUNK: Final = 65536


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
        argv = [sys.executable, "-m", "harness", "fault-proxy", "--target-port", str(target_port)]
        argv += ["--port", str(self.port), "--max-connections", str(max_connections)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
            env=python_env(),
            text=True,
            start_new_session=True,
        )
        register(self)
        line = self._read_line(15.0)
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"proxy {name} did not start: {line!r}")

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
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
        unregister(self)


# -- command line (the child side of ProxyProcess) --------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness fault-proxy --target-port N [--port P] [--max-connections M]``: one proxy, commands on
    stdin (see :func:`_serve_commands`)."""
    parser = argparse.ArgumentParser(prog="python -m harness fault-proxy")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-connections", type=int, default=1024)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (quit, then SIGKILL by PID)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(_child_main(args.target_port, args.port, args.max_connections))
    return 0
