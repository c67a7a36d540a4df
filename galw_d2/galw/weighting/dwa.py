"""Dynamic Weight Average (DWA).

S. Liu, E. Johns, A. J. Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (MTAN),
Sec. 3.3, Eq. 1:

    w_k(t) = K exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T),   r_k(t-1) = L_k(t-1) / L_k(t-2)

where ``L_k(t)`` is the average training loss of task k over epoch t, ``T`` the temperature (the paper:
2) and ``K`` the number of tasks (so the weights sum to K); ``w_k = 1`` in the first two epochs. The
total is ``sum_k w_k(t) L_k``; the weights are constants (no gradient). An "epoch" here is
``GALW.DWA.EPOCH_ITERS`` iterations (0 = ``GALW.RECORD.EPOCH_ITERS``, 0 again = one pass over
``DATASETS.TRAIN``): epoch e = iterations ``[e E, (e+1) E)``, so the boundaries do not depend on where a
run was resumed. The running sums and the last two epoch averages are buffers: checkpoints restore them.

With ``GALW.GROUPS``, k runs over the groups (``L_g = sum_{i in g} L_i``, K = number of groups): the
weight of a group follows the descent rate of its summed loss. Cost: none (loss values only).
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from .base import WEIGHTING_REGISTRY
from .slots import SlotWeighting, slot_args

__all__ = ["DWA", "dwa_epoch_iters"]


def dwa_epoch_iters(cfg) -> int:
    """``GALW.DWA.EPOCH_ITERS``, else ``GALW.RECORD.EPOCH_ITERS``, else one pass over DATASETS.TRAIN."""
    if int(cfg.GALW.DWA.EPOCH_ITERS) > 0:
        return int(cfg.GALW.DWA.EPOCH_ITERS)
    if int(cfg.GALW.RECORD.EPOCH_ITERS) > 0:
        return int(cfg.GALW.RECORD.EPOCH_ITERS)
    # only in this fallback: the dataset length needs detectron2's catalog (lazy import keeps this
    # module torch-only otherwise)
    from ...data.catalog import epoch_iters_from_cfg

    if "DATASETS" not in cfg:
        raise ValueError(
            "DWA needs an epoch length: set GALW.DWA.EPOCH_ITERS (or GALW.RECORD.EPOCH_ITERS); this "
            "config has no DATASETS.TRAIN to derive it from"
        )
    return epoch_iters_from_cfg(cfg)


@WEIGHTING_REGISTRY.register("dwa")
class DWA(SlotWeighting):
    """DWA (module docstring).

    Args:
        tasks, groups: see :class:`~galw_d2.galw.weighting.slots.SlotWeighting`.
        temperature: T of Eq. 1 (> 0).
        epoch_iters: iterations per epoch (> 0).

    State (buffers, in checkpoints): ``epoch_sum`` (S,) float64 loss sums of the running epoch,
    ``epoch_count`` (S,) steps each slot was present, ``prev_avg`` (2, S) the averages of epochs
    t-2 (row 0) and t-1 (row 1), ``prev_present`` (2, S) whether the slot was present in that epoch
    (every buffer stays finite: the trainer treats a non-finite buffer as divergence),
    ``epochs_done`` () completed epochs.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        groups: Optional[Sequence[Sequence[str]]] = None,
        *,
        temperature: float = 2.0,
        epoch_iters: int,
    ):
        super().__init__(tasks, groups)
        if not float(temperature) > 0:
            raise ValueError(f"GALW.DWA.TEMPERATURE must be > 0, got {temperature}")
        if int(epoch_iters) <= 0:
            raise ValueError(f"DWA: epoch_iters must be > 0, got {epoch_iters}")
        self.temperature = float(temperature)
        self.epoch_iters = int(epoch_iters)
        s = self.num_slots
        self.register_buffer("epoch_sum", torch.zeros(s, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros(s, dtype=torch.long))
        self.register_buffer("prev_avg", torch.zeros((2, s), dtype=torch.float64))
        self.register_buffer("prev_present", torch.zeros((2, s), dtype=torch.bool))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg, tasks=None):
        return {
            **slot_args(cfg, tasks),
            "temperature": float(cfg.GALW.DWA.TEMPERATURE),
            "epoch_iters": dwa_epoch_iters(cfg),
        }

    def slot_weights(self) -> torch.Tensor:
        """(S,) float64 weights of the current epoch: ones in the first two epochs, else Eq. 1. A slot
        absent from one of the two epochs gets ratio 1."""
        s = self.num_slots
        if int(self.epochs_done) < 2:
            return torch.ones(s, dtype=torch.float64, device=self.prev_avg.device)
        ok = self.prev_present.all(dim=0) & (self.prev_avg[0] > 0)
        r = torch.where(
            ok,
            self.prev_avg[1] / torch.where(ok, self.prev_avg[0], torch.ones_like(self.prev_avg[0])),
            torch.ones_like(self.prev_avg[0]),
        )
        return s * torch.softmax(r / self.temperature, dim=0)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        idx, vals = self.slot_losses(losses)
        w = self.slot_weights()
        total = sum(float(w[g]) * v for g, v in zip(idx, vals))
        return total, self.slot_info(losses, {g: float(w[g]) for g in idx})

    def effective_weights(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        w = self.slot_weights()
        return {n: float(w[self.slot_of[n]]) for n in losses}

    @torch.no_grad()
    def after_step(self, losses: Mapping[str, torch.Tensor], iteration: int) -> None:
        idx, vals = self.slot_losses(losses)
        for g, v in zip(idx, vals):
            self.epoch_sum[g] += float(v.detach())
            self.epoch_count[g] += 1
        if (int(iteration) + 1) % self.epoch_iters == 0:  # the epoch's last iteration: close it
            avg = self.epoch_sum / self.epoch_count.clamp(min=1).to(torch.float64)
            self.prev_avg[0] = self.prev_avg[1]
            self.prev_avg[1] = avg
            self.prev_present[0] = self.prev_present[1]
            self.prev_present[1] = self.epoch_count > 0
            self.epochs_done += 1
            self.epoch_sum.zero_()
            self.epoch_count.zero_()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}, epoch_iters={self.epoch_iters}"
