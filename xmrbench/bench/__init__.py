"""``xmrbench bench``: timings of the hot paths, reported as ratios within one run."""
