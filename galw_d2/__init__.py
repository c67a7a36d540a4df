"""galw_d2: Grouped Adaptive Loss Weighting (GALW, ACM MM 2022) for person search, as a detectron2 plugin.

Importing the package registers its datasets and model components in detectron2's registries.
"""
from .config import add_galw_config
from . import data, modeling  # noqa: F401,E402  (registers datasets and model components)

__version__ = "0.1.0"
__all__ = ["add_galw_config", "__version__"]
