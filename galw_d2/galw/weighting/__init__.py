"""Loss-weighting methods (GALW.STRATEGY), one module each, registered in :data:`WEIGHTING_REGISTRY`.

- ``fixed`` (:mod:`.fixed`): constant per-task weights, presets of galw_d2/tasks.py (Table 1).
- ``ulwf``, ``rulwf``, ``galw``, ``ulwf_grouped`` (:mod:`.uncertainty`): (grouped, regularised)
  uncertainty weighting, Eq. 5 and Eq. 9.
- ``dwa`` (:mod:`.dwa`), ``rlw`` (:mod:`.rlw`), ``famo`` (:mod:`.famo`), ``gradnorm`` (:mod:`.gradnorm`):
  other loss-weighting methods, one weight per task or per group of GALW.GROUPS (:mod:`.slots`).
- ``upgrad``, ``pcgrad``, ``mgda``, ``imtl_g``, ``aligned_mtl``, ``dualproj``, ``cagrad``
  (:mod:`.aggregation`): gradient aggregation on the shared parameters through torchjd.
"""

from .aggregation import AGGREGATORS, AggregationWeighting
from .base import (
    WEIGHTING_REGISTRY,
    LossWeighting,
    build_loss_weighting,
    parse_name_values,
    task_divisors,
    weighting_tasks,
)
from .dwa import DWA
from .famo import FAMO
from .fixed import FixedWeighting
from .gradnorm import GradNorm
from .rlw import RLW
from .slots import SlotWeighting
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
    "SlotWeighting",
    "DWA",
    "RLW",
    "FAMO",
    "GradNorm",
    "AggregationWeighting",
    "AGGREGATORS",
]
