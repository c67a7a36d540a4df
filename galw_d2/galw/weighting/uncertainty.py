"""(Grouped, regularised) uncertainty weighting: ULWF, RULWF and GALW (SPEC §3, Eq. 5 and Eq. 9).

One class covers the learned strategies: every task i belongs to one *slot* g(i), each slot has a
learned ``s_g = log sigma_g`` (init 0), and

    total = sum_g [ exp(-2 s_g) * sum_{i in g} L_i / k_i  +  s_g  +  lambda * |exp(s_g) - 1| ]

- ``ulwf`` (Kendall et al. 2018): one slot per task, lambda = 0.
- ``rulwf`` (Eq. 5): one slot per task, lambda = GALW.LAMBDA (the paper: 1, the |sigma - 1| regulariser).
- ``galw`` (Eq. 9): one slot per group of GALW.GROUPS, lambda = GALW.LAMBDA; each task keeps its k.
- ``ulwf_grouped`` (Table 3's "ULWF + task grouping"): one slot per group, lambda = 0.

``exp(-2 s) = 1 / sigma^2`` and ``s = log sigma``, so this is Eq. 5 in a numerically safe form; the
total can be negative (``s`` < 0 when a loss is small). Slots whose tasks are all absent from a step's
loss dict contribute ``0 * s_g`` so that every parameter stays in the graph (DistributedDataParallel
with ``find_unused_parameters=False`` needs that) but is not moved.

``forward`` returns ``(total, info)`` where ``info`` holds detached per-task/per-slot sigma and
effective weights for logging (never put them into the loss dict).
"""

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ...tasks import TASK_KIND_K
from .base import WEIGHTING_REGISTRY, LossWeighting, build_loss_weighting, check_groups, task_divisors, weighting_tasks

__all__ = ["UncertaintyWeighting", "ULWF", "RULWF", "GALW", "ULWFGrouped", "build_weighting_from_lists"]


