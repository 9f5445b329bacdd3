"""The load benchmark's parsers of wrk and ab reports, on captured outputs (no load is generated here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.http_load import Row, answered_2xx, parse_ab, parse_h2load, parse_wrk, targets

WRK = """Running 5s test @ http://127.0.0.1:18888/client/v3/wallpaper_4d/wallpaperList.json?pageSize=20
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    23.17ms    4.73ms  59.14ms   93.84%
    Req/Sec     2.78k   303.71     3.23k    75.00%
  Latency Distribution
     50%   22.25ms
     75%   23.39ms
     90%   25.34ms
     99%    1.05s
  22188 requests in 8.01s, 164.80MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   2770.37
Transfer/sec:     20.58MB
"""

WRK_EMPTY = """Running 3s test @ http://127.0.0.1:18889/x
  1 threads and 8 connections
  Latency Distribution
     50%    0.00us
     99%    0.00us
  0 requests in 3.02s, 0.00B read
Requests/sec:      0.00
Transfer/sec:       0.00B
"""

AB = """Server Software:        TornadoServer/6.6.1
Document Path:          /client/v3/wallpaper_4d/wallpaperList.json?pageSize=20
Document Length:        7457 bytes

Concurrency Level:      10000
Time taken for tests:   6.426 seconds
Complete requests:      10000
Failed requests:        12
   (Connect: 0, Receive: 0, Length: 12, Exceptions: 0)
Non-2xx responses:      3
Total transferred:      77450000 bytes
Requests per second:    1556.12 [#/sec] (mean)
Time per request:       6426.210 [ms] (mean)

Percentage of the requests served within a certain time (ms)
  50%   3221
  66%   3900
  75%   4100
  80%   4300
  90%   4800
  95%   5000
  98%   5200
  99%   5272
 100%   5400 (longest request)
"""

H2LOAD = """starting benchmark...
finished in 43.71s, 228.80 req/s, 1.69MB/s
requests: 10000 total, 10000 started, 10000 done, 9990 succeeded, 10 failed, 6 errored, 2 timeout
status codes: 9994 2xx, 0 3xx, 1 4xx, 3 5xx
traffic: 73.65MB (77227120) total, 2.42MB (2537120) headers (space savings 0.00%), 70.67MB (74100000) data
"""


def test_parse_wrk() -> None:
    result = parse_wrk(WRK)
    assert result["rps"] == pytest.approx(2770.37)
    assert result["p50_ms"] == pytest.approx(22.25)
    assert result["p99_ms"] == pytest.approx(1050.0)
    assert result["socket_errors"] == 5
    assert result["non_2xx"] == 7
    assert result["requests"] == 22188


def test_parse_wrk_without_requests_or_errors() -> None:
    result = parse_wrk(WRK_EMPTY)
    assert result["rps"] == 0.0
    assert result["requests"] == 0
    assert result["socket_errors"] == 0
    assert result["non_2xx"] == 0


def test_parse_ab() -> None:
    result = parse_ab(AB)
    assert result["rps"] == pytest.approx(1556.12)
    assert result["p50_ms"] == 3221
    assert result["p99_ms"] == 5272
    assert result["failed"] == 12
    assert result["non_2xx"] == 3
    assert result["requests"] == 10000


def test_parse_h2load() -> None:
    result = parse_h2load(H2LOAD)
    assert result["rps"] == pytest.approx(228.8)
    assert result["p50_ms"] is None
    assert result["p99_ms"] is None
    assert result["requests"] == 10000
    # "failed" (10) includes the 6 errored and the 4 answers with 4xx/5xx: each counted once.
    assert (result["socket_errors"], result["non_2xx"], result["failed"]) == (6, 4, 0)


def test_answered_2xx_counts_only_new_2xx_lines_of_the_path(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    old = b'{"path":"/client/v3/wallpaper_4d/wallpaperList.json","status":200}\n'
    log.write_bytes(old)
    lines = [
        b'{"path":"/client/v3/wallpaper_4d/wallpaperList.json","status":200}',
        b'{"path":"/client/v3/wallpaper_4d/wallpaperList.json","status":503}',
        b'{"path":"/healthz","status":200}',
        b'{"event":"serving"}',
    ]
    log.write_bytes(old + b"\n".join(lines) + b"\n")
    assert answered_2xx(log, len(old), "/client/v3/wallpaper_4d/wallpaperList.json?pageSize=20") == 1


def test_parsers_refuse_other_text() -> None:
    with pytest.raises(ValueError, match="wrk"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")
    with pytest.raises(ValueError, match="ab"):
        parse_ab("apr_pollset_poll: The timeout specified has expired (70007)")
    with pytest.raises(ValueError, match="h2load"):
        parse_h2load("")


def test_targets() -> None:
    def row(variant: str, rps: float, tool: str = "wrk", errors: int = 0, **kw: object) -> Row:
        return Row(variant, "asyncio", 1, tool, rps, 1.0, 2.0, errors, **kw)  # type: ignore[arg-type]

    rows = [
        row("ceiling", 1000),
        row("cached", 700),
        row("cached-l1", 900),
        row("uncached", 10),
        row("cached", 500, "ab", failed=0, requests=10000),
        row("uncached", 200, "h2load", errors=3, socket_errors=3, requests=10000),
    ]
    verdicts = {v["target"]: v["pass"] for v in targets(rows)}
    assert verdicts == {
        "cached-l1 >= 0.85 x ceiling": True,
        "cached >= 0.6 x ceiling": True,
        "cached >= 20 x uncached": True,
        "ab -c 10000 -n 10000 cached: 0 failed": True,
        "h2load -c 10000 -n 10000 uncached: 0 failed": False,
    }
