"""The two-phase GALW workflow (Algorithm 1): the one public API every entry point uses.

    from galw_d2.galw.workflow import TwoPhase
    wf = TwoPhase(cfg, trainer_cls=PersonSearchTrainer, output_dir="output/run")
    p1 = wf.run_phase1()            # trains with GALW.PHASE1.STRATEGY, records the trends
    grouping = wf.group(p1.trends)  # GALW.GROUPING.*: groups.json, phase-2 YAML, Fig. 3, dendrogram
    p2 = wf.run_phase2(grouping["groups"])   # GALW.STRATEGY "galw" (or another grouped strategy)

or step by step with the functions below (``phase1_cfg``, ``run_training``, ``make_groups``,
``phase2_cfg``). ``tools/demo.py``, ``tools/ablation.py`` and ``tools/group_tasks.py`` are thin
applications over these calls; online regrouping (one run instead of two, our extension) is
``GALW.ONLINE_REGROUP.ENABLED`` and uses the same grouping function
(:func:`galw_d2.galw.grouping.group_tasks_from_cfg`).

Same initial weights in both phases (and in every arm of a study): :func:`run_training` seeds every
RNG with ``cfg.SEED`` right before the trainer builds the model; :func:`resolve_seed` first replaces
an unset seed (``SEED < 0``) by a drawn one that both phases then share, and
:func:`initial_state_digest` lets callers check it (the demo records the check in metrics.json).

This module never imports the engine: the trainer class is passed in (``trainer_cls``: any
``GALWTrainer`` subclass), keeping the layers acyclic.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.utils.env import seed_all_rng

from .grouping import GROUPING_REGISTRY, group_tasks, group_tasks_from_cfg, load_trends

__all__ = [
    "PhaseResult",
    "TwoPhase",
    "resolve_seed",
    "training_cfg",
    "phase1_cfg",
    "phase2_cfg",
    "phase2_yaml",
    "run_training",
    "run_phase1",
    "make_groups",
    "make_groups_from_cfg",
    "write_grouping",
    "initial_state_digest",
    "GROUPED_STRATEGIES",
]

# Weighting strategies that take GALW.GROUPS (phase 2 of the workflow).
GROUPED_STRATEGIES = ("galw", "ulwf_grouped")


def resolve_seed(cfg):
    """A copy of ``cfg`` whose ``SEED`` is >= 0: an unset seed (< 0) is replaced by a drawn one, so
    that both phases, built from this config, start from identical weights."""
    c = cfg.clone()
    c.defrost()
    if int(c.SEED) < 0:
        c.SEED = int(np.random.SeedSequence().generate_state(1)[0] % (2**31))
    c.freeze()
    return c


def training_cfg(
    cfg,
    strategy: str,
    groups: Optional[Sequence[Sequence[str]]] = None,
    record: bool = False,
    output_dir: Optional[str] = None,
):
    """A copy of ``cfg`` (seed resolved) that trains with weighting ``strategy``: ``groups`` for the
    grouped strategies (:data:`GROUPED_STRATEGIES`, required there and refused elsewhere), gradient
    recording on or off, online regrouping off, optional ``OUTPUT_DIR``."""
    if (strategy in GROUPED_STRATEGIES) != (groups is not None):
        raise ValueError(
            f"strategy '{strategy}': groups are "
            + ("required" if strategy in GROUPED_STRATEGIES else "only for " + str(GROUPED_STRATEGIES))
        )
    c = resolve_seed(cfg)
    c.defrost()
    c.GALW.STRATEGY = strategy
    c.GALW.GROUPS = [list(g) for g in groups] if groups is not None else []
    if groups is not None:
        c.GALW.TASKS = []
    c.GALW.RECORD.ENABLED = bool(record)
    c.GALW.ONLINE_REGROUP.ENABLED = False
    if output_dir is not None:
        c.OUTPUT_DIR = output_dir
    c.freeze()
    return c


def phase1_cfg(cfg, output_dir: Optional[str] = None):
    """Phase 1 (Algorithm 1's "first training"): weighting ``GALW.PHASE1.STRATEGY`` (default fixed,
    Fig. 3), one weight per task, gradient recording on; no groups."""
    strategy = str(cfg.GALW.PHASE1.STRATEGY)
    if strategy in GROUPED_STRATEGIES:
        raise ValueError(f"GALW.PHASE1.STRATEGY '{strategy}' needs groups; phase 1 is the ungrouped training")
    return training_cfg(cfg, strategy, record=True, output_dir=output_dir)


def phase2_cfg(cfg, groups: Sequence[Sequence[str]], output_dir: Optional[str] = None, strategy: str = "galw"):
    """A copy of ``cfg`` for phase 2: grouped ``strategy`` (galw = Eq. 9, ulwf_grouped = Table 3's
    ULWF + grouping) with ``groups``, recording off."""
    if strategy not in GROUPED_STRATEGIES:
        raise ValueError(f"phase 2 strategy '{strategy}': expected one of {GROUPED_STRATEGIES}")
    return training_cfg(cfg, strategy, groups=groups, output_dir=output_dir)


def run_training(cfg, trainer_cls, resume: bool = False, train: bool = True, on_built=None):
    """Seed every RNG with ``cfg.SEED`` (>= 0), build ``trainer_cls(cfg)``, load weights / resume, train.

    Seeding right before the build gives every phase and every arm of a seed the same initial
    weights and the same data order. ``on_built(trainer)`` runs after the build, before any weights
    are loaded (e.g. to score the random initialisation). Returns the trainer (``train=False``: built
    and loaded only); ``trainer.galw_initial_digest`` is :func:`initial_state_digest` of the weights
    training starts from (None when resumed from a checkpoint).
    """
    if int(cfg.SEED) < 0:
        raise ValueError("run_training needs cfg.SEED >= 0 (see resolve_seed) so that runs share initial weights")
    seed_all_rng(int(cfg.SEED))
    trainer = trainer_cls(cfg)
    if on_built is not None:
        on_built(trainer)
    trainer.resume_or_load(resume=resume)
    model = getattr(trainer.model, "module", trainer.model)  # through DDP
    trainer.galw_initial_digest = initial_state_digest(model.state_dict()) if trainer.start_iter == 0 else None
    if train:
        trainer.train()
    return trainer


def initial_state_digest(state: Dict[str, torch.Tensor]) -> str:
    """sha256 over the model's tensors (the loss-weighting state left out: one sigma per task in
    phase 1, one per group in phase 2)."""
    h = hashlib.sha256()
    for k in sorted(state):
        if k.startswith("galw_weighting."):
            continue
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_phase1(cfg, trainer_cls, resume: bool = False) -> str:
    """Train phase 1 (:func:`phase1_cfg` of ``cfg``) and return the trends file's path."""
    trainer = run_training(phase1_cfg(cfg), trainer_cls, resume=resume)
    return trainer.trends_path()


