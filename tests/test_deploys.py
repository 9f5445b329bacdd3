"""Safe across deploys (issue 11, item 5): two processes with different definitions of one dataclass share a Redis.

During a rolling deploy the old and the new code run side by side: the same module path, the same function name,
but the returned dataclass gained a field or renamed one. Each process must only ever get its own shape back
(0 decode errors, 0 values of the wrong shape), because the key carries the return type's shape version. A
control run with identical definitions shows that equal shapes do share entries (the version is the shape's, not
the process's).

Each "deploy" is a real subprocess with its own ``deploy_app`` module (written to a temporary directory), driven
line by line over stdin so the phases interleave exactly: the old code fills the cache, the new code reads the
same arguments, the old code reads again, then both hammer the same keys at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from harness import RedisServer

REPO = Path(__file__).resolve().parent.parent

OLD_ITEM = """
@dataclasses.dataclass
class Item:
    id: int
    title: str

def expected(item_id: int) -> Item:
    return Item(id=item_id, title=f"wallpaper {item_id}")
"""

DEFINITIONS = {
    "same": OLD_ITEM,
    "field-added": """
@dataclasses.dataclass
class Item:
    id: int
    title: str
    tags: list[str] = dataclasses.field(default_factory=list)  # new field, with a default: old JSON would decode

def expected(item_id: int) -> Item:
    return Item(id=item_id, title=f"wallpaper {item_id}", tags=[f"tag{item_id}"])
""",
    "field-renamed": """
@dataclasses.dataclass
class Item:
    id: int
    name: str  # was `title`

def expected(item_id: int) -> Item:
    return Item(id=item_id, name=f"wallpaper {item_id}")
""",
}

APP = """
from __future__ import annotations

import dataclasses

from cachelayer import cached

{definition}

LOADS = 0


@cached(ttl=600)
async def get_item(item_id: int) -> Item:
    global LOADS
    LOADS += 1
    return expected(item_id)
"""

# Commands on stdin, one JSON answer per line on stdout: "key N", "run FIRST STOP", "quit".
RUNNER = textwrap.dedent(
    """
    import asyncio, dataclasses, json, sys

    import deploy_app
    from cachelayer import Cache, set_default_cache

    async def main(url, namespace):
        cache = Cache.from_url(url, namespace=namespace, timeout=1.0)
        set_default_cache(cache)
        await cache.connect()
        own_fields = [f.name for f in dataclasses.fields(deploy_app.Item)]
        wrong = []
        loop = asyncio.get_running_loop()
        print(json.dumps({"ready": True}), flush=True)
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
            if line[0] == "key":
                answer = {"key": deploy_app.get_item.key(int(line[1]))}
            elif line[0] == "run":
                for item_id in range(int(line[1]), int(line[2])):
                    value = await deploy_app.get_item(item_id)
                    shape_ok = type(value) is deploy_app.Item and [
                        f.name for f in dataclasses.fields(value)
                    ] == own_fields
                    if not shape_ok or value != deploy_app.expected(item_id):
                        wrong.append(repr(value)[:200])
                stats = cache.stats()
                answer = {
                    "wrong": wrong, "decode_errors": stats["decode_errors"], "hits": stats["hits"],
                    "loads": deploy_app.LOADS, "store_errors": stats["store_errors"],
                }
            else:
                break
            print(json.dumps(answer), flush=True)
        await cache.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


class Deploy:
    """One running version of the application: a subprocess answering commands."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 120)
        assert line, f"the deploy exited: {await self.stderr()}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        return (await self.process.stderr.read()).decode(errors="replace")[-2000:]

    async def stop(self) -> None:
        if self.process.returncode is None:
            with_stdin = self.process.stdin
            if with_stdin is not None:
                with_stdin.write(b"quit\n")
                await with_stdin.drain()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@pytest_asyncio.fixture
async def launch(tmp_path: Path, private_redis: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """Start a deploy whose ``deploy_app.Item`` is ``DEFINITIONS[variant]``, on the test's own Redis."""
    namespace = f"t-deploy-{uuid.uuid4().hex[:10]}"
    started: list[Deploy] = []

    async def start(variant: str, label: str) -> Deploy:
        code = tmp_path / label
        code.mkdir()
        (code / "deploy_app.py").write_text(APP.format(definition=DEFINITIONS[variant]))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RUNNER, private_redis.url, namespace,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO)])}, cwd=code,
        )
        deploy = Deploy(process)
        started.append(deploy)
        assert process.stdout is not None
        ready = await asyncio.wait_for(process.stdout.readline(), 120)
        assert ready, await deploy.stderr()
        return deploy

    yield start
    for deploy in started:
        await deploy.stop()


@pytest.mark.slow
@pytest.mark.parametrize("new_definition", ["field-added", "field-renamed"])
async def test_two_definitions_of_one_dataclass_never_read_each_others_values(
    launch: Callable[..., Any], new_definition: str
) -> None:
    old, new = await asyncio.gather(launch("same", "old"), launch(new_definition, "new"))
    old_key, new_key = (await old.ask("key 1"))["key"], (await new.ask("key 1"))["key"]
    assert old_key != new_key  # the shape version differs...
    assert old_key.split("@")[0] == new_key.split("@")[0]  # ...for the same module, function and arguments
    assert ":{deploy_app.get_item@t" in old_key

    filled = await old.ask("run 0 50")  # the old code fills the cache
    assert (filled["loads"], filled["hits"]) == (50, 0)
    read_by_new = await new.ask("run 0 50")  # the new code asks for the same items: none of the old values
    assert (read_by_new["loads"], read_by_new["hits"]) == (50, 0)
    again = await old.ask("run 0 50")  # the old code's entries are intact: all hits
    assert (again["loads"], again["hits"]) == (50, 50)

    # Both at once on the same keys, the old code's writes and the new code's interleaved.
    during_old, during_new = await asyncio.gather(old.ask("run 0 200"), new.ask("run 0 200"))
    for answer in (during_old, during_new):
        assert answer["wrong"] == []  # 0 values of the wrong shape
        assert answer["decode_errors"] == 0  # 0 decode errors
        assert answer["store_errors"] == 0
        assert answer["hits"] > 0  # the cache really served each deploy from Redis
    assert during_old["loads"] == during_new["loads"] == 200  # each loaded every item once, for itself


@pytest.mark.slow
async def test_identical_definitions_share_entries(launch: Callable[..., Any]) -> None:
    # The control: the version follows the shape, not the process. Same definition, same key, shared values.
    first, second = await asyncio.gather(launch("same", "first"), launch("same", "second"))
    assert (await first.ask("key 1"))["key"] == (await second.ask("key 1"))["key"]
    assert (await first.ask("run 0 50"))["loads"] == 50
    shared = await second.ask("run 0 50")
    assert (shared["loads"], shared["hits"], shared["wrong"], shared["decode_errors"]) == (0, 50, [], 0)
