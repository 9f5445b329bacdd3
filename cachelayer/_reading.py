"""Read and decode: the first part of the fetch pipeline.

Reads a key from the local tier or the store (concurrent reads of one key share round trips: ``_coalescing.py``),
checks and decodes the frame, and builds the :class:`CacheEntry` a caller gets. A value that does not decode is
deleted, counted and logged, and is a miss: the cache never crashes on, nor serves, bytes it cannot vouch for. A tagged
frame is judged against its tags' stamps now (``_tags.py``), read beside it: gone is a miss, stale is stale.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Final

import msgspec

from ._backend import Backend, StoreUnavailable
from ._coalescing import HandedOff, HandOff, ReadCoalescer
from ._codec import Codec, Frame
from ._deadline import current_deadline
from ._entry import CacheEntry, Outcome
from ._errors import CodecError
from ._fetch import Fetch
from ._keys import KeyLayout
from ._local import LocalCache
from ._metrics import CacheMetrics
from ._serializers import OrjsonSerializer
from ._tags import judged_frame
from ._typed import ValueType

__all__ = ["Decoded", "Reader"]

log = logging.getLogger("cachelayer")

Decoded = tuple[Frame, Any]  # a frame and its value (or its checked body)

_MEMO_SIZE: Final = 4096
# The checked-frame memo's budget: hot values, not a second cache (the store, or the local tier, is the cache).
_MEMO_BYTES: Final = 8 * 1024 * 1024
_MEMO_ENTRY_BYTES: Final = 256 * 1024
_TEMPLATE_FACTOR: Final = 6  # a parsed JSON value's objects take about 5x its text (4.7x on the hit-path page)
_UNSET: Final[Any] = object()
_READ_ONCE: Final[Any] = object()
_NO_TEMPLATE: Final[Any] = object()


class Reader:
    """Reads and decodes for one cache in one event loop."""

    def __init__(
        self,
        codec: Codec,
        backend: Backend,
        local: LocalCache | None,
        metrics: CacheMetrics,
        *,
        keys: KeyLayout,
        shared_values: bool,
        hand_off: HandOff | None = None,
    ) -> None:
        self.codec = codec
        self.backend = backend
        self.keys = keys
        self.local = local
        self.metrics = metrics
        # A caller waiting for a shared read that finds nothing may be handed to the load that follows
        # (``hand_off``, the pipeline's): one that joins single flights and waits without a deadline.
        self.reads = ReadCoalescer(hand_off, _joins_without_deadline)
        # Stored bytes handed out unparsed (an HTTP body passthrough) must be JSON whose payload checks out.
        self._json_body = codec.serializer.id == OrjsonSerializer.id
        # An in-process store hands back its own bytes object: no round trip to share, so no read coalescing.
        self._in_process = backend.stores_objects
        # The checked frames of recent reads: a hot key is read, checked and decompressed once per stored value,
        # not once per hit (docstring of _Checked). Each hit still parses a value of its own (a caller that
        # mutates what it got must not change what the next caller gets); ``shared_values=True`` (in-process
        # stores only) is the caller's promise never to mutate, and buys one parse for all hits.
        self._checked = _Checked()
        self._shared: dict[str, tuple[bytes, Any, Decoded]] | None = {} if self._in_process and shared_values else None

    def local_hit(self, fetch: Fetch[Any], now: float) -> tuple[Frame, Any] | None:
        """A fresh entry of the local tier, decoded for this caller; None when there is none."""
        local = self.local
        assert local is not None
        held = local.get(fetch.key)
        if held is None or now >= held.frame.expires_at:
            return None
        if not fetch.parse and held.body is not None:
            return held.frame, held.body  # checked before it was kept (``put`` and ``keep_body`` take checked bodies)
        try:
            known = self._checked.get(fetch.key, held.data, self.codec)
            if fetch.parse:
                decoded = self._checked.value(known, self.codec, fetch.value_type)
            else:
                decoded = held.body
                if decoded is None:
                    decoded = self.body(known.frame, known.serialized)
                    local.keep_body(fetch.key, held, decoded)
        except CodecError:
            local.discard([fetch.key])
            return None
        return known.frame, decoded

    async def read(self, fetch: Fetch[Any]) -> tuple[bytes | None, Decoded | None] | HandedOff:
        """The stored bytes and their decoding (None, None on a miss; raises :class:`StoreUnavailable`), or
        :class:`HandedOff`: the shared read this caller waited for found nothing, and the pipeline's ``hand_off``
        gave the caller the outcome of the load that followed."""
        key = fetch.key
        tags = fetch.policy.tags
        if tags:
            return await self._read_tagged(fetch, tags)
        if self._in_process:
            data = await self.backend.get(key)
        else:
            shared = await self.reads.read(key, self.backend.get, key, fetch)
            if isinstance(shared, HandedOff):
                return shared
            data = shared
        if data is None:
            return None, None
        try:
            found = self.decoded(key, data, fetch.parse, fetch.value_type)
        except CodecError as exc:
            await self._drop(key, exc)
            return data, None
        if found[0].tags:  # written with tags this read did not expect (another policy): judge it all the same
            return data, await self._judged(found, {})
        return data, found

    async def _read_tagged(self, fetch: Fetch[Any], tags: tuple[str, ...]) -> tuple[bytes | None, Decoded | None]:
        """The value and its tags' stamps in one round trip (one MGET on a standalone Redis)."""
        key = fetch.key
        names = [key, *[self.keys.tag_key(tag) for tag in tags]]
        if self._in_process:
            found = await self.backend.get_many(names)
        else:
            # Coalesced only with reads that ask for the same stamps.
            shared = await self.reads.read("\0".join(names), self.backend.get_many, names)
            assert not isinstance(shared, HandedOff)  # read without a caller: never handed off
            found = shared
        data = found[0]
        if data is None:
            return None, None
        stamps = dict(zip(tags, found[1:], strict=True))
        return data, await self.decode(key, data, fetch.parse, fetch.value_type, stamps)

    def entry(
        self,
        frame: Frame,
        outcome: Outcome,
        decoded: Any,
        fetch: Fetch[Any],
        kind: type[CacheEntry[Any]] = CacheEntry,
    ) -> CacheEntry[Any]:
        if fetch.parse:
            return kind(self.codec, frame, outcome, value=decoded)
        value_type = fetch.value_type
        loads = None if value_type is None else value_type.loads
        return kind(self.codec, frame, outcome, body=decoded, loads=loads)

    def body(self, frame: Frame, serialized: bytes | memoryview) -> bytes | memoryview:
        """The stored bytes to hand out unparsed: with the JSON serializer, checked to be JSON text."""
        return self.codec.json_body(frame, serialized) if self._json_body else serialized

    async def decode(
        self,
        key: str,
        data: bytes,
        parse: bool,
        value_type: ValueType[Any] | None,
        stamps: dict[str, bytes | None] | None = None,
    ) -> Decoded | None:
        """Header and value (or checked body); a value that does not decode is deleted and is a miss; a tagged
        one is judged by its tags' stamps (``stamps``: those already read; the others are read now)."""
        try:
            found = self.decoded(key, data, parse, value_type)
        except CodecError as exc:
            await self._drop(key, exc)
            return None
        if found[0].tags:
            return await self._judged(found, stamps if stamps is not None else {})
        return found

    async def _judged(self, found: Decoded, stamps: dict[str, bytes | None]) -> Decoded | None:
        """``found`` as its tags' stamps say: live, stale (a copy of its frame marked so), or gone (None). Stamps
        that cannot be read make it gone: when in doubt, miss."""
        frame = found[0]
        missing = [tag for tag, _ in frame.tags if tag not in stamps]
        if missing:
            try:
                read = await self.backend.get_many([self.keys.tag_key(tag) for tag in missing])
            except StoreUnavailable:
                return None
            stamps = {**stamps, **dict(zip(missing, read, strict=True))}
        judged = judged_frame(frame, stamps)
        if judged is None:
            self.metrics.tag_invalidated += 1
            return None
        return judged, found[1]

    def decoded(self, key: str, data: bytes, parse: bool, value_type: ValueType[Any] | None) -> Decoded:
        """Header and value (or checked body), or :class:`CodecError`. Not a coroutine: a hit awaits nothing
        after its read."""
        shared = self._shared
        if shared is not None and parse:
            held = shared.get(key)
            if held is not None and held[0] is data and held[1] is value_type:
                return held[2]
        known = self._checked.get(key, data, self.codec)
        if not parse:
            return known.frame, self.body(known.frame, known.serialized)
        if shared is None:
            return known.frame, self._checked.value(known, self.codec, value_type)
        # One value for every hit (the caller's promise not to mutate): parsed, no template to copy from.
        serialized = known.serialized
        value = self.codec.parse(known.frame, serialized) if value_type is None else value_type.loads(serialized)
        decoded = known.frame, value
        if len(shared) >= _MEMO_SIZE:
            shared.clear()
        shared[key] = (data, value_type, decoded)
        return decoded

    async def _drop(self, key: str, exc: CodecError) -> None:
        self.metrics.decode_errors += 1
        log.warning("cachelayer: dropping undecodable value at %s: %s", key, exc)
        with contextlib.suppress(StoreUnavailable):
            await self.backend.delete(key)


