"""``python -m service serve --processes N`` as a subprocess, for the tests of its admin port: its two ports, its
workers, its metrics directory (under a ``TMPDIR`` of the test's own) and a parsed scrape."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from harness import REPO_ROOT, free_port
from service.config import Settings
from service.runtime import _children_of
from tests.service._support import settings_env

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


@dataclass(frozen=True)
class Scrape:
    text: str
    samples: dict[Key, float]
    kinds: dict[str, str]  # sample name -> its family's type

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[Key, float] = {}
        kinds: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
                kinds[sample.name] = family.type
        return cls(text, samples, kinds)

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples that carry ``labels`` (whatever their other labels: ``x_cache``, ...)."""
        wanted = set(labels.items())
        return sum(v for (sample, have), v in self.samples.items() if sample == name and wanted <= set(have))

    def by_worker(self, name: str) -> dict[str, float]:
        """A per-worker gauge without other labels: worker -> value."""
        return {dict(labels)["worker"]: v for (sample, labels), v in self.samples.items() if sample == name}

    def monotonic(self) -> dict[Key, float]:
        """The samples that may only grow: counters, and histograms' buckets, counts and sums."""
        return {key: v for key, v in self.samples.items() if self.kinds[key[0]] in ("counter", "histogram")}


class Served:
    """The service with ``processes`` workers on free ports; ``stop()`` (SIGTERM) must see it exit 0."""

    def __init__(self, settings: Settings, workdir: Path, processes: int = 2, **env: str) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir()
        self.log_path = workdir / "serve.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("WALLPAPER_")}
        environment.update(settings_env(settings.model_dump()))
        environment.update({
            "WALLPAPER_SERVER__HOST": "127.0.0.1", "WALLPAPER_ADMIN__PORT": str(self.admin_port),
            "WALLPAPER_LOG__SINK": "stderr", "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(self.tmpdir), **env,
        })  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port), "--processes", str(processes)],
                cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.client = AsyncHTTPClient(force_instance=True)  # a new connection per request: the kernel spreads them

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        assert self.proc.poll() is None, "the service exited:\n" + self.log()
        return True

    def workers(self) -> list[int]:
        return _children_of(self.proc.pid)

    def metrics_directory(self) -> Path:
        (directory,) = self.tmpdir.glob("wallpaper-metrics-*")
        return directory

    def worker_of(self, pid: int) -> str:
        """The task id of worker ``pid``: the slot whose lock it holds open."""
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                name = os.readlink(fd).rsplit("/", 1)[-1]
                if name.startswith("worker-") and name.endswith(".lock"):
                    return name.removeprefix("worker-").removesuffix(".lock")
        raise AssertionError(f"worker {pid} holds no slot lock")

    async def get(self, path: str, *, admin: bool = False) -> HTTPResponse | None:
        """One request on a new connection; None when the connection fails (a worker dying under it)."""
        port = self.admin_port if admin else self.port
        try:
            return await self.client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False, request_timeout=10)
        except (HTTPClientError, OSError):
            return None

    async def scrape(self) -> Scrape | None:
        response = await self.get("/metrics", admin=True)
        if response is None or response.code != 200:
            return None
        return Scrape.parse(response.body.decode())

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                for child in self.workers():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def dead(pid: int) -> bool:
    """Exited (a zombie its parent has not reaped yet counts: it holds no file, no lock, no socket)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "zombie" in status
