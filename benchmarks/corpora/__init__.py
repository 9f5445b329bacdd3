"""Public JSON corpora for ``benchmarks.codecs``: where they come from and how they are extracted (README.md)."""
