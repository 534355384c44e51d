"""Data helpers shared by the paper packages: video I/O, the synthetic world, robust datasets."""
