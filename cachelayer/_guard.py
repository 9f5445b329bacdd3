"""The guard: a store call's time budget, its circuit breaker and the classification of its errors, as one object
a backend holds (redis-py's ``Retry`` is the model: a strategy the client hands each call to).

``await guard.call(target, "GET", lambda: client.get(key))`` runs the call within the budget, unless the target's
breaker is open. An error the backend classified as an outage (``outage_errors``; a :class:`StoreUnavailable` of
the inner code, and the budget's timeout, always are) becomes :class:`StoreUnavailable`, is counted, logged once
per transition with the store, the operation and the store's own message, and held against the breaker; any other
exception (a mistake: a closed cache, a bad argument) passes through untouched. A call cut off because this process
was late (a starved event loop) or still queued for a connection of its own pool fails open without being held
against the store (``_budget.py``).

Targets: a store may be several (a Redis Cluster: one breaker per master, so a failing shard fails open only its
own keys). :meth:`Guard.target` names one; each has its own breaker, made from the guard's as a template.

Any backend can wear a guard: :class:`RedisBackend` holds one; :class:`GuardedBackend` puts one around any other
backend (``GuardedBackend(MemoryBackend(), Guard(timeout=0.05))``), so a third-party store gets the same fail-open
protection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final, TypeVar

from ._backend import Backend, StoreUnavailable, Subscription
from ._breaker import BreakerState, CircuitBreaker, describe_error
from ._budget import LateLoopTimeout, QueueTimeout, within_budget
from ._errors import CacheError, ConfigurationError

__all__ = ["Guard", "GuardedBackend", "StateListener", "Target"]

log = logging.getLogger("cachelayer")

T = TypeVar("T")

StateListener = Callable[[str, BreakerState, str | None], None]
"""Told of a breaker's transition: (the store it guards, the new state, the reason)."""

# A store's first failure is logged at WARNING unless its last WARNING is more recent than this: a store that
# errs on one call in a thousand (a WRONGTYPE key) logs two lines per period, not two per error.
_QUIET_PERIOD: Final = 30.0


class Target:
    """What one call is held against: a store (a cluster node), its breaker, and its health for the log."""

    __slots__ = ("breaker", "failed_calls", "label", "warned", "warned_at")

    def __init__(self, label: str, breaker: CircuitBreaker) -> None:
        self.label = label  # "Redis 127.0.0.1:6379", "Redis Cluster node 127.0.0.1:7001"
        self.breaker = breaker
        self.failed_calls = 0  # since the last success; 0: healthy
        self.warned = False  # this failure streak was logged at WARNING, so its end is too
        self.warned_at = float("-inf")

    def failed(self, operation: str, reason: str) -> None:
        self.failed_calls += 1
        if self.failed_calls > 1:
            log.debug("cachelayer: %s %s failed, failing open: %s", self.label, operation, reason)
            return
        now = time.monotonic()
        self.warned = now - self.warned_at > _QUIET_PERIOD
        if self.warned:
            self.warned_at = now
        log.log(
            logging.WARNING if self.warned else logging.DEBUG,
            "cachelayer: %s %s failed, failing open: %s",
            self.label,
            operation,
            reason,
        )

    def answered(self) -> None:
        if self.failed_calls:
            log.log(
                logging.WARNING if self.warned else logging.DEBUG,
                "cachelayer: %s answering again after %d failed calls",
                self.label,
                self.failed_calls,
            )
            self.failed_calls = 0
            self.warned = False


