"""Small helpers the benchmarks share: timing (medians of repeats), tables, and writing results.

Timing follows :mod:`timeit`'s rules: the garbage collector is off while timing, each repeat runs the function
``number`` times in a loop (``number`` calibrated so one repeat lasts about ``min_time`` seconds), and the result
is the median of the per-call times across repeats, which is less sensitive to a noisy neighbour than the mean.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_REDIS_URL",
    "RESULTS_DIR",
    "Comparison",
    "Timing",
    "compare",
    "cpu_hog",
    "environment",
    "format_table",
    "markdown_table",
    "package_versions",
    "time_call",
    "write_json",
    "write_text",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The Redis the library benchmarks use (database 14: tests use 15, the HTTP benchmark 13, development 0).
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-call times, in microseconds, over ``repeats`` repeats of ``number`` calls each."""

    median_us: float
    min_us: float
    max_us: float
    repeats: int
    number: int

    def __str__(self) -> str:
        return f"{self.median_us:.2f} us (min {self.min_us:.2f}, {self.repeats}x{self.number})"


def _run(fn: Callable[[], object], number: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return time.perf_counter_ns() - start


def time_call(
    fn: Callable[[], object],
    *,
    repeats: int = 7,
    min_time: float = 0.01,
    number: int | None = None,
    warmup: int = 1,
) -> Timing:
    """Time ``fn()``; see the module docstring for the method. ``number=None`` calibrates it."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup):
            fn()
        if number is None:
            number = 1
            while True:
                elapsed = _run(fn, number)
                if elapsed >= min_time * 1e9 or number >= 1_000_000:
                    break
                # Aim straight for min_time (at most x10 per step, in case the first runs were unusually fast).
                number = max(number + 1, min(number * 10, int(number * min_time * 1e9 / max(elapsed, 1) * 1.2)))
        per_call = [_run(fn, number) / number / 1000 for _ in range(repeats)]
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(statistics.median(per_call), min(per_call), max(per_call), repeats, number)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two functions timed in alternating rounds; ``ratio`` is the median of the per-round ratios a / b."""

    a: Timing
    b: Timing
    ratio: float


def compare(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    *,
    repeats: int = 7,
    min_time: float = 0.01,
) -> Comparison:
    """Time ``fn_a`` against ``fn_b`` in alternating rounds (a, b, a, b, ...).

    On a shared machine the load changes over seconds; a ratio taken round by round sees both functions under
    the same load, so it is steadier than the ratio of two medians measured at different moments.
    """
    number_a = time_call(fn_a, repeats=1, min_time=min_time).number
    number_b = time_call(fn_b, repeats=1, min_time=min_time).number
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        times_a: list[float] = []
        times_b: list[float] = []
        for _ in range(repeats):
            times_a.append(_run(fn_a, number_a) / number_a / 1000)
            times_b.append(_run(fn_b, number_b) / number_b / 1000)
    finally:
        if gc_was_enabled:
            gc.enable()
    ratios = [a / b for a, b in zip(times_a, times_b, strict=True)]
    return Comparison(
        Timing(statistics.median(times_a), min(times_a), max(times_a), repeats, number_a),
        Timing(statistics.median(times_b), min(times_b), max(times_b), repeats, number_b),
        statistics.median(ratios),
    )


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _is_numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table for the terminal; numbers right-aligned. floats: 3 decimals below 10, else 1."""
    raw = [list(row) for row in rows]
    cells = [[_cell(v) for v in row] for row in raw]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [any(_is_numeric(r[i]) for r in raw) for i in range(len(headers))]
    lines = ["  ".join(h.rjust(w) if n else h.ljust(w) for h, w, n in zip(headers, widths, numeric, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; numeric columns right-aligned."""
    row_list = [list(r) for r in rows]
    numeric = [any(_is_numeric(r[i]) for r in row_list) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in row_list]
    return "\n".join(lines)


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out)."""
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def environment(packages: Iterable[str] = ()) -> dict[str, Any]:
    """Where a result was measured: Python, platform, CPU count and the given packages' versions."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "packages": package_versions(packages),
    }


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ending in one newline), creating parent directories."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    return target


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (non-ASCII kept), creating parent directories."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False))


@contextlib.contextmanager
def cpu_hog(workers: int) -> Iterator[None]:
    """``stress-ng --cpu N`` beside a benchmark (nothing for N <= 0), stopped by its PID (its process group: it
    forks its workers)."""
    if workers <= 0:
        yield
        return
    if shutil.which("stress-ng") is None:
        raise SystemExit("stress-ng is not installed (apt-get install -y stress-ng)")
    hog = subprocess.Popen(
        ["stress-ng", "--cpu", str(workers), "--timeout", "3600"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # let the scheduler feel it before anything is measured
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hog.pid, signal.SIGTERM)
        hog.wait(10)
