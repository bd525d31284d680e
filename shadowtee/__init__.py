"""shadowtee: shadow-mode a candidate ML model on real traffic.

This package is the thin command line (`shadowtee.cli`) and the settings loader it shares
(`shadowtee.config`). The product lives in `proxy`, `serving`, `comparator` and `reports`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
