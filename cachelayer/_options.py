"""The options every store built from a URL takes: pool limits and timeouts, in one object."""

from __future__ import annotations

from dataclasses import dataclass

from ._breaker import CircuitBreaker
from ._errors import ConfigurationError

__all__ = ["StoreOptions"]


@dataclass(frozen=True)
class StoreOptions:
    """How a store built from a URL is bounded.

    ``max_connections``: connections of one pool (per cluster node: commands in flight); more callers wait up to
    ``pool_timeout`` seconds for a free one. ``timeout``: the budget of every call. ``socket_timeout``: None on
    purpose (the budget bounds each call; on Python 3.11 a socket timeout can stretch it, docs/operations.md).
    ``connect_timeout``: the bound of ``connect()`` and of a cluster's first topology discovery, which a first
    call waits for outside its own budget. ``breaker``: the circuit breaker (a new one per store when None).
    """

    max_connections: int = 64
    pool_timeout: float = 1.0
    socket_timeout: float | None = None
    timeout: float = 0.1
    connect_timeout: float = 5.0
    breaker: CircuitBreaker | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            raise ConfigurationError(f"max_connections must be an int, got {self.max_connections!r}")
        if self.max_connections < 1:
            raise ConfigurationError(f"max_connections must be at least 1, got {self.max_connections}")
        for name in ("pool_timeout", "timeout", "connect_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
        socket_timeout = self.socket_timeout
        if socket_timeout is not None and (
            not isinstance(socket_timeout, int | float) or isinstance(socket_timeout, bool) or not socket_timeout > 0
        ):
            raise ConfigurationError(f"socket_timeout must be None or a positive number, got {socket_timeout!r}")
