"""Compression Dictionary Transport (RFC 9842) from the service: the shipped dictionary served as a resource, and
answers sent as ``dcz`` (the stored frame behind 40 bytes) to a client that holds it. The client here is Python
doing what Chromium does (load the dictionary as raw content, decompress); real Redis, MariaDB, SecantusDB."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import redis.asyncio
import zstandard

from cachelayer import DictionaryRegistry, train_dictionary
from cachelayer._codec import COMPRESSION_ZSTD_RAW_DICT
from service.config import Settings
from service.dictionary import SHIPPED, training_samples
from service.representations import DCZ_MAGIC
from tests.service._support import API, Running, run_service, stop_service, with_sections

LIST = f"{API}/wallpaperList.json?pageSize=20"
DETAIL = f"{API}/wallpaper/7.json"
BROWSER = "gzip, deflate, br, zstd, dcb, dcz"  # what Chromium 156 sends


def holding(data: bytes) -> dict[str, str]:
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return {"Accept-Encoding": BROWSER, "Available-Dictionary": f":{digest}:"}


def browser_decode(body: bytes, dictionary: bytes) -> bytes:
    assert body[:8] == DCZ_MAGIC
    assert body[8:40] == hashlib.sha256(dictionary).digest()
    raw = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=raw).decompress(body[40:])


async def test_the_dictionary_is_served_immutable_for_the_api_paths(service: Running) -> None:
    shipped = SHIPPED.read_bytes()
    dict_id = DictionaryRegistry.id_of(shipped)
    response = await service.fetch(f"/dictionaries/{dict_id}.zdict")
    assert response.code == 200
    assert response.body == shipped
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response.headers["Use-As-Dictionary"] == f'match="{API}/*", id="{dict_id}"'
    again = await service.fetch(f"/dictionaries/{dict_id}.zdict", headers={"If-None-Match": response.headers["Etag"]})
    assert again.code == 304
    missing, body = await service.json(f"/dictionaries/{dict_id + 1}.zdict")
    assert missing.code == 404
    assert body["code"] == 40403
    answer = await service.fetch(LIST)
    assert answer.headers["Link"] == f'</dictionaries/{dict_id}.zdict>; rel="compression-dictionary"'
    vary = {name.strip().lower() for line in answer.headers.get_list("Vary") for name in line.split(",")}
    assert {"accept-encoding", "available-dictionary"} <= vary


async def test_a_client_holding_the_dictionary_gets_the_stored_frame_as_dcz(
    service: Running, redis_client: redis.asyncio.Redis
) -> None:
    shipped = SHIPPED.read_bytes()
    for path in (LIST, DETAIL, f"{API}/categories.json"):
        identity = await service.fetch(path, headers={"Accept-Encoding": "identity"})
        dcz = await service.fetch(path, headers=holding(shipped))
        assert dcz.headers["Content-Encoding"] == "dcz", path
        assert browser_decode(dcz.body, shipped) == identity.body
        assert dcz.headers["Etag"] == identity.headers["Etag"][:-1] + '-dcz"'
        assert len(dcz.body) < 0.6 * len(identity.body), (path, len(dcz.body), len(identity.body))
        unchanged = await service.fetch(path, headers={**holding(shipped), "If-None-Match": dcz.headers["Etag"]})
        assert unchanged.code == 304
    # The bytes on the wire are the stored frame's, behind the 40-byte prefix.
    entry = await service.services.catalog.detail.entry(7)
    framed = entry.dictionary_frame()
    assert framed is not None
    assert entry.frame is not None
    assert entry.frame.compression == COMPRESSION_ZSTD_RAW_DICT
    dcz = await service.fetch(DETAIL, headers=holding(shipped))
    assert dcz.body[40:] == framed[1]


async def test_a_client_without_the_dictionary_gets_the_usual_encodings(service: Running) -> None:
    other = train_dictionary(training_samples(details=300, pages=10), size=4096)
    for headers in (
        {"Accept-Encoding": BROWSER},  # no Available-Dictionary
        holding(other),  # another dictionary (an old one, after a rotation)
        {"Accept-Encoding": BROWSER, "Available-Dictionary": ":not base64!:"},
        {**holding(SHIPPED.read_bytes()), "Accept-Encoding": "gzip, zstd"},  # holds it, does not accept dcz
    ):
        response = await service.fetch(LIST, headers=headers)  # over Tornado's 1 KB floor for gzip
        assert response.code == 200
        assert response.headers.get("Content-Encoding") == "gzip", headers


async def test_after_a_rotation_each_client_gets_what_it_can_decode(
    seeded: Settings, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    """Old dictionary written, then [new, old]: values stored with the old one are still hits (and dcz for a
    client holding the old one); a client holding the new one gets gzip for them and dcz for what is stored anew.
    A reader without the old dictionary treats its values as misses and stores them anew."""
    old_file = tmp_path / "old.zdict"
    old_file.write_bytes(train_dictionary(training_samples(details=600, pages=30), size=8192))
    old, new = old_file.read_bytes(), SHIPPED.read_bytes()
    first = await run_service(with_sections(seeded, cache={"dictionaries": [str(old_file)]}))
    try:
        stored = await first.fetch(DETAIL, headers={"Accept-Encoding": "identity"})
    finally:
        await stop_service(first)
    both = await run_service(with_sections(seeded, cache={"dictionaries": [str(SHIPPED), str(old_file)]}))
    try:
        hit = await both.fetch(DETAIL, headers=holding(old))
        assert (hit.headers["X-Cache"], hit.headers["Content-Encoding"]) == ("hit", "dcz")
        assert browser_decode(hit.body, old) == stored.body
        assert hit.headers["Link"].startswith(f"</dictionaries/{DictionaryRegistry.id_of(new)}.zdict>")
        newer = await both.fetch(DETAIL, headers=holding(new))
        assert newer.headers.get("Content-Encoding") in (None, "gzip")  # the body: gzipped when over 1 KB
        fresh = await both.fetch(f"{API}/wallpaper/8.json", headers=holding(new))
        assert fresh.headers["Content-Encoding"] == "dcz"
    finally:
        await stop_service(both)
    only_new = await run_service(with_sections(seeded, cache={"dictionaries": [str(SHIPPED)]}))
    try:
        reloaded = await only_new.fetch(DETAIL, headers=holding(new))
        assert reloaded.headers["X-Cache"] == "miss"  # stored with a dictionary this reader lacks: a miss
        assert browser_decode(reloaded.body, new) == stored.body
    finally:
        await stop_service(only_new)
