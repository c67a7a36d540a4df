"""GALW: grouped adaptive loss weighting (paper Sec. 3; SPEC §3).

- :mod:`.weighting` fixed / ULWF / RULWF / grouped RULWF (= GALW), pure torch.
- :mod:`.recorder` per-task gradient magnitudes over shared parameters (Eq. 6), per epoch.
- :mod:`.grouping` slopes (Eq. 7), transform (Eq. 8), hierarchical clustering and other strategies.
- :mod:`.plots` Fig. 3-style curves and the dendrogram.
- :mod:`.workflow` the two-phase workflow (phase 1 records, grouping, phase 2 config).
The trainer is :class:`galw_d2.engine.GALWTrainer`. User guide: docs/galw.md.
"""

from .grouping import group_tasks, load_trends
from .recorder import GradientTrendRecorder
from .weighting import FixedWeighting, UncertaintyWeighting

__all__ = ["FixedWeighting", "UncertaintyWeighting", "GradientTrendRecorder", "group_tasks", "load_trends"]
