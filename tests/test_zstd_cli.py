"""The operator's command lines of docs/value-format.md, run for real: redis-cli, coreutils, the zstd CLI.

Every command below is asserted to appear verbatim in the document, then run through bash against values the
codec wrote to Redis (database 15 by default, one unique key per test, deleted afterwards). The values are
chosen so that the stored bytes contain newlines, carriage returns and NULs, and end with a newline: the
commands must be binary-safe, not just work on friendly bytes.

A Redis that does not answer, or a missing command, skips these tests on a developer machine and fails them
in CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
import redis

from cachelayer import Codec, DictionaryRegistry, train_dictionary
from cachelayer._codec import COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_ZSTD_DICT, COMPRESSION_ZSTD_RAW_DICT
from harness.services import skip_or_fail
from tests._samples import sample as _sample

DOC = Path(__file__).resolve().parent.parent / "docs" / "value-format.md"

# The commands, exactly as documented. Inputs come from the environment: REDIS_URL, KEY, DICT.
CMD_JSON = 'redis-cli -u "$REDIS_URL" --raw GET "$KEY" | head -c -1 | tail -c +27 | zstd -dc'
CMD_JSON_GETRANGE = 'redis-cli -u "$REDIS_URL" --raw GETRANGE "$KEY" 26 -1 | head -c -1 | zstd -dc'
CMD_JSON_DICT = 'redis-cli -u "$REDIS_URL" --raw GET "$KEY" | head -c -1 | tail -c +27 | zstd -dc -D "$DICT"'
CMD_UNCOMPRESSED = 'redis-cli -u "$REDIS_URL" --raw GET "$KEY" | head -c -1 | tail -c +27'
CMD_HEADER = 'redis-cli -u "$REDIS_URL" --raw GETRANGE "$KEY" 0 25 | head -c 26 | od -An -tu1'
CMD_MSGPACK_TO_JSON = (
    "python3 -c 'import json, sys, msgpack; "
    "print(json.dumps(msgpack.unpackb(sys.stdin.buffer.read(), strict_map_key=False), ensure_ascii=False, "
    "default=repr))'"
)
CMD_MSGPACK = f"{CMD_JSON} | {CMD_MSGPACK_TO_JSON}"

DOCUMENTED = [CMD_JSON, CMD_JSON_GETRANGE, CMD_JSON_DICT, CMD_UNCOMPRESSED, CMD_HEADER, CMD_MSGPACK_TO_JSON]


def awkward_frame(codec: Codec, items: int, compression: int) -> tuple[Any, bytes]:
    """A value whose frame has the given compression, contains b"\\n", b"\\r" and b"\\0" in its payload, and
    ends with b"\\n" (what a newline-stripping step must not eat)."""
    rng = random.Random(items)
    page = [_sample(rng, i) for i in range(items)]
    for seed in range(20_000):
        value = {"seed": seed, "page": page}
        data = codec.encode(value)
        payload = data[26:-1]
        if data[4] == compression and data.endswith(b"\n") and all(byte in payload for byte in (b"\n", b"\r", b"\0")):
            return value, data
    raise AssertionError("no awkward frame found")  # pragma: no cover


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tools() -> None:
    for command in ("bash", "redis-cli", "zstd", "head", "tail", "od"):
        if shutil.which(command) is None:
            skip_or_fail(f"the {command!r} command is not installed")
    version = subprocess.run(["head", "--version"], capture_output=True, check=False).stdout
    if b"GNU coreutils" not in version:
        skip_or_fail("the documented commands use GNU coreutils' `head -c -1`")


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        skip_or_fail(f"Redis at {redis_url} does not answer: {exc}")
    yield client
    client.close()


@pytest.fixture
def key(sync_redis: redis.Redis) -> Iterator[str]:
    name = f"cachelayer-test:zstd-cli:{uuid.uuid4().hex}"
    yield name
    sync_redis.delete(name)


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    # The virtualenv's bin first, so that `python3` is one with msgpack installed.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        env={**os.environ, "PATH": path, **env},
        timeout=30,
        check=False,
    )


def store_and_run(
    client: redis.Redis, redis_url: str, key: str, data: bytes, command: str, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """SET the frame, run the command, and make sure the key was still there afterwards: other test modules
    flush database 15 before their tests, so a concurrent run may delete it; then try again."""
    for _ in range(5):
        client.set(key, data, ex=600)
        result = run(command, {"REDIS_URL": redis_url, "KEY": key, **env})
        if client.get(key) == data:
            return result
    pytest.fail(f"key {key} kept disappearing while the command ran")


# --------------------------------------------------------------------------- the document


def test_every_command_here_is_the_documented_one() -> None:
    text = DOC.read_text(encoding="utf-8")
    for command in DOCUMENTED:
        assert command in text, f"not in {DOC.name}: {command}"


# --------------------------------------------------------------------------- what redis-cli really prints


@pytest.mark.usefixtures("tools")
def test_redis_cli_raw_prints_the_bytes_and_one_newline(sync_redis: redis.Redis, redis_url: str, key: str) -> None:
    _, data = awkward_frame(Codec(), 20, COMPRESSION_ZSTD)
    result = store_and_run(sync_redis, redis_url, key, data, 'redis-cli -u "$REDIS_URL" --raw GET "$KEY"')
    assert result.returncode == 0, result.stderr
    assert result.stdout == data + b"\n"
    # Not a tty, no option: the same raw output. --no-raw escapes the bytes: no good for zstd.
    plain = store_and_run(sync_redis, redis_url, key, data, 'redis-cli -u "$REDIS_URL" GET "$KEY"')
    assert plain.stdout == data + b"\n"
    quoted = store_and_run(sync_redis, redis_url, key, data, 'redis-cli -u "$REDIS_URL" --no-raw GET "$KEY"')
    assert quoted.stdout.startswith(b'"CL\\x02')
    assert quoted.stdout != data + b"\n"


@pytest.mark.usefixtures("tools")
def test_without_dropping_the_newline_zstd_fails(sync_redis: redis.Redis, redis_url: str, key: str) -> None:
    """Why the documented command has `head -c -1`: zstd reads the trailing newline as a second frame."""
    _, data = awkward_frame(Codec(), 20, COMPRESSION_ZSTD)
    command = 'redis-cli -u "$REDIS_URL" --raw GET "$KEY" | tail -c +27 | zstd -dc'
    result = store_and_run(sync_redis, redis_url, key, data, command)
    assert result.returncode != 0
    assert b"unknown header" in result.stderr


# --------------------------------------------------------------------------- the documented commands


@pytest.mark.usefixtures("tools")
@pytest.mark.parametrize("items", [20, 2000], ids=["2KB", "250KB"])
@pytest.mark.parametrize("command", [CMD_JSON, CMD_JSON_GETRANGE], ids=["GET", "GETRANGE"])
def test_plain_zstd_value_to_json(sync_redis: redis.Redis, redis_url: str, key: str, command: str, items: int) -> None:
    value, data = awkward_frame(Codec(), items, COMPRESSION_ZSTD)
    result = store_and_run(sync_redis, redis_url, key, data, command)
    assert result.returncode == 0, result.stderr
    assert result.stdout == orjson.dumps(value)
    assert json.loads(result.stdout) == value


@pytest.mark.usefixtures("tools")
@pytest.mark.parametrize("form", ["raw", "trained"])
def test_dictionary_value_to_json(
    sync_redis: redis.Redis, redis_url: str, key: str, tmp_path: Path, form: Literal["raw", "trained"]
) -> None:
    # raw content (what train_dictionary returns): the file has no zstd magic, so `zstd -D` loads it as raw content,
    # as the writer did; trained (zstd's format, written before): zstd reads its id from the frame.
    rng = random.Random(7)
    dictionary = train_dictionary([orjson.dumps(_sample(rng, i)) for i in range(400)], size=8192, form=form)
    registry = DictionaryRegistry([dictionary])
    dict_id = registry.ids()[0]
    dict_file = tmp_path / f"{dict_id}.zdict"
    dict_file.write_bytes(dictionary)
    assert DictionaryRegistry.from_directory(tmp_path).ids() == [dict_id]
    compression = COMPRESSION_ZSTD_RAW_DICT if form == "raw" else COMPRESSION_ZSTD_DICT
    # A raw-content frame of 3 items is ~180 bytes that rarely hold all three awkward bytes: a longer page.
    value, data = awkward_frame(Codec(dictionaries=registry, dictionary_id=dict_id), 12 if form == "raw" else 3,
                                compression)  # fmt: skip
    result = store_and_run(sync_redis, redis_url, key, data, CMD_JSON_DICT, DICT=str(dict_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout == orjson.dumps(value)
    # Without the dictionary zstd refuses (the dictionary id, or the frame's checksum) rather than print garbage.
    without = store_and_run(sync_redis, redis_url, key, data, CMD_JSON)
    assert without.returncode != 0
    assert without.stdout == b""
    # So does it with the wrong dictionary.
    rng = random.Random(8)
    other = train_dictionary([orjson.dumps({"other": rng.random(), "n": i}) for i in range(400)], size=4096)
    other_file = tmp_path / "other.zdict"
    other_file.write_bytes(other)
    wrong = store_and_run(sync_redis, redis_url, key, data, CMD_JSON_DICT, DICT=str(other_file))
    assert wrong.returncode != 0
    assert wrong.stdout == b""


@pytest.mark.usefixtures("tools")
def test_uncompressed_value_to_json(sync_redis: redis.Redis, redis_url: str, key: str) -> None:
    value = {"title": "壁纸\n\r\0", "n": 10}
    data = Codec().encode(value)
    assert data[4] == COMPRESSION_NONE
    result = store_and_run(sync_redis, redis_url, key, data, CMD_UNCOMPRESSED)
    assert result.returncode == 0, result.stderr
    assert result.stdout == orjson.dumps(value)


@pytest.mark.usefixtures("tools")
@pytest.mark.parametrize("serializer", ["orjson", "msgpack"])
def test_header_bytes(
    sync_redis: redis.Redis, redis_url: str, key: str, serializer: Literal["orjson", "msgpack"]
) -> None:
    codec = Codec(serializer)
    data = codec.encode({"page": [_sample(random.Random(1), i) for i in range(20)]}, expires_at=1.7e9 + 0.25)
    result = store_and_run(sync_redis, redis_url, key, data, CMD_HEADER)
    assert result.returncode == 0, result.stderr
    assert [int(token) for token in result.stdout.split()] == list(data[:26])


@pytest.mark.usefixtures("tools")
def test_msgpack_value_to_json(sync_redis: redis.Redis, redis_url: str, key: str) -> None:
    value, data = awkward_frame(Codec("msgpack"), 20, COMPRESSION_ZSTD)
    result = store_and_run(sync_redis, redis_url, key, data, CMD_MSGPACK)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == value


@pytest.mark.usefixtures("tools")
def test_python_m_msgpack_does_not_exist() -> None:
    """Checked so the document does not suggest it: msgpack ships no command-line entry point."""
    result = run("python3 -m msgpack < /dev/null", {})
    assert result.returncode != 0


@pytest.mark.usefixtures("tools")
def test_zstd_checks_the_content_checksum(sync_redis: redis.Redis, redis_url: str, key: str) -> None:
    value, data = awkward_frame(Codec(), 20, COMPRESSION_ZSTD)
    damaged = bytearray(data)
    damaged[-6] ^= 0x10  # compressed content, before the 4-byte checksum
    result = store_and_run(sync_redis, redis_url, key, bytes(damaged), CMD_JSON)
    assert result.returncode != 0
    assert result.stdout != orjson.dumps(value)
