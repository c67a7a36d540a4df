"""Loss-weighting methods (GALW.STRATEGY), one module each, registered in :data:`WEIGHTING_REGISTRY`.

- ``fixed`` (:mod:`.fixed`): constant per-task weights, presets of galw_d2/tasks.py (Table 1).
- ``ulwf``, ``rulwf``, ``galw``, ``ulwf_grouped`` (:mod:`.uncertainty`): (grouped, regularised)
  uncertainty weighting, Eq. 5 and Eq. 9.
"""
from .base import (WEIGHTING_REGISTRY, LossWeighting, build_loss_weighting, parse_name_values, task_divisors,
                   weighting_tasks)
from .fixed import FixedWeighting
from .uncertainty import GALW, RULWF, ULWF, ULWFGrouped, UncertaintyWeighting, build_weighting_from_lists

__all__ = [
    "WEIGHTING_REGISTRY",
    "LossWeighting",
    "build_loss_weighting",
    "build_weighting_from_lists",
    "parse_name_values",
    "task_divisors",
    "weighting_tasks",
    "FixedWeighting",
    "UncertaintyWeighting",
    "ULWF",
    "RULWF",
    "GALW",
    "ULWFGrouped",
]
