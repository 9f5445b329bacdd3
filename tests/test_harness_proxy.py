"""The harness's one proxy (harness/proxy.py) against a tiny greeting echo server: latency per direction, the
fault modes and their setters, dropping connections, and the same proxy in a child process answering commands.

Every wait is on something that happens (bytes received, a connection closed, a counter reached); none watches for
an absence."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from harness import LOCALHOST, FaultProxy, LatencyProxy, ProxyProcess
from tests._doubles import eventually

GREETING = b"hello"
EARLY = 0.01  # a timer may fire this much before its deadline (clock resolution, rounding)


class GreetingEcho:
    """Sends GREETING on connect (as MySQL does), then echoes; notes when it greeted and when it first got bytes."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.received_at = 0.0
        self.greeted_at = 0.0
        self.bytes_in = 0
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            self.greeted_at = loop.time()
            writer.write(GREETING)
            while chunk := await reader.read(4096):
                if not self.received.is_set():
                    self.received_at = loop.time()
                self.bytes_in += len(chunk)
                self.received.set()
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def __aenter__(self) -> GreetingEcho:
        self._server = await asyncio.start_server(self._handle, LOCALHOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection through the proxy, its greeting read."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port), 5)
    assert await asyncio.wait_for(reader.readexactly(len(GREETING)), 5) == GREETING
    return reader, writer


async def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    reader, writer = await _connect(port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except (ConnectionError, OSError):
        return True


async def test_latency_is_applied_per_direction() -> None:
    loop = asyncio.get_running_loop()
    async with GreetingEcho() as echo:
        # Replies held for 30 s: the request still reaches the server, 0.2 s late.
        async with LatencyProxy(LOCALHOST, echo.port, upstream_latency=0.2, downstream_latency=30.0) as proxy:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), 5)
            writer.write(b"ping")
            sent = loop.time()
            await asyncio.wait_for(echo.received.wait(), 5)
            assert echo.received_at - sent >= 0.2 - EARLY
            assert proxy.latency == 30.0  # the larger of the two
            writer.close()
        # Requests held for 30 s: the server's greeting still arrives, 0.2 s late.
        async with LatencyProxy(LOCALHOST, echo.port, upstream_latency=30.0, downstream_latency=0.2) as proxy:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), 5)
            assert await asyncio.wait_for(reader.readexactly(len(GREETING)), 5) == GREETING
            assert loop.time() - echo.greeted_at >= 0.2 - EARLY
            writer.close()


async def test_latency_keeps_order_and_can_change_mid_stream() -> None:
    async with GreetingEcho() as echo, LatencyProxy(LOCALHOST, echo.port) as proxy:
        reader, writer = await _connect(proxy.port)
        parts = [f"part-{i:03d};".encode() for i in range(60)]
        for i, part in enumerate(parts):
            proxy.latency = (0.0, 0.02, 0.005)[i % 3]  # both directions; chunks queued earlier keep their place
            writer.write(part)
            await writer.drain()
        assert (proxy.upstream_latency, proxy.downstream_latency) == (0.005, 0.005)
        assert await asyncio.wait_for(reader.readexactly(sum(map(len, parts))), 10) == b"".join(parts)
        writer.close()
        assert proxy.bytes_up == echo.bytes_in == sum(map(len, parts))


async def test_blackhole_swallows_and_setting_it_back_drops_what_lost_bytes() -> None:
    async with GreetingEcho() as echo, LatencyProxy(LOCALHOST, echo.port) as proxy:
        before, before_writer = await _connect(proxy.port)  # open when the network goes silent
        proxy.blackhole = True
        assert proxy.mode == "blackhole"
        during, during_writer = await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), 5)
        before_writer.write(b"lost")
        during_writer.write(b"gone")
        await eventually(lambda: proxy.bytes_dropped == 8, what="both writes swallowed")
        assert proxy.accepted == 2  # accepted, as a silent network does
        assert echo.bytes_in == 0
        assert echo.connections == 1  # the connection made during the blackhole never reached the server

        proxy.blackhole = False
        assert await _closed(before)  # each lost bytes: its stream cannot be parsed any more
        assert await _closed(during)
        await eventually(lambda: proxy.open_connections == 0)
        assert await _roundtrip(proxy.port) == b"ping"
        for writer in (before_writer, during_writer):
            writer.close()


