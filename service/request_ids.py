"""Per-process request ids and the pid header value, reset in a forked child.

A generated request id is ``<8 random hex of this process>-<counter, hex>``: unique across workers and restarts
for any practical purpose, and ~10x cheaper than ``uuid4().hex`` (no urandom read per request)."""

from __future__ import annotations

import itertools
import os

__all__ = ["Process", "new_request_id"]


class Process:
    pid = str(os.getpid())
    prefix = os.urandom(4).hex() + "-"
    counter = itertools.count(1)

    @classmethod
    def reset(cls) -> None:
        cls.pid = str(os.getpid())
        cls.prefix = os.urandom(4).hex() + "-"
        cls.counter = itertools.count(1)


os.register_at_fork(after_in_child=Process.reset)


def new_request_id() -> str:
    return f"{Process.prefix}{next(Process.counter):x}"
