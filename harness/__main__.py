"""``python -m harness fault-proxy ...``: the child side of :class:`harness.faults.ProxyProcess` (a proxy switched
by commands on stdin)."""

from __future__ import annotations

import sys

from harness import faults

COMMANDS = {"fault-proxy": faults.main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m harness {{{','.join(COMMANDS)}}} ...")
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
