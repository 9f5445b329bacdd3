"""The chaos benchmark's parts, without a full run: the fault proxy's modes against a tiny echo server (in this
process and as a child process), and the functions that build the result rows from a synthetic timeline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Self

import pytest

from benchmarks import _scrape, chaos
from harness import FaultProxy, ProxyProcess

SILENCE_S = 0.3  # how long "nothing arrives" is watched for: an absence has no event to wait on


class LoopbackServer:
    """A TCP server on a free loopback port for the ``async with`` block; subclasses answer in ``_handle``."""

    port = 0
    _server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


class EchoServer(LoopbackServer):
    """Echoes every chunk; ``received`` is set once it got any byte."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.bytes_in = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(4096):
                self.bytes_in += len(chunk)
                self.received.set()
                writer.write(chunk)
                await writer.drain()
        writer.close()



@pytest.fixture
async def echo_proxy() -> AsyncIterator[tuple[EchoServer, FaultProxy]]:
    async with EchoServer() as echo:
        proxy = await FaultProxy(echo.port).start()
        try:
            yield echo, proxy
        finally:
            await proxy.aclose()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


async def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    reader, writer = await _connect(port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()


async def _silent(reader: asyncio.StreamReader) -> bool:
    """True when nothing arrives on ``reader`` for SILENCE_S."""
    try:
        await asyncio.wait_for(reader.read(1), SILENCE_S)
    except TimeoutError:
        return True
    return False


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except (ConnectionError, OSError):
        return True


async def test_pass_and_latency(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    _echo, proxy = echo_proxy
    assert await _roundtrip(proxy.port) == b"ping"
    proxy.latency = 0.1
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _roundtrip(proxy.port, b"slow") == b"slow"
    assert loop.time() - started >= 0.2  # 0.1 s each way


async def test_refuse_closes_open_connections_and_refuses_new_ones(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    _echo, proxy = echo_proxy
    reader, writer = await _connect(proxy.port)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
    await proxy.set_mode("refuse")
    assert await _closed(reader)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy.port)
    await proxy.set_mode("pass")
    assert await _roundtrip(proxy.port) == b"ping"


async def test_blackhole_accepts_and_swallows(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    echo, proxy = echo_proxy
    await proxy.set_mode("blackhole")
    reader, writer = await _connect(proxy.port)
    writer.write(b"lost")
    await writer.drain()
    assert await _silent(reader)
    assert echo.bytes_in == 0
    await proxy.set_mode("pass")
    assert await _closed(reader)  # it lost bytes: aborted when the network comes back
    writer.close()
    assert await _roundtrip(proxy.port) == b"ping"


async def test_drop_replies_forwards_requests_only(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    echo, proxy = echo_proxy
    reader, writer = await _connect(proxy.port)
    await proxy.set_mode("drop_replies")
    writer.write(b"write")
    await writer.drain()
    await asyncio.wait_for(echo.received.wait(), 5)
    assert await _silent(reader)
    assert echo.bytes_in == 5
    await proxy.set_mode("pass")
    assert await _closed(reader)
    writer.close()
    assert await _roundtrip(proxy.port) == b"ping"


async def test_connection_limit(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    _echo, proxy = echo_proxy
    proxy.max_connections = 1
    reader, writer = await _connect(proxy.port)
    writer.write(b"a")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
    second, second_writer = await _connect(proxy.port)
    assert await _closed(second)
    second_writer.close()
    writer.close()


async def test_proxy_process_switches_modes(tmp_path: Path) -> None:
    async with EchoServer() as echo:
        proxy = await asyncio.to_thread(ProxyProcess, "echo", echo.port, log=tmp_path / "proxy.log")
        try:
            assert await _roundtrip(proxy.port) == b"ping"
            await asyncio.to_thread(proxy.set_mode, "refuse")
            with pytest.raises(ConnectionRefusedError):
                await _connect(proxy.port)
            await asyncio.to_thread(proxy.set_mode, "pass")
            assert await _roundtrip(proxy.port) == b"ping"
            with pytest.raises(RuntimeError):
                await asyncio.to_thread(proxy.command, "mode nonsense")
        finally:
            await asyncio.to_thread(proxy.stop)
        assert proxy.proc.returncode is not None


# -- result building on a synthetic timeline ---------------------------------------------------------------------


def _seconds(errors_at: dict[int, int], p99_at: dict[int, float] | None = None, n: int = 30) -> list[chaos.Second]:
    """One point a second, 100 requests each, p99 10 ms, with the given errors / p99s."""
    p99_at = p99_at or {}
    return [
        chaos.Second(t=float(t), duration=1.0, requests=100, non_2xx=errors_at.get(t, 0), socket_errors=0,
                     p99_ms=p99_at.get(t, 10.0))
        for t in range(n)
    ]  # fmt: skip


WINDOW = chaos.PhaseWindow("redis_kill", start=0.0, fault_start=5.0, fault_end=10.0, end=25.0)


def test_recovery_is_the_first_clean_second_after_the_fault() -> None:
    seconds = _seconds({7: 3, 10: 2, 11: 1}, {12: 25.0, 13: 19.0})
    # 10, 11: errors; 12: p99 25 ms > 2 x 10 ms; 13: clean.
    assert chaos.recovery_seconds(seconds, WINDOW) == 3.0
    assert chaos.recovery_seconds(_seconds({}), WINDOW) == 0.0


def test_recovery_ends_with_the_watch_and_throughput_is_reported_apart() -> None:
    seconds = _seconds({}, {t: 50.0 for t in range(10, 30)})
    assert chaos.recovery_seconds(seconds, WINDOW) is None
    seconds = _seconds({})
    for s in seconds[10:14]:
        s.requests = 10  # a tenth of the baseline: answers are fast, but few
    assert chaos.recovery_seconds(seconds, WINDOW) == 0.0
    assert chaos.rate_recovery_seconds(seconds, WINDOW) == 4.0


def test_loads_between_samples_of_the_pod_total() -> None:
    samples = [(0.0, 0.0), (5.0, 15.0), (25.0, 45.0)]  # cachelayer_loads of one scrape: the workers' sum already
    assert chaos.loads_at(samples, -1.0) is None
    assert chaos.loads_at(samples, 6.0) == 15.0
    row = chaos.build_row(WINDOW, _seconds({7: 3}), samples, {"downloads_2xx": 0})
    assert row["db_loads_during"] == 30
    assert row["requests"] == 2000  # seconds 5..24
    assert row["non_2xx_warm"] == 3
    assert row["p99_ms_during"] == 10.0


def _download(key: str, final: str) -> chaos.Download:
    return chaos.Download(
        key=key, wallpaper_id=1, phase="mysql_refuse", sent_at=0.0, attempts=[(1.0, final)], final=final
    )


def test_counting_by_key_finds_lost_and_double() -> None:
    downloads = [_download("a", "200"), _download("b", "200"), _download("c", "503"), _download("d", "202")]
    counts = chaos.count_downloads(downloads, {"a": 1, "c": 2, "d": 1, "other": 1}, rows_in_block=99)
    assert counts == {
        "downloads_2xx": 3,
        "downloads_counted": 3,
        "downloads_lost": 1,  # b
        "downloads_double": 1,  # c
        "counted_after_failure": 1,  # c answered 503 but has rows
    }


def test_counting_by_totals_without_a_key_column() -> None:
    downloads = [_download("a", "200"), _download("b", "200"), _download("c", "503")]
    assert chaos.count_downloads(downloads, None, rows_in_block=3)["downloads_double"] == 1
    assert chaos.count_downloads(downloads, None, rows_in_block=1)["downloads_lost"] == 1


def test_verdicts_follow_the_issue_targets() -> None:
    row = {"fault": "mysql_blackhole", "non_2xx_warm": 7, "downloads_lost": 0, "downloads_double": 0,
           "recovery_s": 1.0}  # fmt: skip
    assert chaos.verdict(row) == (True, [])  # warm 503s are allowed under MySQL faults
    assert chaos.verdict({**row, "fault": "redis_stop"})[0] is False
    assert chaos.verdict({**row, "recovery_s": None})[0] is False
    assert chaos.verdict({**row, "downloads_double": 1})[1] == ["downloads_double 1 (target 0)"]
    assert chaos.verdict({**row, "downloads_counted": 3, "mongo_counted": 5})[0] is False


def test_downloads_land_in_their_second_and_timeline_is_relative() -> None:
    seconds = _seconds({})
    chaos.add_downloads(seconds, [_download("a", "503"), _download("b", "200")])
    assert (seconds[1].download_attempts, seconds[1].download_errors) == (2, 1)
    timeline = chaos.timeline_for(seconds, WINDOW)
    assert timeline[0]["t"] == -5.0
    assert len(timeline) == 25
    markdown = chaos.render_markdown(
        {"rows": [{**chaos.build_row(WINDOW, seconds, [], chaos.count_downloads([], None, 0)), "pass": True,
                   "failed": [], "mongo_counted": 0}],
         "quick": True, "date": "today", "elapsed_s": 1.0, "mysql": "private", "connections": 1, "paths": 1,
         "gap_s": 1, "fault_s": 1, "after_s": 1, "settle_s": 0, "stores_agree": "yes", "download_method": "m",
         "chart": "chaos.png", "environment": {}, "notes": [], "source": "."}
    )  # fmt: skip
    assert "| redis_kill |" in markdown
    assert "PASS" in markdown


# -- the download storm (issue 16, part 2): result building, then the row itself in its quick form ----------------


def test_storm_pages_are_300_distinct_unfiltered_list_pages() -> None:
    pages = chaos.storm_list_paths()
    assert len(pages) == len(set(pages)) == 300
    assert not any("category=" in p for p in pages)  # all under the tag every download invalidates (list:_all)


def test_a_read_is_held_to_the_downloads_answered_before_it_was_sent() -> None:
    ledger = chaos.Ledger()
    ledger.add(41, 1.0, 10)
    ledger.add(41, 2.0, 9)  # answered later with a lower count (its event committed earlier): the floor stays 10
    ledger.add(42, 2.5, 5)
    assert ledger.floor(41, 1.0) is None  # answered at the very moment the read was sent: not before it
    assert ledger.floor(41, 1.5) == 10
    assert ledger.floor(41, 3.0) == 10
    assert ledger.floor(43, 3.0) is None
    answers = [
        chaos.Answer(0.5, "/early", 200, "hit", 1.0, {41: 3}),  # sent before any answer: anything goes
        chaos.Answer(1.5, "/fresh", 200, "miss", 1.0, {41: 10, 42: 0}),  # 42 not answered yet
        chaos.Answer(3.0, "/old", 200, "hit", 1.0, {41: 9, 42: 5}),
    ]
    stale = chaos.stale_answers(answers, ledger)
    assert [(s["path"], s["wallpaper"], s["shown"], s["answered"]) for s in stale] == [("/old", 41, 9, 10)]


def test_counts_shown_reads_list_and_detail_bodies() -> None:
    listing = b'{"data": {"items": [{"id": 41, "downloads": 7}, {"id": 3, "downloads": 1}]}}'
    assert chaos.counts_shown(listing) == {41: 7}
    assert chaos.counts_shown(b'{"data": {"id": 60, "counts": {"downloads": 2}}}') == {60: 2}


# One scrape of a 2-worker service's admin port, in its shape: counters summed over the workers, gauges per worker.
SCRAPE = """# HELP cachelayer_loads_total Loader calls
# TYPE cachelayer_loads_total counter
cachelayer_loads_total{cache="wallpaper"} 30.0
cachelayer_revoked_fills_total{cache="wallpaper"} 12.0
cachelayer_breaker_open{cache="wallpaper",worker="0"} 0.0
cachelayer_breaker_open{cache="wallpaper",worker="1"} 1.0
cachelayer_breaker_opened_total{cache="wallpaper"} 0.0
cachelayer_function_loads_total{cache="wallpaper",function="wp.list",result="success"} 5.0
wallpaper_http_requests_total{method="GET",route="detail",status="200",x_cache="miss"} 29.0
wallpaper_http_requests_total{method="GET",route="detail",status="200",x_cache="hit"} 70.0
wallpaper_http_requests_total{method="GET",route="metrics",status="200",x_cache=""} 3.0
wallpaper_workers 2.0
"""


def test_the_cache_counters_come_from_metrics_text() -> None:
    # The pod's counters only: not the per-function series, not the per-worker gauges.
    assert chaos.parse_counters(SCRAPE) == {"loads": 30.0, "revoked_fills": 12.0, "breaker_opened": 0.0}


def test_the_scrape_parser_reads_the_admin_ports_shape() -> None:
    samples = _scrape.parse(SCRAPE + 'odd{a="x\\"y,z",b="2"} 1e3 1700000000000\n')
    assert _scrape.live_workers(samples) == 2
    assert _scrape.by_worker(samples, "cachelayer_breaker_open", cache="wallpaper") == {"0": 0.0, "1": 1.0}
    assert _scrape.total(samples, "wallpaper_http_requests_total", route="detail") == 99.0
    assert _scrape.requests_by_x_cache(samples, "detail") == {"miss": 29.0, "hit": 70.0}
    assert _scrape.requests_by_x_cache(samples) == {"miss": 29.0, "hit": 70.0, "": 3.0}
    assert [s for s in samples if s.name == "odd"] == [_scrape.Sample("odd", {"a": 'x"y,z', "b": "2"}, 1000.0)]


class AdminPort(LoopbackServer):
    """A stand-in admin port: answers every connection with ``answers`` in turn (status, body), then closes it."""

    def __init__(self, answers: list[tuple[int, str]]) -> None:
        self.answers, self.paths = answers, list[str]()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.paths.append((await reader.readline()).decode().split()[1])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        status, body = self.answers.pop(0)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        await writer.drain()
        writer.close()



async def test_pod_metrics_scrape_the_admin_port_once_per_sample() -> None:
    one_worker = SCRAPE.replace(
        'cachelayer_loads_total{cache="wallpaper"} 30.0', 'cachelayer_loads_total{cache="wallpaper"} 41.0'
    )
    one_worker = one_worker.replace("wallpaper_workers 2.0", "wallpaper_workers 1.0")
    async with AdminPort([(200, SCRAPE), (404, "{}"), (200, one_worker)]) as admin:
        metrics = chaos.PodMetrics(admin.port, workers=2)
        assert await metrics.sample(1.0)
        assert not await metrics.sample(2.0)  # a failed scrape: a gap in the samples, not a zero
        assert await metrics.sample(3.0)
    assert admin.paths == ["/metrics"] * 3
    assert metrics.samples == [(1.0, 30.0), (3.0, 41.0)]
    assert metrics.counters["loads"] == 41.0
    assert metrics.live == 1
    assert (
        metrics.note
        == "1 scrape(s) of the admin port failed (those samples skipped); a scrape at 3 s held 1 of 2 live workers"
    )


def _storm_download(key: str, wallpaper_id: int, answered_at: float, downloads: int) -> chaos.Download:
    return chaos.Download(key, wallpaper_id, chaos.STORM, 0.0, [(answered_at, "200")], "200", downloads)


def test_storm_row_and_its_verdict() -> None:
    downloads = [_storm_download("a", 41, 1.0, 10), _storm_download("b", 41, 2.0, 11)]
    answers = [chaos.Answer(1.5, "/p", 200, "miss", 2.0, {41: 10}), chaos.Answer(2.5, "/q", 200, "hit", 1.0, {41: 10})]
    counters = {"breaker_opened": 0.0, "store_errors": 0.0, "revoked_fills": 4.0}
    row = chaos.storm_row(downloads, answers, counters, failed_reads=0, list_pages=300)
    assert row["stale_answers"] == 1  # /q was sent after the answer 11
    assert row["pass"] is False
    assert row["failed"] == ["stale_answers 1 (target 0)"]
    assert row["revoked_fills"] == 4
    assert set(chaos.STORM_FIELDS) <= set(row)
    fine = chaos.storm_row(downloads, answers[:1], counters, failed_reads=0, list_pages=300)
    assert fine["pass"] is True
    markdown = chaos.render_markdown(
        {"rows": [], "storm": {**fine, "seconds": 1.0, "redis_busy_ms_per_s": 1.0, "redis_commands": {},
                               "counters_agree": True},
         "quick": True, "date": "today", "elapsed_s": 1.0, "mysql": "private", "connections": 1, "paths": 1,
         "gap_s": 1, "fault_s": 1, "after_s": 1, "settle_s": 0, "stores_agree": "yes", "download_method": "m",
         "chart": "chaos.png", "environment": {}, "notes": [], "source": "."}
    )  # fmt: skip
    assert "| download_storm |" in markdown
    assert "300 cached list pages" in markdown
    assert "| none |" not in markdown


@pytest.mark.slow
def test_the_download_storm_row_in_its_quick_form(tmp_path: Path) -> None:
    """The row end to end: its own stores and a 2-worker service, 300 cached list pages, 12 downloading clients.
    Every answer must show at least the count of every download answered before the read was sent. Store errors
    and breaker openings are the benchmark's targets (they depend on the machine's load) and are reported, not
    asserted here."""
    out = tmp_path / "storm.json"
    # In its own process: the benchmark stops every server the harness started in its process when it ends (the
    # test session's own Redis Cluster included, were it run in this one).
    argv = ["--quick", "--faults", chaos.STORM, "--json", str(out), "--results", str(tmp_path)]
    subprocess.run([sys.executable, "-m", "benchmarks.chaos", *argv], check=True, timeout=600)
    data = json.loads(out.read_text())
    assert data["rows"] == []
    row = data["storm"]
    assert row["list_pages"] == 300
    assert row["download_clients"] == 12
    assert row["downloads"] > 0
    assert row["reads"] > 0
    assert row["workers_measured"] == 2  # live workers in the last scrape of the admin port
    assert row["revoked_fills"] > 0  # reloads raced the downloads' invalidations, and lost
    assert row["counters_agree"]
    # The guarantee covers every process while invalidations land; one a store timeout deferred is retried in the
    # background, and until then only the process that made it stops serving what it covers (docs/consistency.md).
    if row["invalidations_deferred"] == 0:
        assert row["stale_answers"] == 0, row["stale_examples"]
    assert "| download_storm |" in (tmp_path / "chaos.md").read_text()
