"""The admin port's settings (issue 18): loopback and 9888 in the shipped file, overridden by the environment like
every setting, never the public port, and refused at start when another server holds it (as the public one is)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness import REPO_ROOT, free_port
from service.config import DEFAULT_CONFIG, ConfigError, load_settings
from service.runtime import port_taken


def test_the_shipped_admin_port_is_on_loopback() -> None:
    admin = load_settings(DEFAULT_CONFIG).admin
    assert (admin.host, admin.port) == ("127.0.0.1", 9888)


def test_the_environment_moves_the_admin_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALLPAPER_ADMIN__PORT", "9999")
    monkeypatch.setenv("WALLPAPER_ADMIN__HOST", "0.0.0.0")
    admin = load_settings(DEFAULT_CONFIG).admin
    assert (admin.host, admin.port) == ("0.0.0.0", 9999)
    monkeypatch.setenv("WALLPAPER_ADMIN__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"admin\.port.*WALLPAPER_ADMIN__PORT"):
        load_settings(DEFAULT_CONFIG)


def test_the_admin_port_is_not_the_public_one() -> None:
    with pytest.raises(ConfigError, match=r"admin\.port.*WALLPAPER_ADMIN__PORT.*differ from server\.port"):
        load_settings(DEFAULT_CONFIG, server={"port": 9100}, admin={"port": 9100})
    assert load_settings(DEFAULT_CONFIG, server={"port": 0}, admin={"port": 0}).admin.port == 0  # both free ones


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another server holds, with SO_REUSEPORT as ours would (a second bind with it would work)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_an_admin_port_another_server_holds_is_refused_before_anything_starts(held_port: int) -> None:
    settings = load_settings(DEFAULT_CONFIG, server={"port": free_port(), "processes": 2}, admin={"port": held_port})
    problem = port_taken(settings)
    assert problem is not None
    assert f"port {held_port}" in problem
    assert "admin.port" in problem
    assert "WALLPAPER_ADMIN__PORT" in problem
    env = {**os.environ, "WALLPAPER_ADMIN__PORT": str(held_port)}
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", str(free_port())],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"port {held_port}" in result.stderr
    assert "WALLPAPER_ADMIN__PORT" in result.stderr
