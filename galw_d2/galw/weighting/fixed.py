"""Fixed per-task weights (the baseline of the paper's Tables 1-7): ``total = sum_i w_i L_i``."""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from ...tasks import fixed_weight_preset
from .base import WEIGHTING_REGISTRY, LossWeighting, parse_name_values

__all__ = ["FixedWeighting"]


@WEIGHTING_REGISTRY.register("fixed")
class FixedWeighting(LossWeighting):
    """``total = sum_i w_i * L_i``; a loss without an entry in ``weights`` gets ``default_weight``.

    Args:
        weights: loss name -> weight.
        default_weight: weight of every other loss (any loss name is accepted).

    Config: ``GALW.FIXED.PRESET`` (a row of galw_d2/tasks.py ``FIXED_WEIGHT_PRESETS``; default
    ``table1``, Table 1's best ROI-AlignPS* row) and ``GALW.FIXED_WEIGHTS`` ``"name=weight"`` overrides.
    """

    def __init__(
        self,
        weights: Optional[Mapping[str, float]] = None,
        default_weight: float = 1.0,
        tasks: Optional[Sequence[str]] = None,
    ):
        self_weights = {k: float(v) for k, v in (weights or {}).items()}
        super().__init__(list(tasks) if tasks else list(self_weights))
        self.weights = self_weights
        self.default_weight = float(default_weight)

    @classmethod
    def from_config(cls, cfg, tasks: Optional[Sequence[str]] = None):
        weights = fixed_weight_preset(str(cfg.GALW.FIXED.PRESET))
        weights.update(parse_name_values(cfg.GALW.FIXED_WEIGHTS, "GALW.FIXED_WEIGHTS", float))
        return {"weights": weights, "default_weight": 1.0, "tasks": tasks}

    def weight(self, name: str) -> float:
        return float(self.weights.get(name, self.default_weight))

    def effective_weights(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        return {k: self.weight(k) for k in losses}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        if not losses:
            raise ValueError("FixedWeighting: empty loss dict")
        total = sum(self.weight(k) * v for k, v in losses.items())
        info = {f"galw/weight/{k}": w for k, w in self.effective_weights(losses).items()}
        return total, info

    def extra_repr(self) -> str:
        return f"weights={self.weights}, default_weight={self.default_weight}"
