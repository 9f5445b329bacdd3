"""What a universe is made of: processes, rows, and the actors that read, write and break things.

A row has a style that fixes how it is cached and so how it can be invalidated: ``plain`` (``Cache.fetch``;
``delete`` or an explicit ``set``), ``tagged`` (``fetch`` with tags; ``invalidate_tags``, with or without
``mark_stale``, or ``delete``) and ``decorated`` (an ``@cached`` function; its ``invalidate``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["CHAOS", "Chaos", "Reader", "Row", "Spec", "Writer", "random_spec"]

CHAOS = ("evict_value", "evict_tickets", "evict_tag", "kill_loader", "cancel_reader", "store_fails")
_READS = {"plain": ("fetch", "fetch", "fetch", "refresh"), "tagged": ("fetch", "fetch", "fetch", "refresh"),
          "decorated": ("decorated", "decorated", "decorated-refresh")}  # fmt: skip
_WRITES = {"plain": ("delete",), "tagged": ("tags", "mark_stale", "delete"), "decorated": ("decorated",)}


@dataclass(frozen=True, slots=True)
class Row:
    style: str  # plain | tagged | decorated
    warm: bool = False  # cached (version 0) before the actors start


@dataclass(frozen=True, slots=True)
class Reader:
    process: int
    row: int = 0
    via: str = "fetch"  # fetch | refresh | decorated | decorated-refresh


@dataclass(frozen=True, slots=True)
class Writer:
    process: int
    row: int = 0
    via: str = "delete"  # delete | set | tags | mark_stale | decorated


@dataclass(frozen=True, slots=True)
class Chaos:
    what: str  # one of CHAOS
    row: int = 0  # evict_tag: the stamp of the row's own tag (``t{row}``)
    process: int = 0  # store_fails: whose store calls fail
    target: int = 0  # cancel_reader: which reader
    calls: int = 1  # store_fails: how many calls


@dataclass(frozen=True, slots=True)
class Spec:
    processes: int
    rows: tuple[Row, ...]
    readers: tuple[Reader, ...]
    writers: tuple[Writer, ...]
    chaos: tuple[Chaos, ...] = ()
    time_passes: bool = False  # an actor lets time pass the TTL: stale-while-revalidate and refreshes

    def describe(self) -> str:
        parts = [f"{self.processes}p", "rows=" + ",".join(f"{r.style}{'*' if r.warm else ''}" for r in self.rows)]
        parts += [f"R{r.process}:{r.via}@{r.row}" for r in self.readers]
        parts += [f"W{w.process}:{w.via}@{w.row}" for w in self.writers]
        parts += [f"C:{c.what}" for c in self.chaos]
        if self.time_passes:
            parts.append("time")
        return " ".join(parts)


def random_spec(rng: random.Random) -> Spec:
    """A universe of 1-3 processes, 1-2 rows, 1-3 readers, 1-2 writers and 0-2 chaos actors."""
    processes = rng.choice((1, 2, 2, 3))
    rows = tuple(
        Row(rng.choice(("plain", "tagged", "tagged", "decorated")), rng.random() < 0.5)
        for _ in range(rng.choice((1, 1, 2)))
    )
    readers = tuple(
        Reader(rng.randrange(processes), row, rng.choice(_READS[rows[row].style]))
        for row in (rng.randrange(len(rows)) for _ in range(rng.randint(1, 3)))
    )
    writers = [
        Writer(rng.randrange(processes), row, rng.choice(_WRITES[rows[row].style]))
        for row in (rng.randrange(len(rows)) for _ in range(rng.randint(1, 2)))
    ]
    # An explicit write-through `set` races any other writer of its row by itself (the older value written
    # last): only a row's sole writer may use it.
    for index, writer in enumerate(writers):
        sole = sum(w.row == writer.row for w in writers) == 1
        if sole and rows[writer.row].style == "plain" and rng.random() < 0.25:
            writers[index] = Writer(writer.process, writer.row, "set")
    chaos = tuple(
        Chaos(
            rng.choice(CHAOS),
            row=rng.randrange(len(rows)),
            process=rng.randrange(processes),
            target=rng.randrange(len(readers)),
            calls=rng.randint(1, 3),
        )
        for _ in range(rng.choice((0, 0, 1, 1, 2)))
    )
    return Spec(processes, rows, readers, tuple(writers), chaos, time_passes=rng.random() < 0.15)