class _Known:
    """One key's last checked value: its bytes, frame, checked payload, and (untyped JSON) its parsed template."""

    __slots__ = ("data", "frame", "key", "serialized", "size", "template", "typed", "verified")

    def __init__(self, key: str, data: bytes, frame: Frame, serialized: bytes | memoryview, size: int) -> None:
        self.key = key
        self.data = data
        self.frame = frame
        self.serialized = serialized
        self.size = size
        self.template: Any = _UNSET
        self.verified: ValueType[Any] | None = None  # the value type ``typed`` was made for and checked against
        self.typed: Any = None  # that type's own template (ValueType.template), built from ``template``


class _Checked:
    """The frame and checked, decompressed payload of the last value read under each recent key, and a parsed
    template of its value to copy.

    A value read again (the same bytes object from an in-process store, equal bytes from Redis) is not checked
    and decompressed again: bytes equal to bytes whose header and CRC passed are exactly the bytes that passed (an
    equality test is a stronger check than the CRC, and a ``memcmp`` of a 2 KB frame costs ~0.1 us where the CRC
    and zstd cost ~6 us). Bytes that differ in any bit (a new value, an expiry rewritten in place, a corruption)
    miss and are checked in full.

    An untyped JSON value (dicts, lists, str, int, float, bool, None) is parsed once into a template that no caller
    ever sees; each hit gets ``msgspec.to_builtins(template)``: new dicts and lists all the way down, sharing only
    the immutable leaves (measured on the 7.3 KB page of benchmarks/hit_path.py: 11 us, where orjson.loads takes
    16 us). Each caller still owns every container it gets, as from a parse.

    Bounded in entries and in bytes (a template counts ``_TEMPLATE_FACTOR`` times its JSON: Python objects are
    that much larger); a value too large for the budget is never kept.
    """

    __slots__ = ("_bytes", "_memo")

    def __init__(self) -> None:
        self._memo: dict[str, _Known] = {}
        self._bytes = 0

    def get(self, key: str, data: bytes, codec: Codec) -> _Known:
        memo = self._memo
        known = memo.get(key)
        if known is not None and (known.data is data or known.data == data):
            return known
        frame = codec.read_frame(data)
        serialized = codec.serialized(frame)
        size = len(data) + (len(serialized) if frame.compression else 0)  # uncompressed: a view of data
        fresh = _Known(key, data, frame, serialized, size)
        if size <= _MEMO_ENTRY_BYTES:
            if known is not None:
                self._bytes -= known.size
            if len(memo) >= _MEMO_SIZE or self._bytes + size > _MEMO_BYTES:
                memo.clear()
                self._bytes = 0
            memo[key] = fresh
            self._bytes += size
        return fresh

    def value(self, known: _Known, codec: Codec, value_type: ValueType[Any] | None) -> Any:
        """A value of the caller's own, or :class:`CodecError`."""
        template = known.template
        if template is _UNSET:  # the first read of these bytes: a value read only once is not worth a template
            if self._memo.get(known.key) is known:
                known.template = _READ_ONCE
            return self._parse(known, codec, value_type)
        if template is _READ_ONCE or (value_type is not None and known.verified is not value_type):
            return self._keep_template(known, codec, value_type)
        if template is not _NO_TEMPLATE:
            try:
                if value_type is None:
                    return msgspec.to_builtins(template)
                return value_type.from_template(known.typed)
            except (RecursionError, CodecError):  # a deep value met a deeper stack than when it was kept
                pass
        return self._parse(known, codec, value_type)

    @staticmethod
    def _parse(known: _Known, codec: Codec, value_type: ValueType[Any] | None) -> Any:
        if value_type is None:
            return codec.parse(known.frame, known.serialized)
        return value_type.loads(known.serialized)

    def _keep_template(self, known: _Known, codec: Codec, value_type: ValueType[Any] | None) -> Any:
        """Read again: parse, and keep the parsed JSON natives to copy from (a typed value is built from them
        only when that gives a value equal, in type and repr, to decoding the text: checked once per type)."""
        value = self._parse(known, codec, value_type)
        if not codec.json_natives(known.frame) or (value_type is not None and not value_type.converts):
            known.template = _NO_TEMPLATE  # msgpack's bytes, a custom serializer's types, pydantic: parse each time
            return value
        template = known.template
        if template is _READ_ONCE or template is _UNSET:
            extra = len(known.serialized) * _TEMPLATE_FACTOR
            if self._bytes + extra > _MEMO_BYTES or self._memo.get(known.key) is not known:
                return value
            template = value if value_type is None else codec.parse(known.frame, known.serialized)
            try:
                copy = msgspec.to_builtins(template)
            except RecursionError:  # nested deeper than msgspec recurses: parse on every hit
                known.template = _NO_TEMPLATE
                return value
            known.template = template
            known.size += extra
            self._bytes += extra
            if value_type is None:
                return copy
        if value_type is not None:
            try:
                typed = value_type.template(template)
                built = value_type.from_template(typed)
            except (CodecError, RecursionError):
                built = None
            if built is None or built != value or repr(built) != repr(value):  # e.g. an int beyond 64 bits
                known.template = _NO_TEMPLATE
                return value
            if known.verified is None and typed is not template:  # a shadow: as large again as the natives
                extra = len(known.serialized) * _TEMPLATE_FACTOR
                if self._bytes + extra > _MEMO_BYTES or self._memo.get(known.key) is not known:
                    return value
                known.size += extra
                self._bytes += extra
            known.verified, known.typed = value_type, typed
        return value


def _joins_without_deadline(fetch: Fetch[Any]) -> bool:
    """A caller that would join a single flight and wait for it without a deadline (``_wait_for_flight`` bounds
    the others' waits, which a shared read's waiter has no place for)."""
    return fetch.deadline is None and fetch.policy.stampede.single_flight and current_deadline() is None
