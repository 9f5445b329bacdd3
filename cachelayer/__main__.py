"""``python -m cachelayer``: the command line (``_cli.py``)."""

from ._cli import main

raise SystemExit(main())
