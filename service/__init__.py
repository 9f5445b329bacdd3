"""The wallpaper API service built on cachelayer (and the synthetic data it is tested and benchmarked with)."""
