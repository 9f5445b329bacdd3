"""cachelayer's benchmarks: run one with ``python -m benchmarks.<name>``; results land in benchmarks/results/."""