async def test_close_all_resets_and_aclose_stops_listening() -> None:
    async with GreetingEcho() as echo:
        proxy = await LatencyProxy(LOCALHOST, echo.port).start()
        try:
            readers = [await _connect(proxy.port) for _ in range(2)]
            assert proxy.open_connections == 2
            await proxy.close_all()
            assert proxy.open_connections == 0
            for reader, writer in readers:
                assert await _closed(reader)
                writer.close()
            assert await _roundtrip(proxy.port) == b"ping"  # still listening
        finally:
            await proxy.aclose()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCALHOST, proxy.port)


async def test_modes_switch() -> None:
    async with GreetingEcho() as echo:
        proxy = await FaultProxy(echo.port).start()
        try:
            port = proxy.port
            reader, writer = await _connect(port)
            await proxy.set_mode("refuse")
            assert await _closed(reader)
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(LOCALHOST, port)
            with pytest.raises(RuntimeError):
                proxy.blackhole = True  # listening again needs the async set_mode

            await proxy.set_mode("drop_replies")
            assert proxy.port == port  # the same address as before
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port), 5)
            writer.write(b"write")
            await asyncio.wait_for(echo.received.wait(), 5)  # the request goes through...
            await eventually(lambda: proxy.bytes_dropped == len(GREETING) + 5)  # ...the answers do not
            await proxy.set_mode("pass")
            assert await _closed(reader)
            writer.close()
            assert await _roundtrip(port) == b"ping"

            with pytest.raises(ValueError, match="unknown mode"):
                await proxy.set_mode("slow")  # type: ignore[arg-type]
            await eventually(lambda: proxy.open_connections == 0)
            proxy.max_connections = 1
            reader, writer = await _connect(port)
            second, second_writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port), 5)
            assert await _closed(second)
            assert proxy.rejected == 1
            for w in (writer, second_writer):
                w.close()
        finally:
            await proxy.aclose()
    with pytest.raises(ValueError, match="loopback only"):
        FaultProxy(1, target_host="192.0.2.1")


async def test_child_process_answers_its_commands(tmp_path: Path) -> None:
    async with GreetingEcho() as echo:
        proxy = await asyncio.to_thread(ProxyProcess, "echo", echo.port, log=tmp_path / "proxy.log")
        try:
            assert await _roundtrip(proxy.port) == b"ping"
            assert (await asyncio.to_thread(proxy.command, "stats")).startswith("ok pass 0.0 open=")
            await asyncio.to_thread(proxy.set_latency, 0.05)
            assert (await asyncio.to_thread(proxy.command, "stats")).startswith("ok pass 0.05 ")
            reader, writer = await _connect(proxy.port)
            await asyncio.to_thread(proxy.close_all)
            assert await _closed(reader)
            writer.close()
            await asyncio.to_thread(proxy.set_mode, "blackhole")
            assert proxy.mode == "blackhole"
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, proxy.port), 5)
            writer.write(b"lost")
            await writer.drain()

            async def dropped() -> bool:
                return "dropped_bytes=4" in await asyncio.to_thread(proxy.command, "stats")

            await eventually(dropped, what="the child swallowed 4 bytes")
            writer.close()
            for bad in ("mode nonsense", "latency soon", "shout"):
                with pytest.raises(RuntimeError, match="error"):
                    await asyncio.to_thread(proxy.command, bad)
            await asyncio.to_thread(proxy.set_mode, "pass")
            assert await _roundtrip(proxy.port) == b"ping"
        finally:
            await asyncio.to_thread(proxy.stop)
        assert proxy.proc.returncode == 0
