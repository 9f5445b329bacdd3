"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the browser tests.

Started with its own empty profile and ``--remote-debugging-port=0`` (it writes the port it took into
``DevToolsActivePort``), stopped by PID. Commands go over Tornado's websocket client (the service depends on
Tornado already); :meth:`Browser.evaluate` runs a script in the page and returns what its promise resolves to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import WebSocketClientConnection, websocket_connect

from harness.services import skip_or_fail
from tests._doubles import eventually

FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--remote-debugging-port=0",
)  # fmt: skip


START_TIMEOUT = 30.0  # a cold start on a loaded 2-core machine


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        skip_or_fail("Debian's chromium is not installed (apt-get install chromium; `make system-deps` does)")
    return path


class Browser:
    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc = subprocess.Popen(
            [chromium_path(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._ws: WebSocketClientConnection | None = None
        self._ids = itertools.count(1)

    async def connect(self) -> None:
        port_file = self.profile / "DevToolsActivePort"

        def started() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            return port_file.exists() and bool(port_file.read_text().strip())

        await eventually(started, START_TIMEOUT, "chromium to write DevToolsActivePort")
        port = int(port_file.read_text().split()[0])
        pages: list[dict[str, Any]] = []

        async def has_page() -> bool:
            answer = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/json/list", raise_error=False)
            pages[:] = [t for t in json.loads(answer.body or b"[]") if t.get("type") == "page"]
            return bool(pages)

        await eventually(has_page, START_TIMEOUT, "chromium's first page")
        self._ws = await websocket_connect(pages[0]["webSocketDebuggerUrl"], max_message_size=64 * 2**20)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ws = self._ws
        assert ws is not None
        call = next(self._ids)
        await ws.write_message(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = await asyncio.wait_for(ws.read_message(), 60)
            if message is None:
                raise RuntimeError("chromium closed the DevTools connection")
            reply = json.loads(message)
            if reply.get("id") == call:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    async def navigate(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)
        # Loaded once the page's own document answers (the same origin as every fetch that follows).

        async def loaded() -> bool:
            return bool(await self.evaluate("document.readyState") == "complete")

        await eventually(loaded, START_TIMEOUT, f"{url} to load")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        # Chromium's helpers (zygote, renderers, GPU, network) share its session: the whole group goes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
