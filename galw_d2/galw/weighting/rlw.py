"""Random Loss Weighting (RLW).

B. Lin, F. Ye, Y. Zhang, I. W. Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test
for Multi-Task Learning", TMLR 2022 (Sec. 3, the RLW algorithm with the normal distribution):

    lambda = softmax(p),   p ~ N(0, I_K) drawn afresh every iteration,   total = sum_k lambda_k L_k

The weights sum to 1 (the paper); ``GALW.RLW.WEIGHT_SUM`` rescales them (K keeps the plain sum's
gradient scale on average, so ``SOLVER.BASE_LR`` tuned for fixed weights need not change). ``p`` is
drawn with the global torch CPU generator (seeded by detectron2's ``SEED``/``torch.manual_seed``) and
then moved to the losses' device, so a seed gives the same weights on CPU and GPU. No state.

With ``GALW.GROUPS`` one random weight per group (``L_g = sum_{i in g} L_i``). Cost: none.
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from .base import WEIGHTING_REGISTRY
from .slots import SlotWeighting, slot_args

__all__ = ["RLW"]


@WEIGHTING_REGISTRY.register("rlw")
class RLW(SlotWeighting):
    """RLW (module docstring).

    Args:
        tasks, groups: see :class:`~galw_d2.galw.weighting.slots.SlotWeighting`.
        weight_sum: the weights sum to this (the paper: 1).
    """

    def __init__(
        self, tasks: Sequence[str], groups: Optional[Sequence[Sequence[str]]] = None, *, weight_sum: float = 1.0
    ):
        super().__init__(tasks, groups)
        if not float(weight_sum) > 0:
            raise ValueError(f"GALW.RLW.WEIGHT_SUM must be > 0, got {weight_sum}")
        self.weight_sum = float(weight_sum)
        # the weights of the last forward (for effective_weights / the weighted probe); not saved
        self.register_buffer(
            "last_weights", torch.full((self.num_slots,), self.weight_sum / self.num_slots), persistent=False
        )

    @classmethod
    def from_config(cls, cfg, tasks=None):
        return {**slot_args(cfg, tasks), "weight_sum": float(cfg.GALW.RLW.WEIGHT_SUM)}

    def sample(self) -> torch.Tensor:
        """(S,) fresh weights: ``weight_sum * softmax(p)``, ``p ~ N(0, I)`` from the CPU generator."""
        p = torch.randn(self.num_slots, dtype=torch.float32)
        return self.weight_sum * torch.softmax(p, dim=0)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        idx, vals = self.slot_losses(losses)
        w = self.sample()
        self.last_weights.copy_(w)
        wl = w.tolist()
        total = sum(wl[g] * v for g, v in zip(idx, vals))
        return total, self.slot_info(losses, {g: wl[g] for g in idx})

    def effective_weights(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        w = self.last_weights.tolist()
        return {n: w[self.slot_of[n]] for n in losses}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_sum={self.weight_sum}"
