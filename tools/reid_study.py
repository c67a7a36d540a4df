#!/usr/bin/env python
"""Mancs loss-weighting study on SynthPS crops: arms x seeds, paired by seed, resumable.

    python tools/reid_study.py --config-file configs/reid/mancs_synthps_small.yaml \
        --work output/reid_study --results docs/results/mancs --seeds 0 1 2 \
        --arms fixed ulwf rulwf galw [KEY VALUE ...]

Arms: ``fixed`` (the paper's lambda = 1, 1, 0.2), ``equal`` (fixed 1, 1, 1: where every learned
strategy starts, sigma = 1), ``ulwf``, ``rulwf``, ``galw`` (G = GALW.GROUPING.NUM_GROUPS
groups from the gradient trends of a phase-1 run), and ``galw[r;c,a]``: GALW with a given partition
(r = loss_rank, c = loss_cls, a = loss_att; ";" separates groups). Phase 1 is the ``fixed`` run of
the first seed with GALW.RECORD.ENABLED (the probe uses autograd.grad before the backward and draws no
random numbers, so that run is also the fixed arm's result). Every run of a seed starts from the same
model init (cfg.SEED) and the same data order.

Each run is ``tools/train_reid.py --resume`` in a subprocess (``--jobs`` at a time) under
WORK/<arm>/seed<S>/; a finished run (metrics.json present) is skipped, an interrupted one resumes from
its last epoch. Writes RESULTS/summary.json, RESULTS/report.md, RESULTS/groups.json (+ trend plots).
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from galw_d2.galw.weighting import WEIGHTING_REGISTRY  # noqa: E402
from galw_d2.galw.workflow import make_groups  # noqa: E402
from galw_d2.reid.config import REID_TASKS  # noqa: E402

SHORT = {"r": "loss_rank", "c": "loss_cls", "a": "loss_att"}
METRICS = ("mAP", "rank1", "rank5", "rank10")


def parse_partition(arm: str):
    """``galw[r;c,a]`` -> [["loss_rank"], ["loss_cls", "loss_att"]] (None for other arms)."""
    m = re.fullmatch(r"galw\[(.+)\]", arm)
    if not m:
        return None
    groups = [[SHORT.get(t.strip(), t.strip()) for t in g.split(",")] for g in m.group(1).split(";")]
    flat = [t for g in groups for t in g]
    if sorted(flat) != sorted(REID_TASKS):
        raise ValueError(f"arm {arm!r}: groups must cover {REID_TASKS} once (short names r, c, a)")
    return groups


RAN = []  # runs started by this invocation


def run_one(args, arm, seed, groups, record=False):
    out = os.path.join(args.work, arm, f"seed{seed}")
    if os.path.isfile(os.path.join(out, "metrics.json")):
        return out
    RAN.append((arm, seed))
    os.makedirs(out, exist_ok=True)
    strategy = "galw" if arm.startswith("galw") else "fixed" if arm == "equal" else arm
    opts = ["SEED", str(seed), "GALW.STRATEGY", strategy] + list(args.opts)
    if arm == "equal":
        opts += ["GALW.FIXED_WEIGHTS", repr([f"{t}=1.0" for t in REID_TASKS])]
    if groups is not None:
        opts += ["GALW.GROUPS", repr([list(g) for g in groups])]
    if record:
        opts += ["GALW.RECORD.ENABLED", "True"]
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "train_reid.py"),
        "--config-file",
        args.config_file,
        "--output",
        out,
        "--resume",
        "--no-progress",
    ] + opts
    t0 = time.time()
    with open(os.path.join(out, "log.txt"), "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if rc != 0:
        raise RuntimeError(f"run {arm} seed {seed} failed (rc {rc}); see {out}/log.txt")
    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: done in {time.time() - t0:.0f} s", flush=True)
    return out


def t_interval(d):
    from scipy import stats

    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return [float("nan"), float("nan")]
    h = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return [float(d.mean() - h), float(d.mean() + h)]


def bootstrap_interval(d, reps=10000, seed=0):
    d = np.asarray(d, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(reps, len(d)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarize(args, arms, seeds, groups_info, aliases=None):
    aliases = aliases or {}
    res = {}
    for arm in arms:
        per_seed = {}
        for s in seeds:
            p = os.path.join(args.work, aliases.get(arm, arm), f"seed{s}", "metrics.json")
            if os.path.isfile(p):
                m = json.load(open(p))
                per_seed[str(s)] = {
                    **{k: m[k] for k in METRICS if k in m},
                    "wall_time_s": m.get("wall_time_s"),
                    "weighting": m.get("weighting"),
                }
        res[arm] = {"per_seed": per_seed}
        if arm in aliases:
            res[arm]["same_runs_as"] = aliases[arm]
    base = res.get("fixed", {}).get("per_seed", {})
    for arm in arms:
        ps = res[arm]["per_seed"]
        stats_ = {}
        for k in METRICS:
            v = [ps[s][k] for s in ps if k in ps[s]]
            if v:
                stats_[k] = {
                    "mean": float(np.mean(v)),
                    "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                    "n": len(v),
                }
        res[arm]["stats"] = stats_
        if arm != "fixed":
            paired = {}
            common = [s for s in ps if s in base]
            for k in ("mAP", "rank1"):
                d = [ps[s][k] - base[s][k] for s in common]
                if d:
                    paired[k] = {
                        "mean": float(np.mean(d)),
                        "ci95": bootstrap_interval(d),
                        "ci95_t": t_interval(d),
                        "per_seed": {s: float(x) for s, x in zip(common, d)},
                        "n": len(d),
                    }
            res[arm]["paired"] = {"fixed": paired}
    return {
        "unit": "percent",
        "config": os.path.relpath(args.config_file, REPO),
        "overrides": list(args.opts),
        "seeds": [int(s) for s in seeds],
        "arms": res,
        "grouping": groups_info,
        "ci95": "bootstrap: percentile interval of the mean paired difference, 10000 resamples of the seeds; "
        "ci95_t: Student-t interval (n - 1 dof). With 3 seeds the bootstrap interval is too narrow; "
        "read ci95_t.",
    }


def weight_trajectories(run_dir):
    """Effective weight 1/(k sigma^2) of each task at the end of every epoch, from the run's TensorBoard
    scalars ``Train/galw/weight/<task>`` (written every iteration by MancsEngine); {} for fixed runs."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(glob.glob(os.path.join(glob.escape(run_dir), "events.out.tfevents.*")))
    if not files:
        return {}
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    per_epoch = max(1, m["iterations"] // max(1, m["epochs"]))
    out = {}
    for f in files:  # a resumed run has several event files; later files overwrite earlier steps
        ea = EventAccumulator(f, size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            if tag.startswith("Train/galw/weight/"):
                d = out.setdefault(tag.rsplit("/", 1)[1], {})
                d.update({e.step: e.value for e in ea.Scalars(tag)})
    return {
        t: [
            round(float(v[max(k for k in v if k <= (e + 1) * per_epoch - 1)]), 3)
            for e in range(m["epochs"])
            if any(k <= (e + 1) * per_epoch - 1 for k in v)
        ]
        for t, v in out.items()
    }


def write_report(path, summary, wall, cmdline):
    arms = summary["arms"]
    lines = [
        "# Mancs on SynthPS crops: loss weighting arms (measured)",
        "",
        f"Command: `{cmdline}`",
        "",
        f"Config `{summary['config']}` + overrides {summary['overrides']}; seeds {summary['seeds']} "
        "(same model init and data order per seed across arms). Metrics: torchreid CMC / mAP, single query, "
        "in percent. Total wall time of this invocation's runs: "
        f"{wall / 60:.1f} min (2-core shared CPU, 1 thread per run).",
        "",
    ]
    g = summary.get("grouping") or {}
    if g:
        lines += [
            f"GALW groups (G = {g.get('num_groups')}, slope grouping of the phase-1 gradient trends, "
            f"{g.get('source')}): `{g.get('groups')}`; slopes {g.get('slopes')}",
            "",
        ]
    lines += [
        "| arm | mAP mean ± std | rank-1 mean ± std | ΔmAP vs fixed [95% CI t] | Δrank-1 vs fixed [95% CI t] "
        "| run wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for arm, a in arms.items():
        st = a.get("stats", {})
        if not st:
            continue
        fmt = lambda k: f"{st[k]['mean']:.1f} ± {st[k]['std']:.1f}" if k in st else "-"  # noqa: E731
        pr = a.get("paired", {}).get("fixed", {})
        dfmt = lambda k: (
            f"{pr[k]['mean']:+.1f} [{pr[k]['ci95_t'][0]:+.1f}, {pr[k]['ci95_t'][1]:+.1f}]"  # noqa: E731
            if k in pr
            else "(baseline)"
        )
        walls = [v["wall_time_s"] for v in a["per_seed"].values() if v.get("wall_time_s")]
        lines.append(
            f"| {arm} | {fmt('mAP')} | {fmt('rank1')} | {dfmt('mAP')} | {dfmt('rank1')} | {np.mean(walls):.0f} |"
            if walls
            else f"| {arm} | {fmt('mAP')} | {fmt('rank1')} | - | - | - |"
        )
    lines += ["", "Per seed (mAP / rank-1):", ""]
    for arm, a in arms.items():
        lines.append(
            f"- {arm}: " + ", ".join(f"seed {s}: {v['mAP']:.1f} / {v['rank1']:.1f}" for s, v in a["per_seed"].items())
        )
    lines += ["", "Final learned weights 1/(k sigma^2) (seed 0):", ""]
    for arm, a in arms.items():
        w = a["per_seed"].get(str(summary["seeds"][0]), {}).get("weighting") or {}
        if w.get("weights"):
            # per-step methods (RLW, FAMO, ...) have no final weight for some tasks: None, printed "-"
            lines.append(
                f"- {arm}: "
                + ", ".join(f"{k} {'-' if v is None else format(v, '.3g')}" for k, v in w["weights"].items())
            )
    traj = summary.get("trajectories") or {}
    if traj:
        lines += [
            "",
            f"Weights 1/(k sigma^2) at the end of epochs 1, 3, 6, 9, 12 (seed {summary['seeds'][0]}; "
            "from TensorBoard `Train/galw/weight/*`):",
            "",
            "| arm | loss_rank | loss_cls | loss_att |",
            "|---|---|---|---|",
        ]
        for arm, tr in traj.items():
            cells = [
                " ".join(f"{tr[t][e - 1]:.2f}" for e in (1, 3, 6, 9, 12) if e <= len(tr.get(t, []))) for t in REID_TASKS
            ]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", summary["ci95"], ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, "configs", "reid", "mancs_synthps_small.yaml"))
    p.add_argument("--work", default=os.path.join(REPO, "output", "reid_study"))
    p.add_argument("--results", default=os.path.join(REPO, "docs", "results", "mancs"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=["fixed", "ulwf", "rulwf", "galw"])
    p.add_argument("--num-groups", type=int, default=2, help="G of the galw arm (3 tasks: 2)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = p.parse_args(argv)
    args.config_file = os.path.abspath(args.config_file)
    for a in args.arms:
        if a not in ("fixed", "equal") and a not in WEIGHTING_REGISTRY and parse_partition(a) is None:
            p.error(f"unknown arm {a!r}: fixed, equal, galw[...] partitions or a weighting-registry name")
    if "fixed" not in args.arms:
        p.error("the study pairs every arm with 'fixed' (phase 1 is its first seed)")
    os.makedirs(args.results, exist_ok=True)
    t0 = time.time()
    seeds = args.seeds
    # phase 1: the fixed run of the first seed records the gradient trends
    run_one(args, "fixed", seeds[0], None, record=True)
    groups_info = None
    if "galw" in args.arms:
        trends = os.path.join(args.work, "fixed", f"seed{seeds[0]}", "gradient_trends.json")
        res = make_groups(trends, args.num_groups, os.path.join(args.work, "grouping"))
        groups = res["groups"]
        for name in ("groups.json", "gradient_trends.png", "dendrogram.png"):
            src = os.path.join(args.work, "grouping", name)
            if os.path.isfile(src):
                shutil.copy(src, os.path.join(args.results, name))
        shutil.copy(trends, os.path.join(args.results, "gradient_trends.json"))
        groups_info = {
            "groups": groups,
            "num_groups": args.num_groups,
            "slopes": res["slopes"],
            "transformed": res["transformed"],
            "source": f"fixed arm, seed {seeds[0]}",
        }
    # a partition arm equal to the slope groups is the galw arm itself: not run twice (summary reads galw's runs)
    aliases = {}
    if groups_info is not None:
        canon = lambda gs: sorted(sorted(g) for g in gs)  # noqa: E731
        aliases = {a: "galw" for a in args.arms if parse_partition(a) and canon(parse_partition(a)) == canon(groups)}
    jobs = []
    for s in seeds:
        for arm in args.arms:
            if (arm == "fixed" and s == seeds[0]) or arm in aliases:
                continue
            g = groups if arm == "galw" else parse_partition(arm)
            jobs.append((arm, s, g))
    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        for f in [ex.submit(run_one, args, arm, s, g) for arm, s, g in jobs]:
            f.result()
    wall = time.time() - t0
    spath = os.path.join(args.results, "summary.json")
    if not RAN and os.path.isfile(spath):  # nothing ran now: keep the wall time of the invocation that ran them
        wall = 60.0 * json.load(open(spath)).get("wall_time_min", wall / 60.0)
    summary = summarize(args, args.arms, seeds, groups_info, aliases)
    summary["wall_time_min"] = round(wall / 60, 1)
    summary["trajectories"] = {
        a: weight_trajectories(os.path.join(args.work, aliases.get(a, a), f"seed{seeds[0]}"))
        for a in args.arms
        if a not in ("fixed", "equal")
    }
    with open(spath, "w") as f:
        json.dump(summary, f, indent=1)
    cmdline = "python tools/reid_study.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_report(os.path.join(args.results, "report.md"), summary, wall, cmdline)
    print(open(os.path.join(args.results, "report.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
