"""The harness proxy (:mod:`harness.proxy`) in a child process, for the chaos benchmark and its tests.

:class:`ProxyProcess` runs one :class:`~harness.proxy.FaultProxy` in a child process (``python -m harness
fault-proxy ...``, uvloop when installed) so that proxying Redis traffic does not compete with the benchmark's own
event loop; it is switched by one-line commands on the child's stdin, each acknowledged by one line on its stdout:

* ``mode M`` -- :meth:`~harness.proxy.LatencyProxy.set_mode` (``pass``, ``refuse``, ``blackhole``,
  ``drop_replies``);
* ``latency S`` -- both one-way latencies, in seconds (0 to 10);
* ``close_all`` -- abort every open connection;
* ``stats`` -- nothing, only the answer;
* ``quit`` -- stop (no answer; the process exits).

The answer is ``ok MODE LATENCY open=N accepted=N dropped_bytes=N`` or ``error WHY``.

The stores behind the proxies are :mod:`harness.servers` processes; a :class:`ProxyProcess` is stopped by
:func:`harness.servers.stop_all` like them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.proxy import MODES, FaultProxy, Mode
from harness.servers import REPO_ROOT, free_port, python_env, register, unregister

__all__ = ["MODES", "FaultProxy", "Mode", "ProxyProcess", "main"]


# -- the child side -----------------------------------------------------------------------------------------------


async def answer(proxy: FaultProxy, line: str) -> str:
    """Carry out one command line (see the module docstring) and return the answer line."""
    verb, _, arg = line.partition(" ")
    try:
        if verb == "mode":
            await proxy.set_mode(arg)  # type: ignore[arg-type]  # checked by set_mode
        elif verb == "latency":
            proxy.latency = max(0.0, min(float(arg), 10.0))
        elif verb == "close_all":
            await proxy.close_all()
        elif verb != "stats":
            raise ValueError(f"unknown command {verb!r}")
    except ValueError as exc:
        return f"error {exc}"
    return (
        f"ok {proxy.mode} {proxy.latency} open={proxy.open_connections} accepted={proxy.accepted} "
        f"dropped_bytes={proxy.bytes_dropped}"
    )


async def _serve_commands(proxy: FaultProxy) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(f"ready {proxy.port}", flush=True)
    while (line := (await reader.readline()).decode().strip()) and line != "quit":
        print(await answer(proxy, line), flush=True)
    await proxy.aclose()


async def _child_main(target_port: int, port: int, max_connections: int) -> None:
    proxy = await FaultProxy(target_port, port=port, max_connections=max_connections).start()
    await _serve_commands(proxy)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness fault-proxy --target-port N [--port P] [--max-connections M]``: one proxy, commands on
    stdin (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m harness fault-proxy")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-connections", type=int, default=1024)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (quit, then SIGKILL by PID)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(_child_main(args.target_port, args.port, args.max_connections))
    return 0


# -- the parent side ----------------------------------------------------------------------------------------------


class ProxyProcess:
    """A :class:`~harness.proxy.FaultProxy` in a child process, switched through its stdin; stopped by PID.

    Its methods block (each waits for the child's answer): from async code, call them in a thread
    (``asyncio.to_thread``).
    """

    def __init__(self, name: str, target_port: int, *, log: Path, max_connections: int = 1024) -> None:
        self.name = name
        self.target_port = target_port
        self.port = free_port()
        self.mode: Mode = "pass"
        self.latency = 0.0
        self._log = log.open("ab")
        argv = [sys.executable, "-m", "harness", "fault-proxy", "--target-port", str(target_port)]
        argv += ["--port", str(self.port), "--max-connections", str(max_connections)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
            env=python_env(),
            text=True,
            start_new_session=True,
        )
        register(self)
        line = self._read_line(15.0)
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"proxy {name} did not start: {line!r}")

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return ""
        return self.proc.stdout.readline().strip()

    def command(self, line: str, timeout: float = 5.0) -> str:
        """Send one command line; return the child's ``ok ...`` answer, or raise RuntimeError with it."""
        if self.proc.poll() is not None or self.proc.stdin is None:
            raise RuntimeError(f"proxy {self.name} is not running")
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self._read_line(timeout)
        if not reply.startswith("ok"):
            raise RuntimeError(f"proxy {self.name}: {line!r} -> {reply!r}")
        return reply

    def set_mode(self, mode: Mode) -> None:
        self.command(f"mode {mode}")
        self.mode = mode

    def set_latency(self, seconds: float) -> None:
        self.command(f"latency {seconds}")
        self.latency = seconds

    def close_all(self) -> None:
        self.command("close_all")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()
        unregister(self)
