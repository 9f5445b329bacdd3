"""A real browser: Debian's Chromium, headless, fetches the service's dictionary and then receives cached answers
as ``dcz`` (RFC 9842), decoding them into exactly the JSON the identity answer holds; across a dictionary rotation
every answer it gets still decodes to the right JSON. In CI chromium is installed (``make system-deps``) and a
missing one fails this test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio

from cachelayer import DictionaryRegistry, train_dictionary
from harness import free_port
from service.config import Settings
from service.dictionary import SHIPPED, training_samples
from tests.service._browser import Browser
from tests.service._support import API, run_service, stop_service, with_sections

pytestmark = pytest.mark.slow

PATHS = (f"{API}/wallpaper/7.json", f"{API}/wallpaperList.json?pageSize=20", f"{API}/categories.json")

# Fetch the dictionary as the page's Link says a browser may, then ask for an answer until Chromium sends it as
# dcz (it registers a dictionary asynchronously: a fetch right after can miss it), at most 10 s.
SCRIPT = """
(async () => {
  const dictionary = %(dictionary)s;
  if (dictionary) { await (await fetch(dictionary)).arrayBuffer(); }
  const out = [];
  for (const path of %(paths)s) {
    const deadline = performance.now() + 10000;
    let got;
    do {
      const r = await fetch(path, {cache: "no-store"});
      got = {path, status: r.status, encoding: r.headers.get("content-encoding"), link: r.headers.get("link"),
             body: await r.text()};
      if (got.encoding === "dcz" || !%(wait)s) break;
      await new Promise(resolve => setTimeout(resolve, 25));
    } while (performance.now() < deadline);
    out.push(got);
  }
  return JSON.stringify(out);
})()
"""


def script(paths: tuple[str, ...], dictionary: str | None, *, wait: bool) -> str:
    return SCRIPT % {"dictionary": json.dumps(dictionary), "paths": json.dumps(list(paths)), "wait": json.dumps(wait)}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = Browser(tmp_path / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


async def test_chromium_decodes_dcz_answers_into_the_identity_json(
    seeded: Settings, redis_client: redis.asyncio.Redis, browser: Browser, tmp_path: Path
) -> None:
    port = free_port()
    service = await run_service(seeded, port)
    try:
        identity = {path: orjson.loads((await service.fetch(path)).body) for path in PATHS}
        await browser.connect()
        await browser.navigate(f"http://127.0.0.1:{port}/healthz")  # a secure context: http://127.0.0.1
        dictionary = service.services.dictionary
        assert dictionary is not None
        got = json.loads(await browser.evaluate(script(PATHS, dictionary.path, wait=True)))
        for answer in got:
            assert answer["status"] == 200, answer["path"]
            assert answer["encoding"] == "dcz", answer["path"]
            assert json.loads(answer["body"]) == identity[answer["path"]], answer["path"]
            assert answer["link"] == dictionary.link
    finally:
        await stop_service(service)

    # A rotation: the service now writes with a new dictionary and still reads the one the browser holds.
    new_file = tmp_path / "new.zdict"
    new_file.write_bytes(train_dictionary(training_samples(details=600, pages=30), size=8192))
    rotated = await run_service(with_sections(seeded, cache={"dictionaries": [str(new_file), str(SHIPPED)]}), port)
    try:
        fresh = f"{API}/wallpaper/8.json"  # stored after the rotation: with the new dictionary
        paths = (*PATHS, fresh)
        identity[fresh] = orjson.loads((await rotated.fetch(fresh, headers={"Accept-Encoding": "identity"})).body)
        got = json.loads(await browser.evaluate(script(paths, None, wait=False)))
        encodings = {answer["path"]: answer["encoding"] for answer in got}
        for answer in got:
            assert answer["status"] == 200, answer["path"]
            assert json.loads(answer["body"]) == identity[answer["path"]], answer["path"]
        assert encodings[PATHS[0]] == "dcz"  # stored with the dictionary the browser holds
        assert encodings[fresh] != "dcz"  # the browser does not hold the new one yet: gzip or identity
        new_id = DictionaryRegistry.id_of(new_file.read_bytes())
        assert got[0]["link"] == f'</dictionaries/{new_id}.zdict>; rel="compression-dictionary"'
    finally:
        await stop_service(rotated)
