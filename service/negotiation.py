"""Which bytes an answer from the cache goes out as, and the ETag that names them.

A stored entry has up to three representations: ``dcz`` (its zstd frame compressed with the dictionary the client
says it holds: ``representations.py``), ``zstd`` (its frame as stored, when that needs no dictionary) and the
JSON body, which :class:`GzipWhenAccepted` gzips for a client that accepts gzip (bodies over 1 KB). Each has its
own ETag: BLAKE2b-96 of the body, memoized per stored value, with the coding appended. ``Accept-Encoding`` is read
with its q-values (``gzip;q=0`` is a refusal) for every coding alike.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Protocol

import tornado.web
from tornado import httputil

from .representations import ServedDictionary, available_dictionary, dcz_body

__all__ = [
    "ETAGS",
    "Entry",
    "GzipWhenAccepted",
    "accepts",
    "accepts_cached",
    "header",
    "representation",
    "weak_etag",
]


class Entry(Protocol):
    """What an answer from the cache needs of a :class:`cachelayer.CacheEntry`."""

    @property
    def outcome(self) -> Any: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def invalidated(self) -> bool: ...
    def body(self) -> bytes: ...
    def zstd_frame(self) -> bytes | None: ...
    def dictionary_frame(self) -> tuple[bytes, bytes] | None: ...


def header(headers: httputil.HTTPHeaders, name: str) -> str | None:
    """``headers.get(name)``, without the KeyError that ``HTTPHeaders.get`` raises and catches inside for an absent
    name: most requests carry none of the headers a cached answer looks for (0.2 us against 0.6 us each)."""
    return headers[name] if name in headers else None  # noqa: SIM401 (get() is what this avoids)


def accepts(value: str, coding: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts ``coding``: listed (or ``*`` is) with a q above 0."""
    star: bool | None = None
    for part in value.split(","):
        name, *params = part.split(";")
        name = name.strip().lower()
        if name not in (coding, "*"):
            continue
        ok = True
        for param in params:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    ok = float(value) > 0
                except ValueError:
                    ok = False
        if name == coding:
            return ok
        star = ok
    return bool(star)


_ACCEPTED: dict[tuple[str, str], bool] = {}


def accepts_cached(value: str, coding: str) -> bool:
    """:func:`accepts`, memoized per header value (clients send a handful of distinct values)."""
    ok = _ACCEPTED.get((value, coding))
    if ok is None:
        if len(_ACCEPTED) >= 1024:
            _ACCEPTED.clear()
        ok = _ACCEPTED[(value, coding)] = accepts(value, coding)
    return ok


class GzipWhenAccepted(tornado.web.GZipContentEncoding):
    """Tornado's gzip transform, but ``gzip;q=0`` (or ``*;q=0``) is a refusal (Tornado only looks for "gzip").

    The decision is Tornado's private ``_gzipping`` (set here, read by ``transform_first_chunk``). The public
    alternative, choosing per request between Tornado's transform and a pass-through one, would drop the ``Vary:
    Accept-Encoding`` Tornado's transform adds to the answers it does not gzip, and could not gzip for a client
    that accepts gzip only through ``*``. ``tests/service/test_tornado_privates.py`` pins it against the
    installed Tornado."""

    def __init__(self, request: httputil.HTTPServerRequest) -> None:
        # Not super().__init__: all Tornado's does is this decision, by its own rule (pinned in
        # tests/service/test_tornado_privates.py), and its header lookup would be the second per request.
        encoding = header(request.headers, "Accept-Encoding")
        self._gzipping = encoding is not None and accepts_cached(encoding, "gzip")


def representation(
    entry: Entry, body: bytes, request_headers: httputil.HTTPHeaders, dictionary: ServedDictionary | None
) -> tuple[str | None, bytes]:
    """The coding and bytes ``entry`` (whose JSON is ``body``) goes out as: ``dcz`` for a client that accepts it
    and holds the dictionary the entry was compressed with, ``zstd`` for one that accepts zstd when the frame
    needs no dictionary, else ``(None, body)``."""
    encoding = header(request_headers, "Accept-Encoding")
    if encoding is None:
        return None, body
    lowered = encoding.lower()  # a cheap look first: most clients name neither coding
    if dictionary is not None and "dcz" in lowered and accepts_cached(encoding, "dcz"):
        held = available_dictionary(header(request_headers, "Available-Dictionary"))
        framed = entry.dictionary_frame() if held is not None else None
        if framed is not None and framed[0] == held:
            return "dcz", dcz_body(framed[0], framed[1])
    if "zstd" in lowered and accepts_cached(encoding, "zstd"):
        frame = entry.zstd_frame()
        if frame is not None:
            return "zstd", frame
    return None, body


def weak_etag(body: bytes) -> str:
    return f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


class _ETags:
    """Weak ETags of stored values, memoized: BLAKE2b-96 of the body once per stored value, not per request.

    Keyed by (route and arguments, expires_at, body length): a stored value is written once with its expiry, so a
    rewrite (even of the same bytes) gets a new key. An entry that was not stored (``expires_at`` 0: bypass) is
    hashed every time. The ETag is of the bytes themselves, so changed content never gets an old ETag (no false
    304). Bounded."""

    def __init__(self, limit: int = 2048) -> None:  # ~0.3 KB each: hot keys, not every key
        self.limit = limit
        self.memo: dict[Any, str] = {}

    def get(self, key: Any, entry: Entry, body: bytes, coding: str | None = None) -> str:
        """The ETag of ``body``, the bytes of ``entry``, sent with ``coding`` (each coding its own ETag)."""
        expires_at = entry.expires_at
        etag: str | None
        if not expires_at:
            etag = weak_etag(body)
        else:
            memo_key = (key, expires_at, len(body))
            etag = self.memo.get(memo_key)
            if etag is None:
                if len(self.memo) >= self.limit:
                    self.memo.clear()
                etag = self.memo[memo_key] = weak_etag(body)
        return etag if coding is None else f'{etag[:-1]}-{coding}"'


ETAGS: Final = _ETags()
