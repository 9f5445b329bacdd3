"""Hooks: what the fetch pipeline tells subscribers at each step of a fetch, for tracing and metrics.

A subscriber is a :class:`CacheHooks`. For each logical fetch (one call of a cached function, one
``Cache.fetch``/``get_or_set``) the pipeline asks every subscriber for a :class:`FetchHooks` of that fetch
(:meth:`CacheHooks.fetch_started`), then calls its methods as the fetch goes, always ending with exactly one
:meth:`FetchHooks.ended`. A subscriber that is not interested in a fetch returns None from ``fetch_started``.

**Free when nobody listens.** With no subscriber the pipeline holds ``None`` instead of hooks and checks it with one
``is not None`` per step: no call, no allocation. The methods here are no-ops: subclass and override what you need.

**Where they run.** ``fetch_started`` and ``ended`` run in the caller's task, so a subscriber may make something
current there (an OpenTelemetry span) and restore it in ``ended``. ``load_started`` and ``load_ended`` run in the
task that runs the loader, which inherits the context of the caller that started the load; its other callers are
told :meth:`FetchHooks.joined` with the leader's hooks (as the same subscriber made them), to link to its load.
``ended`` is always the last event of a fetch: a load that outlives the caller that started it (cancelled while
others wait for it) goes on silently.
Hooks must not raise and must not block: they run on the hit path. An exception from a hook propagates (it is a
bug in the hook, and a cache that hid it would hide it forever).

Events, in the order they can happen::

    fetch_started -> [joined] -> [lease_waited] -> [load_started -> load_ended] -> [stored | fill_revoked] -> ended
                      any time: failed_open (a store call failed; the fetch goes on without the store)
"""

from __future__ import annotations

import threading
from typing import Final, Literal

__all__ = [
    "CacheHooks",
    "FetchHooks",
    "FetchOutcome",
    "Tier",
    "add_global_hooks",
    "remove_global_hooks",
]

Tier = Literal["local", "store"]
"""Where a hit came from: the process's local tier, or the shared store."""

FetchOutcome = Literal["hit", "stale", "miss", "joined", "fail_open", "bypass", "error", "cancelled"]
"""How a fetch ended, from its caller's point of view:

- ``hit``: a fresh value (``tier`` says where);
- ``stale``: a value past its TTL (while a refresh runs, because the loader failed, or a lease wait ran out);
- ``miss``: this caller loaded the value (or waited for another process's load) and it was stored;
- ``joined``: this caller waited for a load another caller of this process ran;
- ``fail_open``: loaded without the store (it was unavailable), not stored;
- ``bypass``: the cache is disabled;
- ``error``: the fetch raised: the loader did and no stale copy existed, or a mistake (a ``CacheError``), or a lease
  wait ran out with ``on_lease_timeout="raise"`` (the caller gets the exception);
- ``cancelled``: the caller was cancelled (a client that went away): not an error of the cache nor of the loader.
"""


class FetchHooks:
    """One fetch, as one subscriber sees it. Every method is a no-op: override what you need."""

    __slots__ = ()

    def joined(self, leader: FetchHooks | None) -> None:
        """This caller waits for the load another caller of this process started (single flight). ``leader`` is
        that caller's hooks from the same subscriber (None when the subscriber made none for it). Told when the
        caller joins; a caller that a shared read handed to the load (it found nothing) is told when it wakes, just
        before ``ended``."""

    def lease_waited(self, seconds: float) -> None:
        """This caller waited ``seconds`` for another process's load (the lease was held elsewhere)."""

    def load_started(self) -> None:
        """The loader is about to run for this fetch (in the loading task)."""

    def load_ended(self, seconds: float, error: BaseException | None) -> None:
        """The loader returned (``error`` None) or raised, after ``seconds``."""

    def stored(self, size: int) -> None:
        """The loaded value was written to the store: ``size`` bytes of frame."""

    def fill_revoked(self) -> None:
        """The loaded value was not stored: an invalidation revoked this load's ticket while it ran (the caller
        still gets the value; later callers load again)."""

    def failed_open(self, operation: str, reason: str) -> None:
        """A store call of this fetch (``operation``: ``"read"``, ``"lease"``, ``"write"``...) failed; the fetch
        goes on without the store. ``reason`` is the store's own message (with its address)."""

    def ended(self, outcome: FetchOutcome, tier: Tier | None, error: BaseException | None) -> None:
        """The fetch is over (called exactly once). ``tier`` is set for a hit; ``error`` for ``"error"``."""


