"""No stored frame served unchecked (issue 11, item 6): the service hands stored bytes out without parsing them
(the body passthrough, the zstd passthrough), so a frame whose header is well formed but whose payload is not
what it says must be a miss: the decode error counted, the key rewritten, a 200 with the correct data.

The audit's cases, each written straight into Redis under the detail page's key, with a version 1 header (no
checksum: the reader must parse it to prove it is JSON) and with a version 2 header carrying a wrong checksum.
"""

from __future__ import annotations

import struct
import time
import zlib

import msgpack
import orjson
import pytest
import redis.asyncio
import zstandard

from tests.service._support import API, Running

EXPIRES_MS = int((time.time() + 3600) * 1000)


def header(version: int, serializer: int, compression: int, payload: bytes, *, good_crc: bool = False) -> bytes:
    head = struct.pack(">2sBBBBIQI", b"CL", version, serializer, compression, 0, 0, EXPIRES_MS, 1000)
    if version == 1:
        return head
    crc = zlib.crc32(payload) if good_crc else zlib.crc32(payload) ^ 0xFFFF
    return head + struct.pack(">I", crc)


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


PAYLOADS = {
    "random-bytes": (1, 0, bytes(range(256)) * 3),
    "truncated-json": (1, 0, orjson.dumps({"code": 0, "msg": "ok", "data": {"id": 1, "t": "x" * 400}})[:300]),
    "zstd-of-html": (1, 1, zstd(b"<html><body>" + b"<p>not json</p>" * 100 + b"</body></html>")),
    "msgpack-under-json-header": (1, 0, msgpack.packb({"code": 0, "msg": "ok", "data": {"id": 1}})),
    "serializer-id-9": (9, 0, orjson.dumps({"code": 0, "msg": "ok", "data": {"id": 1}})),
}


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("case", sorted(PAYLOADS))
@pytest.mark.parametrize("encoding", ["identity", "zstd"])
async def test_a_bad_payload_is_a_miss_and_is_rewritten(
    service: Running, redis_client: redis.asyncio.Redis, case: str, version: int, encoding: str
) -> None:
    detail = service.services.catalog.detail
    good_response = await service.fetch(f"{API}/wallpaper/1.json")
    assert good_response.code == 200
    good = orjson.loads(good_response.body)
    key = detail.key(1)
    serializer, compression, payload = PAYLOADS[case]
    await redis_client.set(key, header(version, serializer, compression, payload) + payload, px=3_600_000)
    errors_before = service.services.cache.stats()["decode_errors"]

    response = await service.fetch(f"{API}/wallpaper/1.json", headers={"Accept-Encoding": encoding})

    assert response.code == 200
    body = response.body
    if response.headers.get("Content-Encoding") == "zstd":
        body = zstandard.ZstdDecompressor().decompress(body)
    assert orjson.loads(body) == good
    assert service.services.cache.stats()["decode_errors"] == errors_before + 1
    stored = await redis_client.get(key)
    assert stored is not None
    codec = service.services.cache.codec  # with the service's dictionary (the shipped settings store with one)
    assert orjson.loads(codec.verified_body(codec.read_frame(stored))) == good  # rewritten, checksum and all
