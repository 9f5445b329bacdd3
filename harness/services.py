"""The pytest-facing part of the harness: where the machine's services are, and what a test does without them.

A test that needs a service calls :func:`require_service`: when the service does not answer, the test is *skipped*
on a developer's machine but *fails* in CI (``CI=true``), so a CI run can never go green by silently skipping the
tests it exists to run. :func:`skip_or_fail` is that rule; ``tests/conftest.py`` applies it to a
:class:`~harness.servers.ServerUnavailable` raised anywhere in a test or its fixtures.

This module imports pytest; the rest of the harness does not (benchmarks use it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest

from harness.cluster import ClusterUnavailable, RedisClusterServer, cluster_supported
from harness.servers import port_answers

__all__ = ["MySQLSettings", "cluster_or_skip", "in_ci", "require_service", "skip_or_fail"]


def in_ci() -> bool:
    """True when running in CI (the ``CI`` environment variable is ``true`` or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def skip_or_fail(reason: str) -> NoReturn:
    """``pytest.fail`` in CI, ``pytest.skip`` elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service fails the run instead of skipping)")
    pytest.skip(reason)


def require_service(name: str, host: str, port: int) -> None:
    """Fail (in CI) or skip (elsewhere) the calling test unless host:port accepts connections.

    Call it from a test or fixture before using a service: ``require_service("redis", "127.0.0.1", 6379)``.
    ``make up`` / ``scripts/devstack up`` starts the usual services.
    """
    if not port_answers(host, port):
        skip_or_fail(f"{name} is not answering on {host}:{port} (start it with `make up`)")


def cluster_or_skip(**options: Any) -> RedisClusterServer:
    """Start a cluster for a pytest fixture: skip (fail in CI) when this machine cannot run one."""
    reason = cluster_supported()
    if reason is not None:
        skip_or_fail(reason)
    try:
        return RedisClusterServer(**options).start()
    except ClusterUnavailable as exc:
        skip_or_fail(str(exc))


@dataclass(frozen=True)
class MySQLSettings:
    """Connection settings for the test MariaDB (the ``mysql_settings`` fixture)."""

    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def dsn(self) -> str:
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def aiomysql_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiomysql.connect`` / ``aiomysql.create_pool``."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "db": self.database, "autocommit": True}
