"""``cachelayer`` (and ``python -m cachelayer``): look inside a cache from a shell (docs/operations.md, "Looking
inside the cache").

- ``cachelayer inspect KEY``: the stored entry, decoded: value, TTL, stored and serialized sizes, compression and
  dictionary, frame version and checksum, tags and their stamps, whether a load holds the lease; on a Redis
  Cluster the slot and the master that serves it.
- ``cachelayer key module:function ARG... [NAME=ARG...]``: the key ``@cached`` would use for those arguments. Each
  ARG is JSON (``20``, ``'"abc"'``, ``'[1, 2]'``), because ``f(1)`` and ``f("1")`` are different keys.
- ``cachelayer keys PATTERN``: the keys matching a glob, by SCAN on every master (never KEYS), at most ``--limit``.
- ``cachelayer dictionary train --namespace NS --out FILE``: sample a namespace's live values (SCAN, bounded), train a
  raw-content zstd dictionary on half of them and measure it on the other half; ``dictionary info FILE``: its id.
- ``cachelayer stats URL``: a running service's cache figures, from its Prometheus ``/metrics``.

The store comes from ``--url`` or ``CACHELAYER_URL`` (``redis://``, ``rediss://``, ``unix://``,
``redis+cluster://``). ``--json`` prints one JSON document on stdout and nothing else there; messages go to stderr.
Exit codes: 0 found, 1 not found, 2 usage (a bad URL, argument or function), 3 store unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from ._backend import StoreUnavailable
from ._codec import COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_ZSTD_DICT, COMPRESSION_ZSTD_RAW_DICT, Codec
from ._dictionaries import DictionaryRegistry, train_dictionary
from ._errors import CacheError, CodecError, ConfigurationError, StoreConnectError
from ._keys import KeyLayout
from ._options import StoreOptions
from ._redis_backend import RedisBackend, glob_escape
from ._redis_inspect import read_entry, read_values, scan
from ._serializers import serializer_by_id
from ._urls import backend_from_url

__all__ = ["main"]

EXIT_FOUND: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3

STORE_TIMEOUT: Final = 5.0  # a shell user waits longer than a request does
_KEYWORD: Final = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_COMPRESSION: Final = {
    COMPRESSION_NONE: "none",
    COMPRESSION_ZSTD: "zstd",
    COMPRESSION_ZSTD_DICT: "zstd with a trained dictionary",
    COMPRESSION_ZSTD_RAW_DICT: "zstd with a raw-content dictionary",
}


class UsageError(Exception):
    """A mistake on the command line: exit 2 with the message."""


class Unavailable(Exception):
    """The store did not answer: exit 3 with the message."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # argparse exits 2 itself on a malformed command line
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"cachelayer {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as exc:
        print(f"cachelayer {args.command}: store unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachelayer",
        description="Look inside a cachelayer cache from a shell.",
        epilog="The store: --url or $CACHELAYER_URL. Exit codes: 0 found, 1 not found, 2 usage, 3 store unavailable.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_store(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--url", default=os.environ.get("CACHELAYER_URL"),
                         help="the store (default: $CACHELAYER_URL), e.g. redis://127.0.0.1:6379/0")
        sub.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    inspect = commands.add_parser("inspect", help="the stored entry under KEY, decoded")
    inspect.add_argument("key")
    with_store(inspect)
    inspect.add_argument("--dictionary", action="append", default=[], metavar="PATH",
                         help="a zstd dictionary file to read dictionary-compressed values with (repeatable)")
    inspect.set_defaults(run=lambda a: asyncio.run(_inspect(a)))

    key = commands.add_parser("key", help="the key @cached uses for these arguments")
    key.add_argument("function", metavar="module:function", help="e.g. service.repository:wallpaper_detail")
    key.add_argument("arguments", nargs="*", metavar="ARG",
                     help="JSON positional arguments, NAME=JSON keyword arguments")
    key.add_argument("--namespace", help="the cache's namespace, when the function's cache is not set up here")
    key.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    key.set_defaults(run=_key)

    keys = commands.add_parser("keys", help="the keys matching a glob pattern (SCAN on every master)")
    keys.add_argument("pattern")
    with_store(keys)
    keys.add_argument("--limit", type=int, default=1000, help="stop after this many keys (default 1000)")
    keys.set_defaults(run=lambda a: asyncio.run(_keys(a)))

    dictionary = commands.add_parser("dictionary", help="train a zstd dictionary on a namespace's values; describe one")
    actions = dictionary.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="sample live values (SCAN), train on half, measure on the other half")
    with_store(train)
    train.add_argument("--namespace", required=True, help="the cache's namespace (its value keys: NS:{...})")
    train.add_argument("--out", required=True, type=Path, help="the dictionary file to write (never overwritten)")
    train.add_argument("--samples", type=int, default=2000, help="values to read at most (default 2000)")
    train.add_argument("--size", type=int, default=32 * 1024, help="dictionary size in bytes (default 32768)")
    train.add_argument("--level", type=int, default=3, help="zstd level to measure with (default 3)")
    train.add_argument("--dictionary", action="append", default=[], metavar="PATH",
                       help="a dictionary the stored values were written with, to read them (repeatable)")
    train.set_defaults(run=lambda a: asyncio.run(_train(a)))
    info = actions.add_parser("info", help="a dictionary file's id (what frames name it by), SHA-256 and form")
    info.add_argument("path", type=Path)
    info.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    info.set_defaults(run=_info)

    stats = commands.add_parser("stats", help="a running service's cache figures, from its /metrics")
    stats.add_argument("metrics_url", metavar="URL", help="e.g. http://127.0.0.1:9090/metrics")
    stats.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    stats.set_defaults(run=_stats)
    return parser


