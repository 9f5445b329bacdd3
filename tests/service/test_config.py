"""Settings: TOML + WALLPAPER_ environment overrides; a bad value stops the start, naming the setting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import REPO_ROOT, free_port
from service.config import DEFAULT_CONFIG, ConfigError, load_settings
from service.runtime import port_taken


def test_the_shipped_file_loads() -> None:
    settings = load_settings(DEFAULT_CONFIG)
    assert settings.mongo.driver == "motor"
    assert settings.server.backlog == 4096
    assert settings.cache.list.ttl > 0


def test_env_overrides_nested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALLPAPER_MONGO__DRIVER", "pymongo")
    monkeypatch.setenv("WALLPAPER_CACHE__LIST__TTL", "5")
    monkeypatch.setenv("WALLPAPER_SERVER__PROCESSES", "0")
    settings = load_settings(DEFAULT_CONFIG)
    assert settings.mongo.driver == "pymongo"
    assert settings.cache.list.ttl == 5
    assert settings.server.processes == 0


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ('[mongo]\ndriver = "mongoose"\n', "mongo.driver"),
        ("[mysql]\npool_max = 0\n", "mysql.pool_max"),
        ('[redis]\nurl = "http://x"\n', "redis.url"),
        ("[cache.list]\nttl = -1\nstale_ttl = 0\n", "cache.list.ttl"),
        ('[server]\nloop = "trio"\n', "server.loop"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nprocesess = 2\n", "server.processes"),  # a typo is refused, not ignored
        ('[log]\nsink = "kafka"\n', "log.sink"),
        ("[mysql]\npool_min = 9\npool_max = 2\n", "mysql.pool_min"),
    ],
)
def test_bad_value_names_the_setting(tmp_path: Path, toml: str, setting: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert setting.split(".")[-1][:6] in str(info.value)
    assert setting.split(".")[0] in str(info.value)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALLPAPER_MYSQL__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"mysql\.port.*WALLPAPER_MYSQL__PORT"):
        load_settings(DEFAULT_CONFIG)


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_cli_refuses_to_start_with_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[mongo]\ndriver = "mongoose"\n')
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "mongo.driver" in result.stderr
    assert "WALLPAPER_MONGO__DRIVER" in result.stderr


def test_trusted_proxies_are_cidrs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALLPAPER_SERVER__TRUSTED_PROXIES", '["10.0.0.0/8", "::1", "192.168.1.7/24"]')
    assert load_settings(DEFAULT_CONFIG).server.trusted_proxies == ["10.0.0.0/8", "::1/128", "192.168.1.0/24"]
    monkeypatch.setenv("WALLPAPER_SERVER__TRUSTED_PROXIES", '["not-a-network"]')
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies"):
        load_settings(DEFAULT_CONFIG)
    # Not JSON at all: pydantic-settings cannot parse it (it raised its own SettingsError, a traceback and exit 1).
    monkeypatch.setenv("WALLPAPER_SERVER__TRUSTED_PROXIES", "10.0.0.0/8")
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies.*WALLPAPER_SERVER__TRUSTED_PROXIES.*not JSON"):
        load_settings(DEFAULT_CONFIG)


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        check=False, env=None if env is None else {**os.environ, **env},
    )  # fmt: skip


def test_an_environment_list_that_is_not_json_exits_2_naming_the_setting() -> None:
    result = _run("serve", env={"WALLPAPER_SERVER__TRUSTED_PROXIES": "10.0.0.0/8"})
    assert result.returncode == 2, result.stderr
    assert "server.trusted_proxies" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another server holds, with SO_REUSEPORT as ours would (so a second bind with it would succeed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_port_another_server_holds_is_refused_before_anything_starts(held_port: int) -> None:
    settings = load_settings(DEFAULT_CONFIG, server={"port": held_port, "processes": 2})
    assert settings.server.reuse_port
    assert port_taken(settings) is not None
    result = _run("serve", "--port", str(held_port))
    assert result.returncode == 2
    assert f"port {held_port}" in result.stderr
    assert "WALLPAPER_SERVER__PORT" in result.stderr
    # `dev` (make run) takes the port from the environment too, and stops before seeding.
    result = _run("dev", env={"WALLPAPER_SERVER__PORT": str(held_port)})
    assert result.returncode == 2
    assert f"port {held_port}" in result.stderr
    assert "seeded" not in result.stdout


def test_a_free_port_is_free() -> None:
    assert port_taken(load_settings(DEFAULT_CONFIG, server={"port": free_port()})) is None


def test_a_missing_database_is_named_with_how_to_start_it() -> None:
    """Before: ~90 s of retries and a driver traceback that named no store."""
    result = _run(
        "seed", "--wallpapers", "1",
        env={"WALLPAPER_MONGO__URI": f"mongodb://127.0.0.1:{free_port()}/", "WALLPAPER_MYSQL__PORT": str(free_port())},
    )  # fmt: skip
    assert result.returncode == 1
    assert "MongoDB at mongodb://127.0.0.1:" in result.stderr
    assert "MySQL at 127.0.0.1:" in result.stderr
    assert "make up" in result.stderr
    assert "Traceback" not in result.stderr
