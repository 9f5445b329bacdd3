"""A latency proxy: an asyncio TCP proxy inside the test's own event loop that adds latency, swallows traffic or
drops connections, standing in for a slow or broken network (every test talks to servers on 127.0.0.1).

The chaos benchmark's proxy, switched between fault modes from another process, is :mod:`harness.faults`.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from harness.servers import LOCALHOST

__all__ = ["LatencyProxy"]


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
