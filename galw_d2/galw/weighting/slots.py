"""Shared machinery of the multi-task methods added beside GALW: one weight (or Jacobian row) per *slot*.

A slot is one task, or one group of ``GALW.GROUPS`` (GALW's grouping applied to another method): its
loss is the plain sum of its tasks' losses, ``L_g = sum_{i in g} L_i``, and the method weights slots
instead of tasks (DWA, RLW, FAMO, GradNorm), or aggregates one Jacobian row per slot (UPGrad, PCGrad,
...). Without ``GALW.GROUPS`` every task is its own slot, i.e. the method as published. Unlike
GALW's Eq. 9, no ``1 / k_i`` divisor enters: ``k`` belongs to the Gaussian-likelihood derivation of
uncertainty weighting, not to these methods.

A slot none of whose tasks is in a step's loss dict is left out of that step (no weight, no row).
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .base import LossWeighting, check_groups, weighting_tasks

__all__ = ["SlotWeighting", "slot_args", "check_groups", "require_single_process"]


def slot_args(cfg, tasks: Optional[Sequence[str]] = None) -> dict:
    """``{"tasks", "groups"}`` from the config: the weighting's tasks and ``GALW.GROUPS`` (or None)."""
    groups = [[str(t) for t in g] for g in cfg.GALW.GROUPS] if len(cfg.GALW.GROUPS) else None
    return {"tasks": weighting_tasks(cfg, tasks), "groups": groups}


def require_single_process(name: str) -> None:
    """Methods that fill ``.grad`` themselves bypass DDP's gradient all-reduce: refuse world size > 1."""
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        raise NotImplementedError(
            f"{name} computes its own gradients (per-task backward passes), which DistributedDataParallel does "
            "not all-reduce; train it in a single process"
        )


class SlotWeighting(LossWeighting):
    """A method that weights slots (tasks, or groups of tasks).

    Args:
        tasks: the task (loss) names, in a fixed order.
        groups: lists of task names partitioning ``tasks`` (one slot each); ``None`` = one slot per task.

    Attributes:
        groups: the slots as lists of task names (slot order).
        slot_of: task name -> slot index.
    """

    def __init__(self, tasks: Sequence[str], groups: Optional[Sequence[Sequence[str]]] = None):
        super().__init__(tasks)
        if not self.tasks:
            raise ValueError(f"{type(self).__name__}: tasks must be non-empty")
        groups = [[t] for t in self.tasks] if not groups else [list(g) for g in groups]
        check_groups(self.tasks, groups)
        self.groups: List[List[str]] = groups
        self.slot_of: Dict[str, int] = {t: gi for gi, g in enumerate(groups) for t in g}
        self._shared: Optional[List[torch.nn.Parameter]] = None

    @property
    def num_slots(self) -> int:
        return len(self.groups)

    @property
    def grouped(self) -> bool:
        return any(len(g) > 1 for g in self.groups)

    def slot_losses(self, losses: Mapping[str, torch.Tensor]) -> Tuple[List[int], List[torch.Tensor]]:
        """The slots present in ``losses`` and their losses.

        Args:
            losses: name -> scalar tensor (every name must be a known task: ``KeyError`` otherwise).
        Returns:
            ``(idx, values)``: slot indices in increasing order, and ``L_g = sum_{i in g} L_i`` for each
            (scalar tensors, still in the graph).
        """
        self.check_known(losses)
        sums: Dict[int, torch.Tensor] = {}
        for name, value in losses.items():
            g = self.slot_of[name]
            sums[g] = value if g not in sums else sums[g] + value
        idx = sorted(sums)
        return idx, [sums[g] for g in idx]

    def slot_info(self, losses: Mapping[str, torch.Tensor], weights: Mapping[int, float]) -> Dict[str, float]:
        """Logging scalars: ``galw/weight/<loss>`` = its slot's weight, + ``galw/group<g>/weight`` if grouped."""
        info = {f"galw/weight/{n}": float(weights[self.slot_of[n]]) for n in losses if self.slot_of[n] in weights}
        if self.grouped:
            info.update({f"galw/group{g}/weight": float(w) for g, w in weights.items()})
        return info

    # ------------------------------------------------------------------ shared parameters
    def bind_shared_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError(f"{type(self).__name__}: no trainable shared parameter to bind")
        # a plain list attribute: the model owns these parameters (not registered here twice)
        self._shared = list(params)

    @property
    def shared_parameters(self) -> List[torch.nn.Parameter]:
        if self._shared is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the shared parameters: call bind_shared_parameters(params) "
                "(GALWTrainer does, with GALW.RECORD.SHARED_PARAMS or the method's own SHARED_PARAMS key)"
            )
        return self._shared

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, groups={self.groups}"
