"""vislang.shared: what two or more vislang paper packages use.

Submodules are imported on demand (``from vislang.shared.data import video``) so that the CLI starts
fast and a package pays only for what it uses.
"""

__version__ = "0.1.0"
