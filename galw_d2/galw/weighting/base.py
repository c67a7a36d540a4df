"""Loss weighting: the registry, the base class of every method, and the builders.

A loss-weighting method turns the model's dict of *unweighted* task losses ``{name: L_i}`` (the paper's
``L_ori_i``) into the scalar that is back-propagated. Every method is an ``nn.Module`` (learned
weights are parameters: the optimizer, DDP and checkpoints see them) registered in
:data:`WEIGHTING_REGISTRY` under the name ``GALW.STRATEGY`` selects, and built from the config by its
``from_config`` classmethod, which returns the constructor's keyword arguments (detectron2's
``from_config`` pattern, without importing detectron2: these modules need only torch and fvcore, so
torch-only code such as a torchreid engine can use them). Adding a method is one new module::

    @WEIGHTING_REGISTRY.register("mymethod")
    class MyWeighting(LossWeighting):
        def __init__(self, tasks, *, alpha=1.0): ...
        @classmethod
        def from_config(cls, cfg, tasks=None):
            return {"tasks": weighting_tasks(cfg, tasks), "alpha": cfg.GALW.MYMETHOD.ALPHA}
        def forward(self, losses): return total, info

The training step (:class:`galw_d2.engine.GALWStep`) calls, per iteration: ``forward`` (inside the
model wrapper, so DDP sees learned weights), :meth:`LossWeighting.backward` (default
``total.backward()``; gradient-aggregation methods override it), then, after ``optimizer.step()``,
:meth:`LossWeighting.after_step` (projections such as the log-sigma clamp, or updates that need the
step's losses).

Methods that need the per-task gradients on the shared parameters (GradNorm, gradient aggregation)
set ``needs_shared_parameters = True``; :class:`galw_d2.engine.GALWTrainer` then calls
:meth:`LossWeighting.bind_shared_parameters` once with the parameters matched by
``shared_param_patterns`` (or ``GALW.RECORD.SHARED_PARAMS`` when that is empty).
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ...tasks import TASK_KIND_K, TASKS, task_kind
from ...utils.registry import NamedRegistry

__all__ = [
    "WEIGHTING_REGISTRY",
    "LossWeighting",
    "build_loss_weighting",
    "parse_name_values",
    "check_groups",
    "weighting_tasks",
    "task_divisors",
]

WEIGHTING_REGISTRY = NamedRegistry("LOSS_WEIGHTING")
WEIGHTING_REGISTRY.__doc__ = """Loss-weighting methods by ``GALW.STRATEGY`` name (fixed, ulwf, rulwf, galw, ...)."""


def parse_name_values(items: Sequence[Any], what: str, cast: Callable[[str], Any] = str) -> Dict[str, Any]:
    """Parse config lists of ``"name=value"`` strings (the one parser of such lists in galw_d2).

    Args:
        items: e.g. ``["loss_box_reg=reg", "loss_cls=2"]``.
        what: the config key, for error messages (``"GALW.TASK_KINDS"``).
        cast: applied to each value (``float`` for weights).
    Returns:
        ``{name: cast(value)}`` in input order. Raises ``ValueError`` naming ``what`` and the entry.
    """
    out: Dict[str, Any] = {}
    for it in items:
        if "=" not in str(it):
            raise ValueError(f"{what}: entry {str(it)!r} must look like 'name=value'")
        name, val = (s.strip() for s in str(it).split("=", 1))
        if not name:
            raise ValueError(f"{what}: entry {str(it)!r} has an empty name")
        try:
            out[name] = cast(val)
        except ValueError as e:
            raise ValueError(f"{what}: bad value in {str(it)!r}: {e}") from None
    return out


def check_groups(tasks: Sequence[str], groups: Sequence[Sequence[str]]) -> None:
    """``ValueError`` unless ``groups`` partition ``tasks`` (every task in exactly one non-empty group)."""
    seen: Dict[str, int] = {}
    for gi, g in enumerate(groups):
        if len(g) == 0:
            raise ValueError(f"GALW.GROUPS: group {gi} is empty (groups={[list(x) for x in groups]})")
        for t in g:
            if t in seen:
                raise ValueError(f"GALW.GROUPS: task '{t}' is in group {seen[t]} and group {gi}")
            seen[t] = gi
    unknown = [t for t in seen if t not in tasks]
    if unknown:
        raise ValueError(f"GALW.GROUPS: unknown task(s) {unknown}; known tasks: {list(tasks)}")
    missing = [t for t in tasks if t not in seen]
    if missing:
        raise ValueError(f"GALW.GROUPS: task(s) {missing} are in no group; every task needs exactly one")


def weighting_tasks(cfg, tasks: Optional[Sequence[str]] = None) -> List[str]:
    """The task (loss) names a weighting knows: ``tasks`` if given, else ``GALW.TASKS``, else the names
    in ``GALW.GROUPS``, else every task of the task table (galw_d2/tasks.py)."""
    if tasks:
        return list(tasks)
    if len(cfg.GALW.TASKS):
        return [str(t) for t in cfg.GALW.TASKS]
    if len(cfg.GALW.GROUPS):
        return [str(t) for g in cfg.GALW.GROUPS for t in g]
    return [t.name for t in TASKS]


def task_divisors(cfg, tasks: Sequence[str]) -> List[float]:
    """k of Eq. 5 per task (1 = classification-like, 2 = regression): the task table's kind,
    ``GALW.DEFAULT_KIND`` for other losses, ``GALW.TASK_KINDS`` overrides."""
    kinds = {t: task_kind(t, cfg.GALW.DEFAULT_KIND) for t in tasks}
    kinds.update({k: v for k, v in parse_name_values(cfg.GALW.TASK_KINDS, "GALW.TASK_KINDS").items() if k in kinds})
    bad = {t: k for t, k in kinds.items() if k not in TASK_KIND_K}
    if bad:
        raise ValueError(f"GALW task kinds: {bad} (expected one of {sorted(TASK_KIND_K)})")
    return [TASK_KIND_K[kinds[t]] for t in tasks]


class LossWeighting(nn.Module):
    """Base class of the loss-weighting methods.

    Args:
        tasks: the task (loss) names the method weights, in a fixed order.

    Subclasses implement :meth:`forward` and :meth:`effective_weights`; the hooks :meth:`backward` and
    :meth:`after_step` default to the plain weighted sum.
    """

    #: True for methods that differentiate each task w.r.t. the shared parameters (GradNorm, aggregation).
    needs_shared_parameters: bool = False
    #: regexes selecting those parameters by name; empty = ``GALW.RECORD.SHARED_PARAMS``.
    shared_param_patterns: Sequence[str] = ()

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        self.tasks = list(tasks)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"{type(self).__name__}: task names must be unique, got {self.tasks}")

    @classmethod
    def from_config(cls, cfg, tasks: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Keyword arguments of the constructor from ``cfg.GALW`` (``tasks``: the model's loss names)."""
        raise NotImplementedError(f"{cls.__name__} has no from_config")

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Weighted total of ``losses`` (name -> scalar) and detached logging scalars (never losses)."""
        raise NotImplementedError

    def effective_weights(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """The current weight of each loss in the total, d total / d L_i (detached floats)."""
        raise NotImplementedError

    def backward(self, total: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> None:
        """Fill ``.grad`` of every trained parameter. Default: ``total.backward()``."""
        total.backward()

    def after_step(self, losses: Mapping[str, torch.Tensor], iteration: int) -> None:
        """Called once after ``optimizer.step()`` with the step's (detached-able) losses."""

    def bind_shared_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Receive the shared parameters theta_m (called once by the trainer when
        ``needs_shared_parameters``). Default: ignored. They are NOT registered as submodule
        parameters (the model owns them: no duplicate in the state dict or the optimizer)."""

    def check_known(self, losses: Mapping[str, torch.Tensor]) -> None:
        """``KeyError`` naming every loss this method has no weight for; ``ValueError`` if empty."""
        if not losses:
            raise ValueError(f"{type(self).__name__}: empty loss dict")
        unknown = [n for n in losses if n not in self.tasks]
        if unknown:
            raise KeyError(
                f"GALW weighting: loss(es) {unknown} have no weighting parameter; known tasks {self.tasks}. "
                "List every loss name of the model in GALW.TASKS (or GALW.GROUPS for strategy galw)."
            )


def build_loss_weighting(cfg, tasks: Optional[Sequence[str]] = None) -> LossWeighting:
    """The method ``cfg.GALW.STRATEGY`` names, built by its ``from_config(cfg, tasks)``.

    Args:
        cfg: a config with galw_d2's keys (``add_galw_config`` or ``add_loss_weighting_config``).
        tasks: the loss names of the model; ``None`` = :func:`weighting_tasks`' default.
    """
    name = str(cfg.GALW.STRATEGY)
    if name not in WEIGHTING_REGISTRY:
        raise ValueError(f"GALW.STRATEGY: unknown strategy '{name}'; registered: {WEIGHTING_REGISTRY.names()}")
    cls = WEIGHTING_REGISTRY.get(name)
    return cls(**cls.from_config(cfg, tasks=tasks))
