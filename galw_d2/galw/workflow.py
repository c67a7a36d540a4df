"""The two-phase GALW workflow (Algorithm 1) as three Python calls.

    from galw_d2.galw.workflow import run_phase1, make_groups, phase2_cfg
    trends = run_phase1(cfg, trainer_cls=MyTrainer)          # trains, records, returns trends path
    res = make_groups(trends, num_groups=4, output_dir=d)    # groups.json, phase2 YAML, PNGs
    cfg2 = phase2_cfg(cfg, res["groups"], output_dir=...)   # GALW.STRATEGY galw + GALW.GROUPS
    trainer = MyTrainer(cfg2); trainer.resume_or_load(resume=False); trainer.train()

``make_groups`` is what tools/group_tasks.py runs. Online regrouping (one run instead of two, our
extension) is a config switch instead: GALW.ONLINE_REGROUP.ENABLED (see docs/galw.md).
"""
import json
import os
from typing import Optional, Sequence

from .grouping import group_tasks, load_trends

__all__ = ["run_phase1", "make_groups", "phase2_cfg", "phase2_yaml", "write_grouping"]


def phase2_yaml(groups: Sequence[Sequence[str]], source: str = "") -> str:
    """A config fragment that turns on GALW with ``groups`` (merges into add_galw_config(get_cfg()))."""
    lines = [f"# Phase-2 GALW groups{(' from ' + source) if source else ''} (written by galw_d2.galw.workflow).",
             "# Merge after the model config: cfg.merge_from_file(<model yaml>); cfg.merge_from_file(<this>).",
             "GALW:",
             "  # grouped RULWF (Eq. 9): one learned sigma per group",
             '  STRATEGY: "galw"',
             "  # one list of loss names per group",
             "  GROUPS:"]
    for g in groups:
        lines.append("    - [" + ", ".join(json.dumps(t) for t in g) + "]")
    return "\n".join(lines) + "\n"


def write_grouping(result: dict, trends: dict, output_dir: str, source: str = "", plots: bool = True) -> dict:
    """Write groups.json, galw_phase2.yaml, gradient_trends.png and dendrogram.png; return their paths.

    ``plots=False`` skips the two PNGs (their paths are then None).
    """

    os.makedirs(output_dir, exist_ok=True)
    paths = {"groups": os.path.join(output_dir, "groups.json"),
             "config": os.path.join(output_dir, "galw_phase2.yaml"),
             "trends_plot": os.path.join(output_dir, "gradient_trends.png"),
             "dendrogram": os.path.join(output_dir, "dendrogram.png")}
    res = dict(result)
    res["source"] = source
    with open(paths["groups"], "w") as f:
        json.dump(res, f, indent=1)
    with open(paths["config"], "w") as f:
        f.write(phase2_yaml(result["groups"], source))
    if not plots:
        paths["trends_plot"] = paths["dendrogram"] = None
        return paths
    from .plots import plot_dendrogram, plot_trends

    plot_trends(trends, paths["trends_plot"], result["groups"])
    if plot_dendrogram(result["transformed"], paths["dendrogram"], result["settings"]["linkage"]) is None:
        paths["dendrogram"] = None
    return paths


def make_groups(trends_path: str, num_groups: int, output_dir: str, strategy: str = "slope",
                slope: str = "mean_diff", log_base: float = 10.0, linkage: str = "average", seed: int = 0,
                manual: Optional[str] = None, plots: bool = True) -> dict:
    """Group from a trends file and write every output; returns the groups.json dict plus ``paths``."""
    trends = load_trends(trends_path)
    res = group_tasks(trends, num_groups, strategy=strategy, slope=slope, log_base=log_base, linkage=linkage,
                      seed=seed, manual=manual)
    res["paths"] = write_grouping(res, trends, output_dir, source=trends_path, plots=plots)
    return res


def phase2_cfg(cfg, groups: Sequence[Sequence[str]], output_dir: Optional[str] = None):
    """A copy of ``cfg`` for phase 2: GALW on with ``groups``, recording off (OUTPUT_DIR optional)."""
    c = cfg.clone()
    c.defrost()
    c.GALW.STRATEGY = "galw"
    c.GALW.GROUPS = [list(g) for g in groups]
    c.GALW.TASKS = []
    c.GALW.RECORD.ENABLED = False
    c.GALW.ONLINE_REGROUP.ENABLED = False
    if output_dir is not None:
        c.OUTPUT_DIR = output_dir
    c.freeze()
    return c


def run_phase1(cfg, trainer_cls=None, resume: bool = False) -> str:
    """Train with ``cfg`` and GALW.RECORD.ENABLED on; returns the trends file path.

    ``trainer_cls`` defaults to :class:`galw_d2.engine.GALWTrainer` (pass your subclass).
    """
    if trainer_cls is None:
        from ..engine import GALWTrainer as trainer_cls
    c = cfg.clone()
    c.defrost()
    c.GALW.RECORD.ENABLED = True
    c.freeze()
    trainer = trainer_cls(c)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer.trends_path()
