"""The paired study: loss-weighting arms x seeds on SynthPS, with statistics (``tools/study.py``).

Per seed (the seed sets the initial weights and the data order; the dataset is the same for every
seed):

1. **phase 1** (:class:`galw_d2.galw.workflow.TwoPhase`): ``GALW.PHASE1.STRATEGY`` (default fixed)
   with gradient recording, then the grouping (``GALW.GROUPING.*``) that the grouped arms use;
2. **arms**: each arm trains from the same initial weights (the seed is set right before every build,
   :func:`galw_d2.galw.workflow.run_training`), for the same iterations, and is scored with the
   standard protocol; per-query AP and top-1 hits are kept for the paired statistics. The arm whose
   strategy is phase 1's reuses the phase-1 model (recording does not change training: tested).

Arms are names: ``fixed``, ``ulwf``, ``rulwf``, ``ulwf_grouped``, ``galw`` (Table 3) and any other
name of :data:`galw_d2.galw.weighting.WEIGHTING_REGISTRY` (per-task methods). Grouped arms take the
seed's phase-1 groups.

Resumable: every finished run leaves ``<output>/seed<S>/<arm>/result.json``; a rerun skips them and
continues an interrupted training from its last checkpoint (such a run's result records
``resumed_at_iter`` and a whole-run ``wall_s_estimated``). :func:`summarize` writes ``summary.json``
(``{"unit": "percent", "arms": {ARM: {"per_seed": {SEED: {"mAP", "top1"}}, "mAP": {"mean", "std"},
"top1": {...}, "paired": {BASE: {"mAP": {"mean", "ci95", "ci95_t", ...}, "top1": {...}}},
"detection": {"AP", "recall"}, "wall_s": {"mean", "std", "num_runs", "num_estimated"}}},
"group_stability": {...}, ...}``), ``report.md`` and ``forest.png`` (paired differences with their
95% intervals). Statistics: :mod:`galw_d2.evaluation.stats`.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Callable, Dict, List, Optional

import numpy as np

from ..data import get_search_protocol
from ..engine.person_search import PersonSearchTrainer
from ..evaluation import load_results
from ..evaluation.evaluator import evaluate_results
from ..evaluation.stats import adjusted_rand_index, groups_to_labels, mean_std, paired_difference
from ..galw.weighting import WEIGHTING_REGISTRY
from ..galw.workflow import GROUPED_STRATEGIES, TwoPhase, run_training, training_cfg
from .console import setup_console
from .evaluation import det_thresh, evaluate_model
from .recipe import PipelineSettings, build_cfg, prepare_dataset

__all__ = ["StudySettings", "TABLE3_ARMS", "run_study", "summarize", "publish", "BASELINES"]

TABLE3_ARMS = ["fixed", "ulwf", "rulwf", "ulwf_grouped", "galw"]
BASELINES = ("fixed", "rulwf")


@dataclass
class StudySettings:
    """What a study runs (saved as ``<output>/study.json``; a resumed study must match it)."""

    output: str = os.path.join("output", "study")
    arms: List[str] = field(default_factory=lambda: list(TABLE3_ARMS))
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    dataset: str = "synthps_cuhk_sysu"
    preset: str = "medium"
    config_file: str = "synthps/roi_alignps_R18_tiny_synthps.yaml"
    iters: int = 1000
    epochs: int = 10  # trend points of phase 1 (Algorithm 1: per-epoch gradient magnitudes)
    probe_period: int = 5
    num_groups: int = 4
    data_dir: Optional[str] = None
    opts: List[str] = field(default_factory=list)
    num_boot: int = 2000

    def validate(self) -> None:
        if not self.arms or not self.seeds:
            raise ValueError("a study needs at least one arm and one seed")
        unknown = [a for a in self.arms if a not in WEIGHTING_REGISTRY]
        if unknown:
            raise ValueError(
                f"unknown arm(s) {unknown}; arms are names of the weighting registry: {WEIGHTING_REGISTRY.names()}"
            )
        if len(set(self.arms)) != len(self.arms) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"arms and seeds must be unique, got {self.arms}, {self.seeds}")
        if self.iters < 1 or self.epochs < 2 or self.num_groups < 1:
            raise ValueError(
                f"need iters >= 1, epochs >= 2, num_groups >= 1 (got {self.iters}, {self.epochs}, {self.num_groups})"
            )


def _pipeline_settings(s: StudySettings, seed: int) -> PipelineSettings:
    return PipelineSettings(
        dataset=s.dataset,
        config_file=s.config_file,
        output=s.output,
        seed=seed,
        num_groups=s.num_groups,
        data_dir=s.data_dir,
        phase1_iters=s.iters,
        phase2_iters=s.iters,
        epochs=s.epochs,
        probe_period=s.probe_period,
        opts=list(s.opts),
        preset=s.preset,
        eval_phase1=False,
    ).resolved()


def _check_or_write_settings(s: StudySettings) -> None:
    path = os.path.join(s.output, "study.json")
    keep = {k: v for k, v in asdict(s).items() if k not in ("arms", "seeds", "output", "num_boot", "data_dir")}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = {k: (old.get(k), v) for k, v in keep.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{path}: this output folder holds a study with other settings {diff} (old, new); use another --output"
            )
    os.makedirs(s.output, exist_ok=True)
    with open(path, "w") as f:
        json.dump(keep, f, indent=1)


def _score(cfg, trainer, test_name: str, out_dir: str, desc: str, fmt: str) -> Dict:
    """Standard protocol + per-query AP / top-1 hits (re-scored from the saved results file)."""
    res = evaluate_model(cfg, trainer.model, test_name, out_dir, desc, save_results=True)
    proto = (
        get_search_protocol(test_name, gallery_size=int(cfg.TEST.PERSON_SEARCH.GALLERY_SIZE))
        if fmt == "cuhk_sysu"
        else get_search_protocol(test_name)
    )
    pq = evaluate_results(
        proto,
        load_results(os.path.join(out_dir, "search_results.pth")),
        det_thresh=det_thresh(cfg),
        detection=False,
        return_per_query=True,
    )["search"]
    valid = pq["per_query"]["count_gt"] > 0
    return {
        "mAP": float(res["search"]["mAP"]),
        "top1": float(res["search"]["top1"]),
        "top5": float(res["search"]["top5"]),
        "top10": float(res["search"]["top10"]),
        "detection": res.get("detection"),
        "per_query_ap": pq["per_query"]["ap"][valid].tolist(),
        "per_query_top1": (pq["per_query"]["first_tp_rank"][valid] == 0).astype(float).tolist(),
    }


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)  # a kill leaves either the old file or the complete new one


def _trainer_cls(label: str):
    class _T(PersonSearchTrainer):
        progress_bar = label

    return _T


def run_study(s: StudySettings, log: Callable[[str], None] = print, verbose: bool = False) -> Dict:
    """Run (or resume) every seed x arm, then :func:`summarize`. Returns the summary."""
    s.validate()
    s.output = os.path.abspath(s.output)
    _check_or_write_settings(s)
    setup_console(s.output, verbose)
    data = prepare_dataset(_pipeline_settings(s, 0))  # the dataset: seed 0's, whatever the training seed
    test_name = f"{data['prefix']}_test"
    total, done, t_start = len(s.seeds) * len(s.arms), 0, time.perf_counter()
    for seed in s.seeds:
        out = os.path.join(s.output, f"seed{seed}")
        ps = _pipeline_settings(s, seed)
        wf = TwoPhase(build_cfg(ps, data, out), _trainer_cls(f"seed {seed} phase 1"), out, resume=True)
        p1_strategy = str(wf.cfg.GALW.PHASE1.STRATEGY)
        groups_path = os.path.join(out, "grouping", "groups.json")
        p1_result = os.path.join(out, p1_strategy, "result.json")
        if not os.path.exists(groups_path):
            t0 = time.perf_counter()
            p1 = wf.run_phase1()
            resumed = _resume_timing(p1.trainer, time.perf_counter() - t0)
            if p1_strategy in s.arms and not os.path.exists(p1_result):
                os.makedirs(os.path.dirname(p1_result), exist_ok=True)
                r = _score(
                    p1.cfg,
                    p1.trainer,
                    test_name,
                    os.path.join(out, p1_strategy, "eval"),
                    f"eval s{seed} {p1_strategy}",
                    data["fmt"],
                )
                r.update(seed=seed, arm=p1_strategy, wall_s=round(time.perf_counter() - t0, 1), phase1=True)
                _add_full_wall(r, resumed)
                _write_json(p1_result, r)
            wf.group(p1.trends)
            del p1
        with open(groups_path) as f:
            groups = json.load(f)["groups"]
        for arm in s.arms:
            path = os.path.join(out, arm, "result.json")
            if not os.path.exists(path):
                t0 = time.perf_counter()
                cfg = _arm_cfg(wf, arm, groups, os.path.join(out, arm))
                resumed = {}
                try:
                    trainer = run_training(cfg, _trainer_cls(f"seed {seed} {arm}"), resume=True)
                    resumed = _resume_timing(trainer, time.perf_counter() - t0)
                    r = _score(
                        cfg, trainer, test_name, os.path.join(out, arm, "eval"), f"eval s{seed} {arm}", data["fmt"]
                    )
                    del trainer
                except FloatingPointError as e:  # a diverged run is a result (scored 0), not a crash
                    log(f"[study] seed {seed} {arm}: DIVERGED: {e}")
                    r = _diverged_result(p1_result, str(e))
                r.update(
                    seed=seed,
                    arm=arm,
                    wall_s=round(time.perf_counter() - t0, 1),
                    phase1=False,
                    groups=groups if arm in GROUPED_STRATEGIES else None,
                )
                _add_full_wall(r, resumed)
                _write_json(path, r)
            done += 1
            with open(path) as f:
                r = json.load(f)
            el = time.perf_counter() - t_start
            log(
                f"[study] {done}/{total} seed {seed} {arm:<13} mAP {100 * r['mAP']:6.2f}  top-1 {100 * r['top1']:6.2f}"
                f"  ({r['wall_s']:.0f} s)  elapsed {el / 60:.1f} min"
            )
    return summarize(s.output, s.seeds, s.arms, num_boot=s.num_boot, settings=s)


def _resume_timing(trainer, train_s: float) -> Dict:
    """How much of the run this process trained: {} for a run from iteration 0, else the resume
    point and the training seconds spent here (a resumed run's wall time covers only its tail)."""
    start, end = int(trainer.start_iter), int(trainer.max_iter)
    return {} if start == 0 else {"start": start, "end": end, "train_s": train_s}


def _add_full_wall(r: Dict, resumed: Dict) -> None:
    """Record a resumed run's resume point and its whole-run wall time, estimated by scaling the
    training seconds of the part trained here to the full run (evaluation time added unscaled)."""
    if not resumed:
        return
    r["resumed_at_iter"] = resumed["start"]
    done = resumed["end"] - resumed["start"]
    # resumed after the last iteration: nothing was trained here to scale, the whole-run time is unknown
    r["wall_s_estimated"] = round(r["wall_s"] + resumed["train_s"] * resumed["start"] / done, 1) if done > 0 else None


def run_wall_s(r: Dict) -> Optional[float]:
    """A run's wall time for the summary: measured, or estimated for a resumed run (None: unknown)."""
    return r.get("wall_s_estimated") if "resumed_at_iter" in r else r["wall_s"]


def _diverged_result(reference_result: str, message: str) -> Dict:
    """A diverged run: every query scores 0 (the same queries as the seed's phase-1 run)."""
    n = 0
    if os.path.exists(reference_result):
        with open(reference_result) as f:
            n = len(json.load(f)["per_query_ap"])
    return {
        "mAP": 0.0,
        "top1": 0.0,
        "top5": 0.0,
        "top10": 0.0,
        "detection": None,
        "diverged": message,
        "per_query_ap": [0.0] * n,
        "per_query_top1": [0.0] * n,
    }


def publish(output: str, dest: str) -> List[str]:
    """Copy the light results of a study (summary, report, figure, settings, per-run result.json and
    groups) from ``output`` to ``dest`` (e.g. docs/results/study); checkpoints and saved detections stay."""
    import glob
    import shutil

    copied = []
    pats = [
        "summary.json",
        "report.md",
        "forest.png",
        "study.json",
        "seed*/grouping/groups.json",
        "seed*/grouping/gradient_trends.png",
        "seed*/*/result.json",
    ]
    for pat in pats:
        for src in glob.glob(os.path.join(output, pat)):
            rel = os.path.relpath(src, output)
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copyfile(src, os.path.join(dest, rel))
            copied.append(rel)
    return copied


def _arm_cfg(wf: TwoPhase, arm: str, groups, output_dir: str):
    """The config of one arm: grouped strategies get the seed's groups, per-task ones none; recording
    off; own output folder."""
    return training_cfg(wf.cfg, arm, groups=groups if arm in GROUPED_STRATEGIES else None, output_dir=output_dir)


def summarize(output: str, seeds: List[int], arms: List[str], num_boot: int = 2000, settings=None) -> Dict:
    """Statistics of the finished runs under ``output`` (missing runs are listed, not guessed)."""
    res: Dict[str, Dict[int, Dict]] = {a: {} for a in arms}
    missing = []
    for seed in seeds:
        for arm in arms:
            p = os.path.join(output, f"seed{seed}", arm, "result.json")
            if os.path.exists(p):
                with open(p) as f:
                    res[arm][seed] = json.load(f)
            else:
                missing.append(f"seed{seed}/{arm}")
    complete = [sd for sd in seeds if all(sd in res[a] for a in arms)]
    summary: Dict = {
        "unit": "percent",
        "seeds": seeds,
        "complete_seeds": complete,
        "missing_runs": missing,
        "arms": {},
        "settings": asdict(settings) if settings is not None else None,
    }
    for arm in arms:
        per = {str(sd): {"mAP": 100 * r["mAP"], "top1": 100 * r["top1"]} for sd, r in res[arm].items()}
        entry = {
            "per_seed": per,
            "paired": {},
            "wall_s": _wall_stats(res[arm].values()),
        }
        for k in ("mAP", "top1"):
            entry[k] = mean_std([v[k] for v in per.values()]) if per else None
        # Detection (the AlignPS branch at the run's threshold): where a weighting moves the
        # detector vs the re-id part. Diverged runs have none and are left out here.
        dets = [r["detection"] for r in res[arm].values() if r.get("detection")]
        entry["detection"] = {k: mean_std([100 * d[k] for d in dets]) for k in ("AP", "recall")} if dets else None
        for base in BASELINES:
            if base == arm or base not in arms or len(complete) < 1:
                continue
            entry["paired"][base] = {}
            for k, key in (("mAP", "per_query_ap"), ("top1", "per_query_top1")):
                a = 100 * np.asarray([res[arm][sd][key] for sd in complete])
                b = 100 * np.asarray([res[base][sd][key] for sd in complete])
                entry["paired"][base][k] = paired_difference(a, b, num_boot=num_boot)
        summary["arms"][arm] = entry
    summary["group_stability"] = _group_stability(output, seeds)
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _forest_plot(summary, os.path.join(output, "forest.png"))
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write(report_markdown(summary))
    return summary


def _wall_stats(runs) -> Optional[Dict]:
    """mean ± std of the runs' wall times (resumed runs: their estimate; unknown ones left out)."""
    walls = [w for w in map(run_wall_s, runs) if w is not None]
    if not walls:
        return None
    out = mean_std(walls)
    out.update(num_runs=len(walls), num_estimated=sum("resumed_at_iter" in r for r in runs))
    return out


def _group_stability(output: str, seeds: List[int]) -> Dict:
    groups = {}
    for sd in seeds:
        p = os.path.join(output, f"seed{sd}", "grouping", "groups.json")
        if os.path.exists(p):
            with open(p) as f:
                groups[sd] = json.load(f)["groups"]
    if len(groups) < 2:
        return {"groups": {str(k): v for k, v in groups.items()}, "pairwise_ari": {}, "mean_ari": None}
    tasks = sorted({t for g in groups.values() for grp in g for t in grp})
    ari = {
        f"{a}-{b}": adjusted_rand_index(groups_to_labels(groups[a], tasks), groups_to_labels(groups[b], tasks))
        for a, b in combinations(sorted(groups), 2)
    }
    return {
        "groups": {str(k): v for k, v in groups.items()},
        "pairwise_ari": ari,
        "mean_ari": float(np.mean(list(ari.values()))),
    }


def _forest_plot(summary: Dict, path: str) -> Optional[str]:
    import matplotlib  # figures only: matplotlib is imported when a study is summarised

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(arm, base, e["paired"][base]["mAP"]) for arm, e in summary["arms"].items() for base in e["paired"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for i, (arm, base, d) in enumerate(rows):
        y = len(rows) - 1 - i
        ax.plot(d["ci95"], [y, y], color="C0" if base == "fixed" else "C1", lw=2)
        ax.plot([d["mean"]], [y], "o", color="C0" if base == "fixed" else "C1")
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{arm} - {base}" for arm, base, _ in rows][::-1])
    ax.set_xlabel("paired difference in search mAP (points), 95% CI (bootstrap over seeds and queries)")
    ax.set_title(f"seeds {summary['complete_seeds']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_markdown(summary: Dict) -> str:
    """The study's tables as Markdown."""
    s = summary.get("settings") or {}
    lines = [
        "# Loss-weighting study on SynthPS",
        "",
        f"Dataset `{s.get('dataset')}` preset `{s.get('preset')}`, config `{s.get('config_file')}`, "
        f"{s.get('iters')} iterations per run, phase-1 trends over {s.get('epochs')} epochs, G = "
        f"{s.get('num_groups')}; seeds {summary['complete_seeds']} complete"
        + (f", missing runs: {summary['missing_runs']}" if summary["missing_runs"] else "")
        + ".",
        "",
        "| arm | mAP (%) mean ± std | top-1 (%) mean ± std | Δ mAP vs fixed [95% CI] | Δ mAP vs RULWF [95% CI] "
        "| detection AP / recall (%) | wall (s/run) |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt_ms(m):
        return "-" if not m else f"{m['mean']:.2f} ± {m['std']:.2f}"

    def fmt_d(e, base):
        d = e["paired"].get(base, {}).get("mAP")
        return "-" if not d else f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"

    def fmt_det(e):
        d = e.get("detection")
        return "-" if not d else f"{d['AP']['mean']:.1f} / {d['recall']['mean']:.1f}"

    def fmt_wall(e):
        w = e.get("wall_s")
        if not w:
            return "-"
        return f"{w['mean']:.0f}" + (f" ({w['num_estimated']} resumed, est.)" if w.get("num_estimated") else "")

    for arm, e in summary["arms"].items():
        lines.append(
            f"| {arm} | {fmt_ms(e['mAP'])} | {fmt_ms(e['top1'])} | {fmt_d(e, 'fixed')} | {fmt_d(e, 'rulwf')} "
            f"| {fmt_det(e)} | {fmt_wall(e)} |"
            if e["per_seed"]
            else f"| {arm} | - | - | - | - | - | - |"
        )
    gs = summary["group_stability"]
    lines += [
        "",
        "Intervals: percentile bootstrap (2000 resamples) over seeds and, within each seed, over test "
        "queries, paired (the same queries for both arms); `summary.json` also holds Student-t intervals over "
        "the per-seed differences (`ci95_t`).",
        "",
    ]
    if gs.get("mean_ari") is not None:
        lines += [
            f"Group stability across seeds (phase-1 groupings): mean adjusted Rand index "
            f"{gs['mean_ari']:.2f} over {len(gs['pairwise_ari'])} seed pairs.",
            "",
        ]
        for sd, g in gs["groups"].items():
            lines.append(f"- seed {sd}: " + "  ".join("{" + ", ".join(g_) + "}" for g_ in g))
        lines.append("")
    lines += ["![forest plot](forest.png)", ""]
    return "\n".join(lines)
