"""Loss weighting strategies of GALW (SPEC §3, paper Eq. 5 and Eq. 9). Pure torch, no detectron2.

One class covers the three learned strategies: every task i belongs to one *slot* g(i), each slot has
a learned ``s_g = log sigma_g`` (init 0), and

    total = sum_g [ exp(-2 s_g) * sum_{i in g} L_i / k_i  +  s_g  +  lambda * |exp(s_g) - 1| ]

- ULWF (Kendall et al. 2018): one slot per task, lambda = 0.
- RULWF (Eq. 5): one slot per task, lambda = 1 (the paper's |sigma - 1| regulariser).
- GALW (Eq. 9): one slot per group; each task keeps its own k (1 = cls, 2 = reg).

``exp(-2 s) = 1 / sigma^2`` and ``s = log sigma``, so this is Eq. 5 in a numerically safe form; the
total can be negative (``s`` < 0 when a loss is small). Slots whose tasks are all absent from a step's
loss dict contribute ``0 * s_g`` so that every parameter stays in the graph (DistributedDataParallel
with ``find_unused_parameters=False`` needs that) but is not moved.

:class:`FixedWeighting` (the baseline) multiplies each loss by a constant weight (default 1).

Both return ``(total, info)`` where ``info`` holds detached per-task/per-slot sigma and effective
weights for logging (never put them into the loss dict).
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["FixedWeighting", "UncertaintyWeighting", "build_weighting_from_lists", "STRATEGIES"]

STRATEGIES = ("fixed", "ulwf", "rulwf", "galw")


class FixedWeighting(nn.Module):
    """``total = sum_i w_i * L_i``; tasks without an entry in ``weights`` get ``default_weight``."""

    def __init__(self, weights: Optional[Mapping[str, float]] = None, default_weight: float = 1.0):
        super().__init__()
        self.weights = dict(weights or {})
        self.default_weight = float(default_weight)

    def weight(self, name: str) -> float:
        return float(self.weights.get(name, self.default_weight))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        if not losses:
            raise ValueError("FixedWeighting: empty loss dict")
        total = sum(self.weight(k) * v for k, v in losses.items())
        info = {f"galw/weight/{k}": self.weight(k) for k in losses}
        return total, info

    def extra_repr(self) -> str:
        return f"weights={self.weights}, default_weight={self.default_weight}"


class UncertaintyWeighting(nn.Module):
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
        super().__init__()
        self.tasks = list(tasks)
        if len(set(self.tasks)) != len(self.tasks) or not self.tasks:
            raise ValueError(f"UncertaintyWeighting: tasks must be non-empty and unique, got {self.tasks}")
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
    @staticmethod
    def _check_groups(tasks: Sequence[str], groups: Sequence[Sequence[str]]) -> None:
        seen: Dict[str, int] = {}
        for gi, g in enumerate(groups):
            if len(g) == 0:
                raise ValueError(f"GALW groups: group {gi} is empty (groups={list(map(list, groups))})")
            for t in g:
                if t in seen:
                    raise ValueError(f"GALW groups: task '{t}' is in group {seen[t]} and group {gi}")
                seen[t] = gi
        unknown = [t for t in seen if t not in tasks]
        if unknown:
            raise ValueError(f"GALW groups: unknown task(s) {unknown}; known tasks: {list(tasks)}")
        missing = [t for t in tasks if t not in seen]
        if missing:
            raise ValueError(f"GALW groups: task(s) {missing} are in no group; every task needs exactly one")

    def set_groups(self, groups: Optional[Sequence[Sequence[str]]], reset: bool = True) -> None:
        """Assign tasks to slots (group j -> slot j); ``None`` = one slot per task.

        With ``reset`` the used slots' ``s`` are set back to ``init_log_sigma`` (online regrouping).
        """
        if groups is None:
            groups = [[t] for t in self.tasks]
        groups = [list(g) for g in groups]
        self._check_groups(self.tasks, groups)
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
        unknown = [n for n in losses if n not in self.index]
        if unknown:
            raise KeyError(
                f"GALW weighting: loss(es) {unknown} have no weighting parameter; known tasks {self.tasks}. "
                "List every loss name of the model in GALW.TASKS (or GALW.GROUPS for strategy galw)."
            )
        if not losses:
            raise ValueError("GALW weighting: empty loss dict")
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

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, lam={self.lam}, clamp={self.clamp}, groups={self.groups}"


def _parse_pairs(items: Sequence[str], what: str, cast) -> Dict[str, object]:
    out = {}
    for it in items:
        if "=" not in str(it):
            raise ValueError(f"{what}: entry '{it}' must look like 'loss_name=value'")
        name, val = str(it).split("=", 1)
        try:
            out[name.strip()] = cast(val.strip())
        except ValueError as e:
            raise ValueError(f"{what}: bad value in '{it}': {e}") from None
    return out


def build_weighting_from_lists(
    strategy: str,
    tasks: Sequence[str],
    kinds: Mapping[str, str],
    groups: Optional[Sequence[Sequence[str]]] = None,
    lam: float = 1.0,
    init_log_sigma: float = 0.0,
    clamp: Optional[Tuple[float, float]] = None,
    fixed_weights: Optional[Mapping[str, float]] = None,
    num_slots: Optional[int] = None,
) -> nn.Module:
    """Build the weighting module of ``strategy`` (one of :data:`STRATEGIES`).

    ``kinds`` maps every task to "cls" (k=1) or "reg" (k=2). ``groups`` is required for "galw".
    """
    from ..tasks import TASK_KIND_K

    strategy = str(strategy).lower()
    if strategy not in STRATEGIES:
        raise ValueError(f"GALW.STRATEGY: unknown strategy '{strategy}'; expected one of {STRATEGIES}")
    if strategy == "fixed":
        return FixedWeighting(fixed_weights)
    bad = {t: kinds.get(t) for t in tasks if kinds.get(t) not in TASK_KIND_K}
    if bad:
        raise ValueError(f"GALW task kinds: {bad} (expected one of {sorted(TASK_KIND_K)})")
    k = [TASK_KIND_K[kinds[t]] for t in tasks]
    if strategy == "galw":
        if not groups:
            raise ValueError("GALW.STRATEGY 'galw' needs GALW.GROUPS (lists of task names; see tools/group_tasks.py)")
        return UncertaintyWeighting(tasks, k, groups, lam=lam, init_log_sigma=init_log_sigma, clamp=clamp,
                                    num_slots=num_slots)
    if groups:
        raise ValueError(f"GALW.GROUPS is set but GALW.STRATEGY is '{strategy}'; use 'galw' for groups")
    return UncertaintyWeighting(tasks, k, None, lam=(0.0 if strategy == "ulwf" else lam),
                                init_log_sigma=init_log_sigma, clamp=clamp, num_slots=num_slots)