class CacheHooks:
    """A subscriber to the fetches of the caches it is added to (:meth:`cachelayer.Cache.add_hooks`, or every
    cache: :func:`add_global_hooks`). Every method is a no-op: override what you need."""

    __slots__ = ()

    def fetch_started(self, function: str, key: str) -> FetchHooks | None:
        """A fetch begins: ``function`` is the cached function's qualified name (or the name the caller gave
        ``Cache.fetch``), ``key`` the store key. Return the hooks for this fetch, or None to ignore it. Keys can
        hold user data: keep them out of metric attributes."""
        return None

    def inconsistency(self, function: str, key: str, detail: str) -> None:
        """The consistency monitor (:class:`cachelayer.ConsistencyMonitor`) found the store answering a value the
        loader of ``function`` no longer answers, for longer than its confirmation delay."""

    def store_state_changed(self, store: str, state: str, reason: str | None) -> None:
        """A circuit breaker of the store changed state: ``"open"`` (calls fail open without trying),
        ``"half_open"``, ``"closed"`` (the store answers again). ``store`` names it (host:port or node)."""


class _GlobalHooks:
    """Subscribers of every cache. ``generation`` changes with every change, so a cache rebuilds its tuple of
    subscribers only when it must (one integer comparison per fetch)."""

    def __init__(self) -> None:
        self.subscribers: tuple[CacheHooks, ...] = ()
        self.generation = 0
        self._lock = threading.Lock()

    def add(self, hooks: CacheHooks) -> None:
        with self._lock:
            if hooks not in self.subscribers:
                self.subscribers = (*self.subscribers, hooks)
                self.generation += 1

    def remove(self, hooks: CacheHooks) -> None:
        with self._lock:
            if hooks in self.subscribers:
                self.subscribers = tuple(h for h in self.subscribers if h is not hooks)
                self.generation += 1


GLOBAL: Final = _GlobalHooks()


def add_global_hooks(hooks: CacheHooks) -> None:
    """Subscribe ``hooks`` to every cache of this process, existing and future."""
    GLOBAL.add(hooks)


def remove_global_hooks(hooks: CacheHooks) -> None:
    GLOBAL.remove(hooks)


class FanOut(FetchHooks):
    """The hooks of several subscribers for one fetch, called in subscription order."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[FetchHooks | None, ...]) -> None:
        self.parts = parts

    def joined(self, leader: FetchHooks | None) -> None:
        leaders = leader.parts if isinstance(leader, FanOut) else (None,) * len(self.parts)
        for part, lead in zip(self.parts, leaders, strict=False):
            if part is not None:
                part.joined(lead)

    def lease_waited(self, seconds: float) -> None:
        for part in self.parts:
            if part is not None:
                part.lease_waited(seconds)

    def load_started(self) -> None:
        for part in self.parts:
            if part is not None:
                part.load_started()

    def load_ended(self, seconds: float, error: BaseException | None) -> None:
        for part in self.parts:
            if part is not None:
                part.load_ended(seconds, error)

    def stored(self, size: int) -> None:
        for part in self.parts:
            if part is not None:
                part.stored(size)

    def fill_revoked(self) -> None:
        for part in self.parts:
            if part is not None:
                part.fill_revoked()

    def failed_open(self, operation: str, reason: str) -> None:
        for part in self.parts:
            if part is not None:
                part.failed_open(operation, reason)

    def ended(self, outcome: FetchOutcome, tier: Tier | None, error: BaseException | None) -> None:
        for part in self.parts:
            if part is not None:
                part.ended(outcome, tier, error)


class UntilEnded(FetchHooks):
    """A fetch's hooks as its load carries them: silent once the fetch has ended (:meth:`close`)."""

    __slots__ = ("inner",)

    def __init__(self, inner: FetchHooks) -> None:
        self.inner: FetchHooks | None = inner

    def close(self) -> None:
        self.inner = None

    def joined(self, leader: FetchHooks | None) -> None:
        if self.inner is not None:
            self.inner.joined(leader)

    def lease_waited(self, seconds: float) -> None:
        if self.inner is not None:
            self.inner.lease_waited(seconds)

    def load_started(self) -> None:
        if self.inner is not None:
            self.inner.load_started()

    def load_ended(self, seconds: float, error: BaseException | None) -> None:
        if self.inner is not None:
            self.inner.load_ended(seconds, error)

    def stored(self, size: int) -> None:
        if self.inner is not None:
            self.inner.stored(size)

    def fill_revoked(self) -> None:
        if self.inner is not None:
            self.inner.fill_revoked()

    def failed_open(self, operation: str, reason: str) -> None:
        if self.inner is not None:
            self.inner.failed_open(operation, reason)


def start_fetch(subscribers: tuple[CacheHooks, ...], function: str, key: str) -> FetchHooks | None:
    """The hooks of one fetch over ``subscribers`` (None when nobody is interested)."""
    if len(subscribers) == 1:
        return subscribers[0].fetch_started(function, key)
    parts = tuple(s.fetch_started(function, key) for s in subscribers)
    if all(part is None for part in parts):
        return None
    return FanOut(parts)
