"""``python -m service serve|seed|dev``: see docs/service.md."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from .config import ConfigError, Settings, load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="The wallpaper API service.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML settings file (default: $WALLPAPER_CONFIG or config/wallpaper.toml)")

    serve = sub.add_parser("serve", help="serve the API")
    common(serve)
    serve.add_argument("--port", type=int, help="listen port (server.port)")
    serve.add_argument("--processes", type=int, help="worker processes, 0 = one per core (server.processes)")
    serve.add_argument("--loop", choices=["uvloop", "asyncio"], help="event loop (server.loop)")

    seed = sub.add_parser("seed", help="load the deterministic demo data (idempotent; continues a partial seed)")
    common(seed)
    seed.add_argument("--wallpapers", type=int, default=10_000, help="how many wallpapers (default 10000)")

    train = sub.add_parser("train-dictionary", help="rebuild the shipped zstd dictionary (service/dictionary.py)")
    train.add_argument("--out", required=True, help="the file to write (never over an existing one)")

    dev = sub.add_parser("dev", help="seed unless a complete seed is there, then serve (`make run`)")
    common(dev)
    dev.add_argument("--port", type=int, help="listen port (server.port; 8888 in the shipped file)")
    dev.add_argument("--wallpapers", type=int, default=10_000, help="how many wallpapers to seed when empty")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    server: dict[str, Any] = {}
    for name in ("port", "processes", "loop"):
        value = getattr(args, name, None)
        if value is not None:
            server[name] = value
    base = load_settings(args.config)
    if not server:
        return base
    return load_settings(args.config, server={**base.server.model_dump(), **server})


def _seed_settings(settings: Settings) -> Settings:
    """Seeding writes 500-document batches to a store that may be starting: budgets made for bulk writes."""
    mongo = settings.mongo.model_copy(
        update={"timeout_ms": 30_000, "socket_timeout_ms": 30_000, "server_selection_timeout_ms": 5_000}
    )
    return settings.model_copy(update={"mongo": mongo})


async def _seed(settings: Settings, wallpapers: int, *, dev: bool) -> dict[str, Any] | None:
    """Seed (``dev``: only when the stores do not hold a complete seed); None when nothing was needed."""
    from .logs import setup_logging
    from .seed import adopt, prepare_stores, seed, seed_state
    from .services import Services

    handle = setup_logging(settings.log)
    services = await Services.start(_seed_settings(settings), prepare=False)
    try:
        if dev:
            await prepare_stores(services)
            state = await seed_state(services, wallpapers)
            if state == "complete" or (state == "unmarked" and await adopt(services, wallpapers)):
                return None
            if state == "partial":
                print("a previous seed did not finish: finishing it", flush=True)
        return await seed(services, wallpapers)
    finally:
        await services.close()
        handle.stop()


def _curl_examples(port: int, admin_port: int, dictionaries: Sequence[str] = ()) -> str:
    base = f"http://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}"  # readiness and metrics: the admin port (docs/service.md)
    api = f"{base}/client/v3/wallpaper_4d"
    dcz: list[str] = []
    if dictionaries:  # what a browser does with the dictionary: fetch it once, then ask for dcz
        from pathlib import Path

        from cachelayer import DictionaryRegistry

        dict_id = DictionaryRegistry.id_of(Path(dictionaries[0]).read_bytes())
        held = "$(openssl dgst -sha256 -binary /tmp/wp.zdict | base64)"
        dcz = [
            f"  curl -s '{base}/dictionaries/{dict_id}.zdict' -o /tmp/wp.zdict",
            f"  curl -s '{api}/wallpaper/42.json' -H 'Accept-Encoding: dcz' -H \"Available-Dictionary: :{held}:\" "
            "-o /dev/null -D - | grep -i content-encoding",
        ]
    return "\n".join(
        [
            "ready. try:",
            f"  curl -s '{api}/wallpaperList.json?pageSize=5&page=1&sort=hot'",
            f"  curl -s '{api}/wallpaperList.json?pageSize=5&category=anime&sort=new'",
            f"  curl -s '{api}/wallpaper/42.json' -D - -o /dev/null",
            f"  curl -s '{api}/categories.json'",
            f"  curl -s -X POST '{api}/wallpaper/42/download'",
            *dcz,
            f"  curl -s '{base}/healthz'",
            f"  curl -s '{admin}/readyz'",
            f"  curl -s '{admin}/metrics' | head",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train-dictionary":
        from pathlib import Path

        from .dictionary import write_dictionary

        try:
            dict_id = write_dictionary(Path(args.out))
        except FileExistsError:
            print(f"wallpaper: {args.out} exists: a deployed dictionary is never overwritten", file=sys.stderr)
            return 2
        print(f"wrote {args.out}: dictionary {dict_id}")
        return 0
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"wallpaper: configuration error: {exc}", file=sys.stderr)
        return 2
    from .runtime import port_taken, serve

    if args.command in ("seed", "dev"):
        from .preflight import missing_stores

        problems = asyncio.run(missing_stores(settings))
        for problem in problems:
            print(f"wallpaper: {problem}", file=sys.stderr)
        if problems:
            return 1
    if args.command == "seed":
        done = asyncio.run(_seed(settings, args.wallpapers, dev=False))
        print(f"seeded: {done}")
        return 0
    taken = port_taken(settings)  # before seeding: a second `make run` stops here, not after a minute of work
    if taken is not None:
        print(f"wallpaper: {taken}", file=sys.stderr)
        return 2
    if args.command == "dev":
        done = asyncio.run(_seed(settings, args.wallpapers, dev=True))
        print("seeded: " + str(done) if done else "stores hold a complete seed: not seeding", flush=True)
        print(_curl_examples(settings.server.port, settings.admin.port, settings.cache.dictionaries), flush=True)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