def _print(args: argparse.Namespace, document: dict[str, Any], lines: Sequence[str]) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(document, default=_jsonable, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):  # msgpack values can hold bytes
        return {"base64": base64.b64encode(bytes(value)).decode()}
    raise TypeError(f"{type(value).__name__} is not JSON")


# -- the store ---------------------------------------------------------------------------------------------------


async def _open(url: str | None) -> RedisBackend:
    if not url:
        raise UsageError("no store: pass --url redis://host:port/db or set CACHELAYER_URL")
    try:
        backend = backend_from_url(url, StoreOptions(timeout=STORE_TIMEOUT, connect_timeout=STORE_TIMEOUT))
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from exc
    if not isinstance(backend, RedisBackend):
        await backend.aclose()
        raise UsageError(f"{url.split('://')[0]}:// is not a Redis store: there is nothing to look inside")
    try:
        await backend.connect()
    except StoreConnectError as exc:
        await backend.aclose()
        raise Unavailable(str(exc)) from exc
    return backend


# -- inspect ------------------------------------------------------------------------------------------------------


async def _inspect(args: argparse.Namespace) -> int:
    try:
        dictionaries = DictionaryRegistry.from_files(args.dictionary)
    except (OSError, CacheError, ValueError) as exc:
        raise UsageError(f"--dictionary: {exc}") from exc
    backend = await _open(args.url)
    key: str = args.key
    try:
        entry = await read_entry(backend, key, STORE_TIMEOUT)
    except StoreUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    finally:
        await backend.aclose()
    if entry is None:
        _print(args, {"key": key, "found": False}, [])
        print(f"cachelayer inspect: {key!r} not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    document, lines = _describe(key, entry.data, Codec(dictionaries=dictionaries))
    pttl = entry.pttl_ms
    document["ttl_s"] = None if pttl < 0 else pttl / 1000
    document["lease_held"] = entry.lease_held
    lines.insert(1, f"ttl:        {'none' if pttl < 0 else f'{pttl / 1000:.1f} s'} (the store's)")
    lines.insert(2, f"lease:      {'held: a load of this entry is running' if entry.lease_held else 'not held'}")
    if entry.node is not None:
        document["slot"], document["node"] = entry.slot, entry.node
        lines.insert(1, f"node:       {entry.node} (slot {entry.slot})")
    _print(args, document, lines)
    return EXIT_FOUND


def _describe(key: str, data: bytes, codec: Codec) -> tuple[dict[str, Any], list[str]]:
    """What ``data`` stored under ``key`` is, as a JSON document and as lines for a terminal."""
    document: dict[str, Any] = {"key": key, "found": True, "stored_bytes": len(data)}
    lines = [f"key:        {key}", f"stored:     {len(data):,} bytes"]
    try:
        frame = codec.read_frame(data)
    except CodecError as exc:
        document["frame"] = None
        document["error"] = str(exc)
        lines.append(f"frame:      none ({exc}); first bytes {data[:16]!r}")
        return document, lines
    try:
        serializer = serializer_by_id(frame.serializer_id).name
    except CodecError:
        serializer = f"id {frame.serializer_id}"
    compression = _COMPRESSION[frame.compression]  # read_frame refused any other
    document["frame"] = {
        "version": frame.version,
        "serializer": serializer,
        "compression": compression,
        "dictionary_id": frame.dictionary_id or None,
        "checksum": None if frame.checksum is None else f"{frame.checksum:08x}",
        "expires_at": frame.expires_at or None,
        "recompute_time_s": frame.recompute_time,
        "tags": [{"tag": tag, "stamp": stamp.hex()} for tag, stamp in frame.tags],
    }
    dictionary = f" (dictionary {frame.dictionary_id})" if frame.dictionary_id else ""
    lines.append(f"frame:      version {frame.version}, {serializer}, {compression}{dictionary}")
    if frame.expires_at:
        left = frame.expires_at - time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(frame.expires_at))
        state = f"stale for {-left:.1f} s" if left < 0 else f"{left:.1f} s left"
        lines.append(f"fresh:      until {stamp} ({state})")
    lines.append(f"recompute:  {frame.recompute_time * 1000:.1f} ms (the load's duration, for early recompute)")
    for tag, stamp_bytes in frame.tags:
        lines.append(f"tag:        {tag} (stamp {stamp_bytes.hex()})")
    try:
        serialized = codec.serialized(frame)
        value = codec.parse(frame, serialized)
    except CodecError as exc:
        document["checksum_ok"] = None if "CRC" not in str(exc) else False
        document["error"] = str(exc)
        lines.append(f"checksum:   {'none (version 1)' if frame.checksum is None else f'{frame.checksum:08x}'}")
        lines.append(f"value:      not readable here: {exc}")
        return document, lines
    document["checksum_ok"] = None if frame.checksum is None else True
    document["serialized_bytes"] = len(serialized)
    document["value"] = value
    ratio = len(data) / len(serialized) if len(serialized) else 0.0
    lines.append(f"checksum:   {'none (version 1)' if frame.checksum is None else f'{frame.checksum:08x}, matches'}")
    lines[1] = f"stored:     {len(data):,} bytes, {len(serialized):,} serialized ({ratio:.2f} x)"
    text = orjson.dumps(value, default=_jsonable, option=orjson.OPT_INDENT_2).decode()
    lines.append("value:")
    lines.extend("  " + line for line in text.splitlines())
    return document, lines