def outage_reason(exc: BaseException, budget: float) -> str:
    """The store's own message, for logs and :class:`StoreUnavailable`; a bare timeout says how long it waited."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"TimeoutError: no answer within {budget:g} s"
    return describe_error(exc)


class Guard:
    """The budget, the breakers and the error classification of one store (see the module docstring).

    ``timeout``: the budget of a call, in seconds. ``breaker``: the main target's breaker and the template of the
    others'. ``outage_errors``: the inner code's exceptions that mean "the store is not usable now" (redis-py's
    connection and response errors for Redis). ``on_failure``: called after an outage or a refused call (a
    cluster asks for a fresh topology then); ``on_target_failure``: the same, told which target (a cluster watches
    that master for a failover). ``store``: how the main target is named in log lines."""

    def __init__(
        self,
        *,
        timeout: float = 0.1,
        breaker: CircuitBreaker | None = None,
        outage_errors: tuple[type[BaseException], ...] = (),
        on_failure: Callable[[], None] | None = None,
        on_target_failure: Callable[[Target], None] | None = None,
        store: str = "store",
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        self.breaker = breaker if breaker is not None else CircuitBreaker(name="store")
        self.outage_errors: tuple[type[BaseException], ...] = (StoreUnavailable, TimeoutError, *outage_errors)
        self.on_failure = on_failure
        self.on_target_failure = on_target_failure
        self.store = store
        self.listeners: list[StateListener] = []
        if self.breaker.on_change is not None:
            raise ConfigurationError(
                "this CircuitBreaker guards another store already: a breaker belongs to one store (its failures "
                "would open the other's); give each store its own, e.g. one StoreOptions(breaker=...) per store"
            )
        # Claimed now: the main target's transitions are told under the store's name at that moment.
        self.breaker.on_change = lambda state, reason: self._tell(self.store, state, reason)
        self._main: Target | None = None
        self._targets: dict[str, Target] = {}
        self.store_errors = 0
        self.late_timeouts = 0
        self.queue_timeouts = 0
        self.breaker_rejections = 0

    def target(self, name: str | None = None) -> Target:
        """The main target (``name`` None), or the one named ``name`` (a cluster node), made on first use."""
        if name is None:
            main = self._main
            if main is None:
                if self.breaker.store is None:
                    self.breaker.store = self.store
                main = self._main = Target(self.store, self.breaker)
            return main
        target = self._targets.get(name)
        if target is None:
            template = self.breaker
            breaker = CircuitBreaker(
                template.failure_threshold, template.cooldown, name=template.name, store=name, clock=template.clock
            )
            breaker.on_change = lambda state, reason: self._tell(name, state, reason)
            target = self._targets[name] = Target(name, breaker)
        return target

    @property
    def has_node_targets(self) -> bool:
        return bool(self._targets)

    def retire(self, serving: Collection[str], reason: str) -> list[str]:
        """Drop the targets not named in ``serving`` (cluster nodes that serve no slot any more: a master that
        failed over, a node emptied by a reshard). No call goes to such a node, so its breaker would never see the
        probe that closes it, and an open or half-open breaker would be reported (and alerted on) for good. A
        breaker that was not closed is told closed, with ``reason``. The node gets a new target, closed, if it
        serves slots again. Returns the names retired."""
        retired = [name for name in self._targets if name not in serving]
        for name in retired:
            target = self._targets.pop(name)
            if target.breaker.state != "closed":
                self._tell(name, "closed", reason)
        return retired

    def _tell(self, store: str, state: BreakerState, reason: str | None) -> None:
        for listener in list(self.listeners):
            listener(store, state, reason)

    async def call(
        self, target: Target, operation: str, make: Callable[[], Awaitable[T]], budget: float | None = None
    ) -> T:
        """``await make()`` within the budget, held against ``target``; raises :class:`StoreUnavailable` for an
        outage (see the module docstring)."""
        breaker = target.breaker
        permit = breaker.permit()
        if permit is None:
            self.breaker_rejections += 1
            self._suspect(target)
            raise StoreUnavailable(f"{target.label}: circuit breaker is open")
        budget = self.timeout if budget is None else budget
        began = breaker.clock()
        try:
            result = await within_budget(budget, make)
        except (LateLoopTimeout, QueueTimeout) as exc:
            # The loop was late, or the call never left this process's pool: this call fails open, the breaker
            # learns nothing (the calls on the wire tell it how the store is).
            if isinstance(exc, LateLoopTimeout):
                self.late_timeouts += 1
            else:
                self.queue_timeouts += 1
            if permit == "probe":
                breaker.record_abandoned()
            raise StoreUnavailable(f"{target.label} {operation}: {exc}") from exc
        except StoreUnavailable as exc:  # the inner code's own word for an outage
            raise self._failed(target, operation, exc, budget) from exc
        except CacheError:
            # A mistake (a closed cache, a value that cannot be stored): not the store's fault, whatever else the
            # exception is (CacheClosedError is a RuntimeError, which redis-py raises for a dead connection).
            if permit == "probe":
                breaker.record_abandoned()
            raise
        except self.outage_errors as exc:
            # A timeout: when the call began tells the breaker which other timeouts it ran beside.
            timed_out = began if isinstance(exc, TimeoutError) else None
            raise self._failed(target, operation, exc, budget, timed_out) from exc
        except BaseException:
            if permit == "probe":  # only the probe's fate decides the half-open state
                breaker.record_abandoned()
            raise
        breaker.record_success()
        target.answered()
        return result

    def _failed(
        self, target: Target, operation: str, exc: BaseException, budget: float, began: float | None = None
    ) -> StoreUnavailable:
        reason = outage_reason(exc, budget)
        self._suspect(target)
        self.store_errors += 1
        target.failed(operation, reason)
        target.breaker.record_failure(reason, began=began)
        return StoreUnavailable(f"{target.label} {operation} failed: {reason}")

    def _suspect(self, target: Target) -> None:
        if self.on_failure is not None:
            self.on_failure()
        if self.on_target_failure is not None:
            self.on_target_failure(target)

    def stats(self) -> dict[str, Any]:
        """The guard's counters and the worst state of its breakers."""
        breakers = [self.breaker, *(target.breaker for target in self._targets.values())]
        states = {b.state for b in breakers}
        worst = "open" if "open" in states else "half_open" if "half_open" in states else "closed"
        stats: dict[str, Any] = {
            "store_errors": self.store_errors,
            "store_late_timeouts": self.late_timeouts,
            "store_queue_timeouts": self.queue_timeouts,
            "breaker_rejections": self.breaker_rejections,
            "breaker_state": worst,
            "breaker_opened": sum(b.opened_count for b in breakers),
        }
        if self._targets:
            stats["breakers_open"] = sum(1 for b in breakers if b.state != "closed")
        return stats


