"""``python -m service serve --processes 2`` as a subprocess: both workers answer, a killed worker is replaced,
SIGTERM stops everything cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import REPO_ROOT, free_port
from service.config import Settings
from service.runtime import _children_of
from tests.service._support import settings_env

pytestmark = pytest.mark.slow


def get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes] | None:
    """One request on a new connection; None when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_two_processes_restart_and_sigterm(seeded: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLPAPER_")}
    env.update(settings_env(seeded.model_dump()))
    env.update({"WALLPAPER_SERVER__HOST": "127.0.0.1", "WALLPAPER_LOG__SINK": "stderr", "PYTHONPATH": str(REPO_ROOT)})
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--processes", "2", "--loop", "uvloop"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = get(f"{base}/healthz")
            if answer is not None and answer[0] == 200:
                break
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.1)
        else:
            pytest.fail("service did not become healthy:\n" + log_path.read_text())

        def worker_pids(wanted: int, url: str, tries: int = 300) -> set[int]:
            seen: set[int] = set()
            for _ in range(tries):
                answer = get(url)
                if answer is not None and answer[0] == 200:
                    seen.add(int(answer[1]["X-Worker-Pid"]))
                    if len(seen) >= wanted:
                        break
            return seen

        list_url = f"{base}/client/v3/wallpaper_4d/wallpaperList.json?pageSize=5"
        pids = worker_pids(2, list_url)
        assert len(pids) == 2, pids
        assert pids == set(_children_of(proc.pid))
        health = get(f"{base}/healthz")
        assert health is not None
        assert json.loads(health[2])["data"]["pid"] in pids

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        new_children: set[int] = set()
        while time.monotonic() < deadline:
            new_children = set(_children_of(proc.pid)) - pids
            if new_children:
                break
            time.sleep(0.05)
        assert new_children, "the parent did not start a new child"
        answered = worker_pids(2, list_url)
        assert answered, "the service stopped answering after a child was killed"
        assert victim not in answered
        replacement = worker_pids(3, list_url, tries=300)
        assert replacement & new_children, (replacement, new_children)

        children = set(_children_of(proc.pid))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_path.read_text()
        for child in children:
            assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()
    finally:
        if proc.poll() is None:
            for child in _children_of(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=5)
