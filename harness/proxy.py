"""The harness's one TCP proxy: between a client and a real server on this machine, it adds latency, swallows
traffic, drops replies, refuses or drops connections, standing in for a slow or broken network (every test and
benchmark talks to servers on 127.0.0.1).

:class:`LatencyProxy` runs in the caller's event loop (tests); :class:`FaultProxy` is the same class spelled as the
chaos benchmark builds it, and :class:`harness.faults.ProxyProcess` runs one in a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from types import TracebackType
from typing import Final, Literal, Self

from harness.servers import LOCALHOST

__all__ = ["CHUNK", "MODES", "FaultProxy", "LatencyProxy", "Mode"]

Mode = Literal["pass", "refuse", "blackhole", "drop_replies"]
MODES: Final[tuple[Mode, ...]] = ("pass", "refuse", "blackhole", "drop_replies")
CHUNK: Final = 65536
_QUEUED_CHUNKS: Final = 1024  # a delayed direction stops reading past this: backpressure, not unbounded memory


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


class LatencyProxy:
    """An asyncio TCP proxy on ``host:port`` in front of ``target_host:target_port``.

    Point the client at ``proxy.port`` (or ``proxy.url(...)``) instead of the server's port, then:

    * ``proxy.latency = 0.05`` -- every chunk, in both directions, arrives 50 ms late (a delay, not a bandwidth
      cap: chunks in flight overlap, and order is kept). ``upstream_latency`` (client to server) and
      ``downstream_latency`` (server to client) set one direction.
    * ``await proxy.set_mode(mode)``, one of :data:`MODES`:

      - ``pass`` -- bytes go both ways (the default);
      - ``refuse`` -- the listening socket is closed (a connect gets "connection refused") and every open
        connection is aborted (RST), as when the server's host is gone;
      - ``blackhole`` -- connections are accepted, bytes both ways are read and thrown away, nothing is answered
        (a silent partition: the client sees only its own timeouts). ``proxy.blackhole = True`` is the same;
      - ``drop_replies`` -- client-to-server bytes are forwarded, server-to-client bytes are thrown away (the
        statement runs, its answer never arrives: what makes a retried write count twice).

      Going back to ``pass`` (``proxy.blackhole = False`` too) aborts every connection that lost bytes: its
      stream can no longer be parsed by either end, as a middlebox that dropped the flow state would.
    * ``await proxy.close_all()`` -- abort every open connection (the client sees a reset/EOF); new connections
      are accepted as usual. ``await proxy.aclose()`` also stops listening.

    At most ``max_connections`` are open at once; more are aborted as accepted (counted in ``rejected``).

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
        max_connections: int = 1024,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.upstream_latency = latency if upstream_latency is None else upstream_latency
        self.downstream_latency = latency if downstream_latency is None else downstream_latency
        self.host = host
        self.port = port
        self.max_connections = max_connections
        #: connections accepted and rejected so far; bytes forwarded each way, and bytes thrown away
        self.accepted = 0
        self.rejected = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.bytes_dropped = 0
        self._mode: Mode = "pass"
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()

    @property
    def latency(self) -> float:
        """The larger of the two one-way latencies; setting it sets both."""
        return max(self.upstream_latency, self.downstream_latency)

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.upstream_latency = self.downstream_latency = seconds

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def blackhole(self) -> bool:
        return self._mode == "blackhole"

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        if self._mode == "refuse":
            raise RuntimeError("the proxy refuses: only `await proxy.set_mode(...)` listens again")
        self._switch("blackhole" if on else "pass")

    @property
    def open_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._sessions)

    def url(self, scheme: str = "redis", path: str = "") -> str:
        """e.g. ``proxy.url("redis", "/15")`` -> ``redis://127.0.0.1:PORT/15``."""
        return f"{scheme}://{self.host}:{self.port}{path}"

    async def start(self) -> Self:
        await self._listen()
        return self

    async def set_mode(self, mode: Mode) -> None:
        """Switch to ``mode`` (see the class docstring); every mode but ``refuse`` listens."""
        self._switch(mode)
        if mode != "refuse" and self._server is None:
            await self._listen()

    async def close_all(self) -> None:
        """Abort every open connection, both the client side and the server side."""
        await self._abort(lambda session: True)

    async def aclose(self) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.close_all()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=5)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- internals

    async def _listen(self) -> None:
        # The port chosen on the first start is kept: going back from ``refuse`` listens on the same address.
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True, limit=CHUNK)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _switch(self, mode: Mode) -> None:
        """The synchronous part of a mode switch: everything but listening again."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self._mode = mode
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            self._abort_now(lambda session: True)
        elif mode == "pass":
            self._abort_now(lambda session: session.tainted)

    def _abort_now(self, which: Callable[[_Session], bool]) -> list[asyncio.Task[None]]:
        chosen = [session for session in self._sessions if which(session)]
        for session in chosen:
            session.abort()
            self._sessions.discard(session)
        return [session.task for session in chosen if session.task is not None]

    async def _abort(self, which: Callable[[_Session], bool]) -> None:
        await asyncio.gather(*self._abort_now(which), return_exceptions=True)

    def _drops(self, upstream: bool) -> bool:
        return self._mode == "blackhole" or (self._mode == "drop_replies" and not upstream)

    def _drop(self, session: _Session, chunk: bytes) -> None:
        session.tainted = True
        self.bytes_dropped += len(chunk)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._sessions) >= self.max_connections or self._mode == "refuse":
            self.rejected += 1
            writer.transport.abort()
            return
        self.accepted += 1
        session = _Session(writer)
        self._sessions.add(session)
        # The work runs in a task of its own, which abort() cancels: asyncio (3.11) logs an error when a connection
        # handler task itself ends cancelled.
        session.task = asyncio.create_task(self._run(session, reader))
        try:
            await asyncio.wait([session.task])
        finally:
            self._sessions.discard(session)
            session.abort()

    async def _run(self, session: _Session, client_reader: asyncio.StreamReader) -> None:
        try:
            if self._mode == "blackhole":
                session.tainted = True  # never connected upstream: useless once the network is back
                while chunk := await client_reader.read(CHUNK):
                    self._drop(session, chunk)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port, limit=CHUNK), 5.0
                )
            except (OSError, TimeoutError):
                return  # target down: the client sees its connection closed
            session.upstream = up_writer
            pumps = [
                asyncio.create_task(self._pump(session, client_reader, up_writer, upstream=True)),
                asyncio.create_task(self._pump(session, up_reader, session.client, upstream=False)),
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

    async def _pump(
        self, session: _Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Copy reader to writer, one direction.

        With latency on, a chunk waits in a queue until its arrival time + latency while reading goes on, so every
        chunk is late by the same amount instead of delays adding up; once anything was queued, later chunks queue
        behind it (order is kept). Without latency a chunk is written at once. A fault mode drops a chunk both when
        it is read and when it is due, as a network that fails while the chunk is in flight.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=_QUEUED_CHUNKS)
        late: asyncio.Task[None] | None = None

        async def write(chunk: bytes) -> None:
            if self._drops(upstream):
                self._drop(session, chunk)
                return
            writer.write(chunk)
            await writer.drain()
            if upstream:
                self.bytes_up += len(chunk)
            else:
                self.bytes_down += len(chunk)

        async def write_when_due() -> None:
            try:
                while True:
                    due, chunk = await queue.get()
                    if not chunk:
                        return
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    await write(chunk)
            except OSError:
                session.abort()  # else the reading side would go on filling a queue nobody empties
                raise

        try:
            while chunk := await reader.read(CHUNK):
                delay = self.upstream_latency if upstream else self.downstream_latency
                if self._drops(upstream) or (late is None and delay <= 0):
                    await write(chunk)
                    continue
                if late is None:
                    late = asyncio.create_task(write_when_due())
                await queue.put((loop.time() + delay, chunk))
            if late is not None:
                await queue.put((0.0, b""))  # EOF: written after everything queued
                await late
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            if late is not None:
                late.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await late


class FaultProxy(LatencyProxy):
    """:class:`LatencyProxy` as the chaos benchmark builds it: the target's port first, a loopback target only."""

    def __init__(
        self, target_port: int, *, target_host: str = LOCALHOST, port: int = 0, max_connections: int = 1024
    ) -> None:
        if not ipaddress.ip_address(target_host).is_loopback:
            raise ValueError(f"fault proxy works on loopback only, not {target_host!r}")
        super().__init__(target_host, target_port, port=port, max_connections=max_connections)
