"""JSON access lines through the queue listener; shipping to Logstash over TCP (a local asyncio listener)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import orjson
import pytest
from logstash_async.constants import constants

from harness import free_port
from service.app import AccessLines
from service.config import LogSettings
from service.logs import json_formatter, setup_logging, text_formatter, writes_text
from tests.service._support import API, Running


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)


@pytest.mark.parametrize("driver", ["motor"], indirect=True)
async def test_access_line_is_one_json_object(service: Running, restore_root_logging: None) -> None:
    captured = io.StringIO()
    sink = logging.StreamHandler(captured)
    sink.setFormatter(json_formatter())
    handle = setup_logging(LogSettings(sink="none", level="INFO"), extra_handlers=[sink])
    try:
        await service.fetch(f"{API}/wallpaper/4.json", headers={"X-Request-Id": "req-abc-123"})
        await service.fetch(f"{API}/wallpaper/4.json")
    finally:
        handle.stop()
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    access = [line for line in lines if line.get("logger") == "wallpaper.access"]
    assert len(access) == 2
    first = access[0]
    for field in ("time", "level", "event", "request_id", "method", "path", "status", "duration_ms", "cache"):
        assert field in first, field
    assert first["request_id"] == "req-abc-123"
    assert (first["method"], first["path"], first["status"], first["level"]) == (
        "GET",
        f"{API}/wallpaper/4.json",
        200,
        "INFO",
    )
    assert [line["cache"] for line in access] == ["miss", "hit"]


async def test_logstash_shipping_over_tcp(restore_root_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "QUEUED_EVENTS_FLUSH_INTERVAL", 0.1)
    monkeypatch.setattr(constants, "QUEUE_CHECK_INTERVAL", 0.05)
    received = bytearray()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
        writer.close()

    port = free_port()
    server = await asyncio.start_server(on_connection, "127.0.0.1", port)
    handle = setup_logging(LogSettings(sink="logstash", logstash_port=port, level="INFO"))
    try:
        logging.getLogger("wallpaper.test").info("shipped-event", extra={"request_id": "r-1"})
        for _ in range(100):
            if b"shipped-event" in received:
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(handle.stop)
        server.close()
    line = next(line for line in bytes(received).splitlines() if b"shipped-event" in line)
    event = json.loads(line)
    assert event["message"] == "shipped-event"
    assert event["request_id"] == "r-1"


def test_times_are_iso_8601_utc_and_a_terminal_gets_readable_lines() -> None:
    record = logging.LogRecord("wallpaper", logging.WARNING, __file__, 1, "MySQL unavailable: %s", ("refused",), None)
    record.created, record.msecs = 1_796_000_000.25, 250.0
    line = orjson.loads(json_formatter().format(record))
    assert line["time"] == "2026-11-30T00:53:20.250Z"  # UTC, with its zone, whatever the machine's
    assert line["event"] == "MySQL unavailable: refused"
    assert text_formatter().format(record) == "2026-11-30T00:53:20.250Z WARNING wallpaper: MySQL unavailable: refused"
    assert writes_text(LogSettings(sink="stderr", format="text"))
    assert not writes_text(LogSettings(sink="stderr", format="json"))
    assert not writes_text(LogSettings(sink="stdout", format="auto"))  # pytest captures stdout: not a terminal
    assert not writes_text(LogSettings(sink="logstash", format="text"))


def test_access_lines_as_text_and_as_json() -> None:
    out = io.BytesIO()
    text = AccessLines(out, 7, text=True)
    text.line("r-1", "GET", "/client/v3/wallpaper_4d/wallpaper/7.json", 200, 1.25, "hit")
    text.close()
    written = out.getvalue().decode()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    wallpaper\.access: "
        r"GET /client/v3/wallpaper_4d/wallpaper/7\.json 200 1\.25 ms cache=hit id=r-1\n",
        written,
    ), written
    out = io.BytesIO()
    json_lines = AccessLines(out, 7)
    json_lines.line("r-2", "GET", "/healthz", 200, 0.5, None)
    json_lines.close()
    assert orjson.loads(out.getvalue())["time"].endswith("Z")