class UncertaintyWeighting(LossWeighting):
    """Learned (grouped) uncertainty weighting: ULWF, RULWF or GALW.

    Args:
        tasks: task (loss) names this weighting knows, in a fixed order.
        k: divisor per task (1.0 for classification-like, 2.0 for regression), same length as ``tasks``.
        groups: list of groups (lists of task names) covering every task exactly once; ``None`` = one
            group per task (ULWF / RULWF).
        lam: weight of the regulariser ``|exp(s) - 1|`` (0 = ULWF, 1 = the paper's RULWF).
        init_log_sigma: initial ``s`` (the paper: sigma = 1, s = 0).
        clamp: optional ``(lo, hi)``; :meth:`clamp_` projects ``s`` into it (the trainer calls it after
            every optimizer step). ``None`` = no clamp.
        num_slots: number of learned ``s`` (>= number of groups). Extra slots stay unused until
            :meth:`set_groups` uses them (online regrouping reserves one slot per task).

    State: ``log_sigma`` (parameter, (num_slots,)), ``assignment`` (buffer, (T,) int64 slot of each
    task) — both saved in checkpoints.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        k: Sequence[float],
        groups: Optional[Sequence[Sequence[str]]] = None,
        lam: float = 1.0,
        init_log_sigma: float = 0.0,
        clamp: Optional[Tuple[float, float]] = None,
        num_slots: Optional[int] = None,
    ):
        super().__init__(tasks)
        if not self.tasks:
            raise ValueError("UncertaintyWeighting: tasks must be non-empty")
        if len(k) != len(self.tasks):
            raise ValueError(f"UncertaintyWeighting: {len(k)} k values for {len(self.tasks)} tasks")
        if any(float(x) <= 0 for x in k):
            raise ValueError(f"UncertaintyWeighting: k must be > 0, got {list(k)}")
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.lam = float(lam)
        self.init_log_sigma = float(init_log_sigma)
        if clamp is not None:
            lo, hi = float(clamp[0]), float(clamp[1])
            if not lo < hi:
                raise ValueError(f"UncertaintyWeighting: clamp needs lo < hi, got {clamp}")
            clamp = (lo, hi)
        self.clamp = clamp
        n_groups = len(groups) if groups is not None else len(self.tasks)
        num_slots = int(num_slots) if num_slots is not None else n_groups
        if num_slots < n_groups:
            raise ValueError(f"UncertaintyWeighting: num_slots={num_slots} < {n_groups} groups")
        self.register_buffer("k", torch.tensor([float(x) for x in k], dtype=torch.float32), persistent=False)
        self.log_sigma = nn.Parameter(torch.full((num_slots,), self.init_log_sigma))
        self.register_buffer("assignment", torch.zeros(len(self.tasks), dtype=torch.int64))
        self.set_groups(groups, reset=False)

    # ---------------------------------------------------------------- groups
    def set_groups(self, groups: Optional[Sequence[Sequence[str]]], reset: bool = True) -> None:
        """Assign tasks to slots (group j -> slot j); ``None`` = one slot per task.

        With ``reset`` the used slots' ``s`` are set back to ``init_log_sigma`` (online regrouping).
        """
        if groups is None:
            groups = [[t] for t in self.tasks]
        groups = [list(g) for g in groups]
        check_groups(self.tasks, groups)
        if len(groups) > self.log_sigma.numel():
            raise ValueError(f"GALW groups: {len(groups)} groups but only {self.log_sigma.numel()} slots")
        assign = torch.zeros(len(self.tasks), dtype=torch.int64)
        for gi, g in enumerate(groups):
            for t in g:
                assign[self.index[t]] = gi
        self.assignment.copy_(assign.to(self.assignment.device))
        if reset:
            with torch.no_grad():
                self.log_sigma.fill_(self.init_log_sigma)

    @property
    def groups(self) -> List[List[str]]:
        """Current groups as lists of task names (slot order; empty slots left out)."""
        out: Dict[int, List[str]] = {}
        for t, g in zip(self.tasks, self.assignment.tolist()):
            out.setdefault(int(g), []).append(t)
        return [out[g] for g in sorted(out)]

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project ``s`` into ``clamp`` (no-op without a clamp)."""
        if self.clamp is not None:
            self.log_sigma.clamp_(self.clamp[0], self.clamp[1])

    # ---------------------------------------------------------------- loss
    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Weighted total of ``losses`` (name -> scalar tensor) and a dict of logging scalars.

        Raises ``KeyError`` naming the loss when ``losses`` holds a name this weighting does not know.
        """
        self.check_known(losses)
        s = self.log_sigma
        assign = self.assignment.tolist()
        n_slots = s.numel()
        group_loss: List[Optional[torch.Tensor]] = [None] * n_slots
        for name, value in losses.items():
            i = self.index[name]
            term = value / self.k[i].to(value.dtype)
            g = assign[i]
            group_loss[g] = term if group_loss[g] is None else group_loss[g] + term
        total = None
        for g in range(n_slots):
            sg = s[g]
            if group_loss[g] is None:
                term = sg * 0.0  # keeps the slot in the graph without moving it
            else:
                term = group_loss[g] * torch.exp(-2.0 * sg) + sg
                if self.lam != 0.0:
                    term = term + self.lam * torch.abs(torch.exp(sg) - 1.0)
            total = term if total is None else total + term
        info: Dict[str, float] = {}
        sd = s.detach().cpu().tolist()
        used = sorted({assign[self.index[n]] for n in losses})
        multi = any(len(g) > 1 for g in self.groups)
        for g in used:
            info[f"galw/group{g}/sigma"] = math.exp(sd[g])
        for name in losses:
            i = self.index[name]
            g = assign[i]
            info[f"galw/sigma/{name}"] = math.exp(sd[g])
            # effective weight of L_i in the total: 1 / (k_i sigma_g^2)
            info[f"galw/weight/{name}"] = math.exp(-2.0 * sd[g]) / float(self.k[i])
        if not multi:  # per-task strategies: the group scalars duplicate the task ones
            info = {k: v for k, v in info.items() if not k.startswith("galw/group")}
        return total, info

    def effective_weights(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """1 / (k_i sigma_g(i)^2) of each loss (its weight in the total)."""
        sd = self.log_sigma.detach().cpu().tolist()
        assign = self.assignment.tolist()
        return {n: math.exp(-2.0 * sd[assign[self.index[n]]]) / float(self.k[self.index[n]]) for n in losses}

    def after_step(self, losses: Mapping[str, torch.Tensor], iteration: int) -> None:
        self.clamp_()

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, lam={self.lam}, clamp={self.clamp}, groups={self.groups}"


def _uncertainty_args(cfg, tasks: Optional[Sequence[str]], lam: float, grouped: bool) -> dict:
    """Constructor arguments of the registered uncertainty strategies from ``cfg.GALW``."""
    g = cfg.GALW
    name = str(g.STRATEGY)
    groups = [list(x) for x in g.GROUPS] if len(g.GROUPS) else None
    if grouped and not groups:
        raise ValueError(f"GALW.STRATEGY '{name}' needs GALW.GROUPS (lists of task names; see tools/group_tasks.py)")
    if not grouped and groups:
        raise ValueError(f"GALW.GROUPS is set but GALW.STRATEGY is '{name}'; use 'galw' or 'ulwf_grouped' for groups")
    tasks = weighting_tasks(cfg, tasks)
    clamp = tuple(float(x) for x in g.LOG_SIGMA_CLAMP) if len(g.LOG_SIGMA_CLAMP) else None
    if clamp is not None and len(clamp) != 2:
        raise ValueError(f"GALW.LOG_SIGMA_CLAMP must be [] or [lo, hi], got {list(g.LOG_SIGMA_CLAMP)}")
    online = bool(g.ONLINE_REGROUP.ENABLED)
    if online and grouped:
        raise ValueError(f"GALW.ONLINE_REGROUP needs GALW.STRATEGY ulwf or rulwf (start per task), got '{name}'")
    return {
        "tasks": tasks,
        "k": task_divisors(cfg, tasks),
        "groups": groups,
        "lam": lam,
        "init_log_sigma": float(g.INIT_LOG_SIGMA),
        "clamp": clamp,
        "num_slots": len(tasks) if online else None,
    }


@WEIGHTING_REGISTRY.register("ulwf")
class ULWF(UncertaintyWeighting):
    """Kendall et al. (2018): one learned sigma per task, no regulariser."""

    @classmethod
    def from_config(cls, cfg, tasks=None):
        return _uncertainty_args(cfg, tasks, lam=0.0, grouped=False)


@WEIGHTING_REGISTRY.register("rulwf")
class RULWF(UncertaintyWeighting):
    """Eq. 5: one learned sigma per task + lambda |sigma - 1| (lambda = GALW.LAMBDA)."""

    @classmethod
    def from_config(cls, cfg, tasks=None):
        return _uncertainty_args(cfg, tasks, lam=float(cfg.GALW.LAMBDA), grouped=False)


@WEIGHTING_REGISTRY.register("galw")
class GALW(UncertaintyWeighting):
    """Eq. 9: one learned sigma per group of GALW.GROUPS + lambda |sigma - 1|."""

    @classmethod
    def from_config(cls, cfg, tasks=None):
        return _uncertainty_args(cfg, tasks, lam=float(cfg.GALW.LAMBDA), grouped=True)


@WEIGHTING_REGISTRY.register("ulwf_grouped")
class ULWFGrouped(UncertaintyWeighting):
    """Table 3's "ULWF + task grouping": one learned sigma per group, no regulariser."""

    @classmethod
    def from_config(cls, cfg, tasks=None):
        return _uncertainty_args(cfg, tasks, lam=0.0, grouped=True)


