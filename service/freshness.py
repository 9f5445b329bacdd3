"""How fresh an answer from the cache is, as its headers tell: ``Cache-Control: max-age`` (the remaining TTL)
and ``Cache-Status`` (RFC 9211), beside ``X-Cache`` (the outcome: hit, stale, miss, fail_open, bypass)."""

from __future__ import annotations

__all__ = ["cache_status", "freshness_headers", "max_age"]


def max_age(outcome: str, expires_at: float, now: float) -> int:
    """Seconds a client may reuse the answer: the remaining TTL; 0 for a stale answer or one never stored."""
    return 0 if outcome == "stale" or not expires_at else max(0, int(expires_at - now))


def cache_status(outcome: str, expires_at: float, now: float, invalidated: bool = False) -> str:
    """The RFC 9211 ``Cache-Status`` value of a cached route (the cache is named ``wallpaper``). ``ttl`` is the
    remaining freshness in seconds, negative once stale; an entry a write marked stale (``CacheEntry.invalidated``)
    has none to tell."""
    ttl = int(expires_at - now) if expires_at else 0
    if outcome == "hit":
        return f"wallpaper; hit; ttl={ttl}"
    if outcome == "stale":
        if invalidated:
            return "wallpaper; fwd=stale; detail=invalidated"
        return f"wallpaper; fwd=stale; ttl={ttl}"
    if outcome == "miss":
        return f"wallpaper; fwd=miss; stored; ttl={ttl}"
    if outcome == "fail_open":
        return "wallpaper; fwd=miss; detail=store-unavailable"
    return "wallpaper; fwd=bypass"


_HEADERS: dict[tuple[str, int, bool, bool], tuple[str, str]] = {}


def freshness_headers(outcome: str, expires_at: float, now: float, invalidated: bool) -> tuple[str, str]:
    """The ``Cache-Control`` and ``Cache-Status`` values of an answer, memoized by what they depend on (outcome,
    whole seconds left, stored or not, invalidated): every hit of a second shares them, instead of two f-strings
    and two calls per request. Bounded."""
    ttl = int(expires_at - now) if expires_at else 0
    memo_key = (outcome, ttl, not expires_at, invalidated)
    found = _HEADERS.get(memo_key)
    if found is None:
        if len(_HEADERS) >= 4096:
            _HEADERS.clear()
        found = _HEADERS[memo_key] = (
            f"public, max-age={max_age(outcome, expires_at, now)}",
            cache_status(outcome, expires_at, now, invalidated),
        )
    return found