# -- key ----------------------------------------------------------------------------------------------------------


def _key(args: argparse.Namespace) -> int:
    from ._decorator import BoundCachedFunction, CachedFunction

    function = _resolve(args.function)
    if isinstance(function, BoundCachedFunction):
        raise UsageError(f"{args.function} is bound to an instance: name the function on its class")
    if not isinstance(function, CachedFunction):
        raise UsageError(f"{args.function} is a {type(function).__name__}, not a @cached function")
    qualname = getattr(function, "__qualname__", "")
    if function._binding == "instance" and "." in qualname and "<locals>" not in qualname:
        raise UsageError(
            f"{args.function} is a method: its key depends on its instance (its __cache_key__), which a command "
            "line cannot give; in Python: instance.method.key(...)"
        )
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for text in args.arguments:
        keyword = _KEYWORD.match(text)
        name, raw = (keyword.group(1), keyword.group(2)) if keyword else (None, text)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            hint = f'; a string is written \'"{raw}"\'' if raw and not raw.startswith('"') else ""
            raise UsageError(f"argument {text!r} is not JSON ({exc}){hint}") from exc
        if name is None:
            if keywords:
                raise UsageError(f"positional argument {text!r} after a keyword argument")
            positional.append(value)
        else:
            keywords[name] = value
    try:
        name, policy = function._plan(tuple(positional), keywords)
    except (TypeError, CacheError) as exc:
        raise UsageError(f"these arguments do not fit {args.function}: {exc}") from exc
    if args.namespace is not None:
        try:
            key = KeyLayout(args.namespace).value_key(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    else:
        try:
            key = function.cache.key(name)
        except CacheError as exc:
            raise UsageError(f"{exc}; or pass --namespace NAMESPACE") from exc
    _print(args, {"key": key, "name": name, "tags": list(policy.tags)}, [key])
    return EXIT_FOUND


def _resolve(target: str) -> Any:
    module_name, _, path = target.partition(":")
    if not module_name or not path:
        raise UsageError(f"{target!r}: write module:function, e.g. service.repository:wallpaper_detail")
    if os.getcwd() not in sys.path:  # as `python -m` does: the user's own modules, from where the command runs
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    for part in path.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            raise UsageError(f"{module_name!r} has no {path!r}") from exc
    return found


# -- keys ---------------------------------------------------------------------------------------------------------


async def _keys(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    backend = await _open(args.url)
    try:
        found = await scan(backend, args.pattern, args.limit, STORE_TIMEOUT * 6)
    except StoreUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    finally:
        await backend.aclose()
    truncated = len(found) >= args.limit
    _print(args, {"pattern": args.pattern, "keys": found, "truncated": truncated}, found)
    if truncated:
        print(f"cachelayer keys: stopped at --limit {args.limit}", file=sys.stderr)
    return EXIT_FOUND if found else EXIT_NOT_FOUND


# -- dictionary ---------------------------------------------------------------------------------------------------

_MIN_SAMPLES: Final = 20


async def _train(args: argparse.Namespace) -> int:
    if args.samples < _MIN_SAMPLES or args.size < 256:
        raise UsageError(f"--samples must be at least {_MIN_SAMPLES} and --size at least 256")
    if args.out.exists():
        raise UsageError(f"{args.out} exists: a deployed dictionary is never overwritten; choose another name")
    try:
        KeyLayout(args.namespace)
        reader = Codec(dictionaries=DictionaryRegistry.from_files(args.dictionary))
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    backend = await _open(args.url)
    try:
        keys = sorted(await scan(backend, glob_escape(args.namespace) + ":{*}", args.samples, STORE_TIMEOUT * 6))
        values = await read_values(backend, keys, STORE_TIMEOUT * 6)
    except StoreUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    finally:
        await backend.aclose()
    samples: list[bytes] = []
    for data in values:
        if data is None:
            continue
        try:
            frame = reader.read_frame(data)
            if serializer_by_id(frame.serializer_id).name == "orjson":
                samples.append(bytes(reader.serialized(frame)))
        except CodecError:
            continue  # expired meanwhile, written with a dictionary not given, or not a cachelayer value
    if len(samples) < _MIN_SAMPLES:
        print(f"cachelayer dictionary train: {len(samples)} JSON values under {args.namespace}:{{...}} (of "
              f"{len(keys)} keys); training needs at least {_MIN_SAMPLES}, and hundreds help", file=sys.stderr)
        _print(args, {"namespace": args.namespace, "values": len(samples)}, [])
        return EXIT_NOT_FOUND
    # Every other value (in key order) trains; the rest measure: figures from values the dictionary never saw.
    training, held_out = samples[0::2], samples[1::2]
    try:
        dictionary = train_dictionary(training, size=args.size, level=args.level)
    except Exception as exc:  # zstandard.ZstdError: too few or too small samples for the size asked
        print(f"cachelayer dictionary train: zstd could not train ({exc}): more values, or a smaller --size",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    registry = DictionaryRegistry([dictionary])
    dict_id = registry.ids()[0]
    plain = Codec(level=args.level)
    with_dictionary = Codec(dictionaries=registry, dictionary_id=dict_id, level=args.level)
    json_bytes = sum(len(sample) for sample in held_out)
    stored_plain = sum(len(plain.encode_serialized(sample)) for sample in held_out)
    stored_with = sum(len(with_dictionary.encode_serialized(sample)) for sample in held_out)
    with args.out.open("xb") as out:
        out.write(dictionary)
    document = {
        "path": str(args.out),
        "id": dict_id,
        "sha256": registry.sha256(dict_id).hex(),
        "size": len(dictionary),
        "trained_on": len(training),
        "measured_on": len(held_out),
        "stored_vs_json_without": round(stored_plain / json_bytes, 4),
        "stored_vs_json_with": round(stored_with / json_bytes, 4),
    }
    _print(args, document, [
        f"wrote {args.out}: dictionary {dict_id} ({len(dictionary):,} bytes, sha256 {document['sha256']})",
        f"trained on {len(training)} values of {args.namespace}, measured on {len(held_out)} others:",
        f"  stored / JSON without a dictionary: {document['stored_vs_json_without']:.3f}",
        f"  stored / JSON with it:              {document['stored_vs_json_with']:.3f}",
        "deploy it to every reader first, then to writers (README, Dictionaries)",
    ])  # fmt: skip
    return EXIT_FOUND


def _info(args: argparse.Namespace) -> int:
    try:
        data = args.path.read_bytes()
        registry = DictionaryRegistry([data])
    except (OSError, ValueError) as exc:
        raise UsageError(f"{args.path}: {exc}") from exc
    dict_id = registry.ids()[0]
    document = {
        "path": str(args.path),
        "id": dict_id,
        "form": registry.kind(dict_id),
        "sha256": registry.sha256(dict_id).hex(),
        "size": len(data),
    }
    lines = [f"{key}: {value}" for key, value in document.items()]
    _print(args, document, lines)
    return EXIT_FOUND


# -- stats --------------------------------------------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as exc:
        raise UsageError("needs prometheus_client: pip install 'cachelayer[prometheus]'") from exc

    url: str = args.metrics_url
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{url!r}: give the service's metrics URL, e.g. http://127.0.0.1:9090/metrics")
    try:
        with urllib.request.urlopen(url, timeout=STORE_TIMEOUT) as answer:  # http(s) only: checked above
            text = answer.read().decode()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise Unavailable(f"{url}: {exc}") from exc
    figures: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("cachelayer_"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            figures.setdefault(sample.name, {})[labels] = figures.get(sample.name, {}).get(labels, 0.0) + sample.value
    if not figures:
        print(f"cachelayer stats: {url} has no cachelayer_* metrics", file=sys.stderr)
        _print(args, {"url": url, "metrics": {}}, [])
        return EXIT_NOT_FOUND
    lines = [
        f"{name}{{{labels}}} {value:g}" for name, series in sorted(figures.items()) for labels, value in series.items()
    ]
    hits = sum(figures.get("cachelayer_hits_total", {}).values())
    misses = sum(figures.get("cachelayer_misses_total", {}).values())
    document: dict[str, Any] = {"url": url, "metrics": figures}
    if hits + misses:
        document["hit_ratio"] = hits / (hits + misses)
        lines.insert(0, f"hit ratio {hits / (hits + misses):.3f} ({hits:g} hits, {misses:g} misses)")
    _print(args, document, lines)
    return EXIT_FOUND