def phase2_yaml(groups: Sequence[Sequence[str]], source: str = "", strategy: str = "galw") -> str:
    """A config fragment that turns on grouped weighting with ``groups`` (merges after the model YAML)."""
    lines = [
        f"# Phase-2 GALW groups{(' from ' + source) if source else ''} (written by galw_d2.galw.workflow).",
        "# Merge after the model config: cfg.merge_from_file(<model yaml>); cfg.merge_from_file(<this>).",
        "GALW:",
        "  # grouped RULWF (Eq. 9): one learned sigma per group",
        f'  STRATEGY: "{strategy}"',
        "  # one list of loss names per group",
        "  GROUPS:",
    ]
    for g in groups:
        lines.append("    - [" + ", ".join(json.dumps(t) for t in g) + "]")
    return "\n".join(lines) + "\n"


def write_grouping(result: dict, trends: dict, output_dir: str, source: str = "", plots: bool = True) -> dict:
    """Write groups.json, galw_phase2.yaml, gradient_trends.png and dendrogram.png; return their paths.

    ``plots=False`` skips the two PNGs (their paths are then None).
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "groups": os.path.join(output_dir, "groups.json"),
        "config": os.path.join(output_dir, "galw_phase2.yaml"),
        "trends_plot": os.path.join(output_dir, "gradient_trends.png"),
        "dendrogram": os.path.join(output_dir, "dendrogram.png"),
    }
    res = dict(result)
    res["source"] = source
    res["trends_settings"] = trends.get("settings", {})
    with open(paths["groups"], "w") as f:
        json.dump(res, f, indent=1)
    with open(paths["config"], "w") as f:
        f.write(phase2_yaml(result["groups"], source))
    if not plots:
        paths["trends_plot"] = paths["dendrogram"] = None
        return paths
    from .plots import plot_dendrogram, plot_trends  # matplotlib: only when figures are asked for

    plot_trends(trends, paths["trends_plot"], result["groups"])
    if (
        not result.get("transformed")
        or plot_dendrogram(result["transformed"], paths["dendrogram"], result["settings"]["linkage"]) is None
    ):
        paths["dendrogram"] = None
    return paths


def make_groups(
    trends_path: str,
    num_groups: int,
    output_dir: str,
    strategy: str = "slope",
    slope: str = "mean_diff",
    log_base: float = 10.0,
    linkage: str = "average",
    seed: int = 0,
    manual: Optional[str] = None,
    plots: bool = True,
) -> dict:
    """Group from a trends file and write every output; returns the groups.json dict plus ``paths``."""
    trends = load_trends(trends_path)
    res = group_tasks(
        trends, num_groups, strategy=strategy, slope=slope, log_base=log_base, linkage=linkage, seed=seed, manual=manual
    )
    res["paths"] = write_grouping(res, trends, output_dir, source=trends_path, plots=plots)
    return res


def make_groups_from_cfg(trends_path: str, cfg, output_dir: str, plots: bool = True) -> dict:
    """:func:`make_groups` with every grouping setting from ``cfg.GALW.GROUPING``."""
    trends = load_trends(trends_path)
    res = group_tasks_from_cfg(trends, cfg)
    res["paths"] = write_grouping(res, trends, output_dir, source=trends_path, plots=plots)
    return res


@dataclass
class PhaseResult:
    """One trained phase: its config, trainer (model inside) and, for phase 1, the trends file."""

    cfg: object
    trainer: object
    initial_digest: Optional[str]  # None when resumed from a checkpoint
    trends: Optional[str] = None


class TwoPhase:
    """Algorithm 1 on one config: phase 1 (record), grouping, phase 2 (grouped), same initial weights.

    Args:
        cfg: the full config (model, data, schedule, ``GALW.*``); ``SEED < 0`` is resolved once here.
        trainer_cls: a ``GALWTrainer`` subclass (e.g. ``PersonSearchTrainer``).
        output_dir: phases train in ``output_dir/phase1``, ``output_dir/phase2``; grouping in
            ``output_dir/grouping``.
        resume: continue each phase from its last checkpoint.
        on_built: optional ``callback(phase, trainer)`` after a trainer is built, before weights are
            loaded and training starts (e.g. to evaluate the random initialisation).
    """

    def __init__(self, cfg, trainer_cls, output_dir: str, resume: bool = False, on_built=None):
        self.cfg = resolve_seed(cfg)
        self.trainer_cls = trainer_cls
        self.output_dir = output_dir
        self.resume = resume
        self.on_built = on_built

    def _run(self, phase: int, cfg) -> PhaseResult:
        cb = None if self.on_built is None else (lambda trainer: self.on_built(phase, trainer))
        trainer = run_training(cfg, self.trainer_cls, resume=self.resume, on_built=cb)
        return PhaseResult(cfg, trainer, trainer.galw_initial_digest)

    def phase1_cfg(self):
        return phase1_cfg(self.cfg, os.path.join(self.output_dir, "phase1"))

    def phase2_cfg(self, groups, strategy: str = "galw", base_cfg=None):
        """Phase 2's config from ``base_cfg`` (default: the workflow's config; e.g. another schedule),
        with the workflow's seed."""
        base = self.cfg if base_cfg is None else base_cfg
        if base_cfg is not None:
            base = base.clone()
            base.defrost()
            base.SEED = self.cfg.SEED
        return phase2_cfg(base, groups, os.path.join(self.output_dir, "phase2"), strategy=strategy)

    def run_phase1(self) -> PhaseResult:
        res = self._run(1, self.phase1_cfg())
        res.trends = res.trainer.trends_path()
        if not os.path.exists(res.trends):
            raise FileNotFoundError(f"phase 1 wrote no gradient-trends file at {res.trends}")
        return res

    def group(self, trends_path: str, plots: bool = True) -> dict:
        name = str(self.cfg.GALW.GROUPING.STRATEGY)
        if name not in GROUPING_REGISTRY:
            raise ValueError(f"GALW.GROUPING.STRATEGY '{name}': expected one of {GROUPING_REGISTRY.names()}")
        return make_groups_from_cfg(trends_path, self.cfg, os.path.join(self.output_dir, "grouping"), plots=plots)

    def run_phase2(self, groups, strategy: str = "galw", base_cfg=None) -> PhaseResult:
        return self._run(2, self.phase2_cfg(groups, strategy, base_cfg))