class GuardedBackend:
    """Any :class:`Backend` wearing a :class:`Guard`: every call within the budget and behind the breaker."""

    def __init__(self, inner: Backend, guard: Guard) -> None:
        self.inner = inner
        self.guard = guard
        self.stores_objects = inner.stores_objects

    def _call(self, operation: str, make: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return self.guard.call(self.guard.target(), operation, make)

    async def connect(self) -> None:
        await self.inner.connect()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def get(self, key: str) -> bytes | None:
        return await self._call("get", lambda: self.inner.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._call("get_many", lambda: self.inner.get_many(keys))

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        await self._call("set", lambda: self.inner.set(key, value, ttl_ms))

    async def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        await self._call("set_many", lambda: self.inner.set_many(items))

    async def delete(self, *keys: str) -> int:
        return await self._call("delete", lambda: self.inner.delete(*keys))

    async def mark_stale(self, keys: Sequence[str], offset: int, field: bytes) -> int:
        return await self._call("mark_stale", lambda: self.inner.mark_stale(keys, offset, field))

    async def clear(self, prefix: str) -> int:
        return await self._call("clear", lambda: self.inner.clear(prefix))

    async def begin_fill(self, key: str, token: str, ttl_ms: int, *, exclusive: bool = True) -> bool:
        return await self._call(
            "begin_fill", lambda: self.inner.begin_fill(key, token, ttl_ms, exclusive=exclusive)
        )

    async def renew_fill(self, key: str, token: str, ttl_ms: int) -> bool:
        return await self._call("renew_fill", lambda: self.inner.renew_fill(key, token, ttl_ms))

    async def end_fill(self, key: str, token: str) -> None:
        await self._call("end_fill", lambda: self.inner.end_fill(key, token))

    async def fill(
        self,
        key: str,
        token: str,
        value: bytes,
        ttl_ms: int,
        tag_keys: Sequence[str] = (),
        stamps: Sequence[bytes] = (),
    ) -> bool:
        return await self._call("fill", lambda: self.inner.fill(key, token, value, ttl_ms, tag_keys, stamps))

    async def poll(self, key: str) -> tuple[bytes | None, bool]:
        return await self._call("poll", lambda: self.inner.poll(key))

    async def tag_stamps(self, tag_keys: Sequence[str], ttl_ms: int) -> list[bytes]:
        return await self._call("tag_stamps", lambda: self.inner.tag_stamps(tag_keys, ttl_ms))

    async def invalidate_tags(self, tag_keys: Sequence[str], *, mark_stale: bool = False) -> int:
        return await self._call("invalidate_tags", lambda: self.inner.invalidate_tags(tag_keys, mark_stale=mark_stale))

    async def publish(self, channel: str, data: bytes, *, sharded: bool = False) -> None:
        await self._call("publish", lambda: self.inner.publish(channel, data, sharded=sharded))

    def subscription(self, *, sharded: bool = False) -> Subscription:
        return self.inner.subscription(sharded=sharded)

    async def ping(self) -> None:
        await self._call("ping", self.inner.ping)

    def stats(self) -> dict[str, Any]:
        return {**self.inner.stats(), **self.guard.stats()}
