"""How a module lists the private names of another library it relies on: each pinned by a test against the
installed version (tests/test_redis_privates.py for redis-py, tests/test_otel_direct.py for the OpenTelemetry SDK),
so an upgrade that moves one fails there, naming it and what it is used for."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Internal"]


class Internal(NamedTuple):
    """A name of another library this package relies on: ``owner`` is ``"module:Class"``, ``use`` says where and
    why."""

    owner: str
    name: str
    use: str