def build_weighting_from_lists(
    strategy: str,
    tasks: Sequence[str],
    kinds: Mapping[str, str],
    groups: Optional[Sequence[Sequence[str]]] = None,
    lam: float = 1.0,
    init_log_sigma: float = 0.0,
    clamp: Optional[Tuple[float, float]] = None,
    fixed_weights: Optional[Mapping[str, float]] = None,
) -> LossWeighting:
    """Build a registered strategy from plain lists (for code without a config, e.g. a notebook).

    Goes through the same path as the config (:func:`build_loss_weighting` on a config holding these
    values). ``kinds`` maps every task to "cls" (k=1) or "reg" (k=2); ``fixed_weights`` are the weights
    of strategy "fixed" (others 1).
    """
    # detectron2's CfgNode (via galw_d2.config) only for this convenience path: the weighting modules
    # themselves import no detectron2, so torch-only code (e.g. torchreid engines) can use them.
    from detectron2.config import CfgNode

    from ...config import add_loss_weighting_config

    bad = {t: kinds.get(t) for t in tasks if kinds.get(t) not in TASK_KIND_K}
    if bad:
        raise ValueError(f"GALW task kinds: {bad} (expected one of {sorted(TASK_KIND_K)})")
    cfg = CfgNode()
    add_loss_weighting_config(cfg)
    g = cfg.GALW
    g.STRATEGY = str(strategy)
    g.TASKS = list(tasks)
    g.TASK_KINDS = [f"{t}={kinds[t]}" for t in tasks]
    g.GROUPS = [list(x) for x in groups] if groups else []
    g.LAMBDA = float(lam)
    g.INIT_LOG_SIGMA = float(init_log_sigma)
    g.LOG_SIGMA_CLAMP = list(clamp) if clamp is not None else []
    g.FIXED.PRESET = "ones"
    g.FIXED_WEIGHTS = [f"{k}={float(v)}" for k, v in (fixed_weights or {}).items()]
    return build_loss_weighting(cfg, tasks=list(tasks))
