#!/usr/bin/env python
"""Compare the NAE re-id heads (MODEL.NAE.REID_HEAD: oim, protonorm, loim, oimnet++) on SynthPS.

For every seed and head: build the model right after seeding with that seed (so the four heads of a
seed start from identical weights: ProtoNorm and BatchNorm1d have the same deterministic init), train
it with GALW.STRATEGY "fixed" (the fixed weights main has) for ``--iters`` iterations with the
pipeline's short-run schedule, evaluate on the test split with the standard protocol, and write
``<work>/<arch>/<head>/seed<k>/result.json``. Finished runs are not redone (delete result.json to rerun).
Then it writes ``<output>/summary.json`` and ``<output>/report.md``: per-seed numbers, mean +- std,
paired differences to ``oim`` (same seed) and wall times.

Example (the measurement in docs/results/oimnetpp/):
    OMP_NUM_THREADS=1 python tools/compare_reid_heads.py --arch nae --iters 300 --seeds 0 1 2

Uses the applications' recipe (``galw_d2.apps``: prepare_dataset, build_cfg, evaluate_model) and the workflow's
``run_training`` (the seed is set right before every build: same initial weights per seed).
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from galw_d2.apps.evaluation import evaluate_model, search_metrics
from galw_d2.apps.recipe import PipelineSettings, build_cfg, prepare_dataset
from galw_d2.engine.person_search import PersonSearchTrainer
from galw_d2.galw.workflow import run_training, training_cfg
from galw_d2.modeling.reid_head import REID_HEAD_REGISTRY

CONFIGS = {
    "nae": "configs/synthps/nae_R18_tiny_synthps.yaml",
    "roi_alignps": "configs/synthps/roi_alignps_R18_tiny_synthps.yaml",
}
METRICS = ("mAP", "top1", "det_AP", "det_recall")  # search mAP / top-1, detection AP / recall (all in %)


def _flat(r: dict) -> dict:
    """The METRICS of one run's result, as fractions."""
    det = r.get("detection") or {}
    return {
        "mAP": r["search"]["mAP"],
        "top1": r["search"]["top1"],
        "det_AP": det.get("AP", float("nan")),
        "det_recall": det.get("recall", float("nan")),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(CONFIGS), default="nae")
    p.add_argument("--heads", nargs="+", default=["oim", "protonorm", "loim", "oimnet++"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=300, help="training iterations per run")
    p.add_argument("--dataset", default="synthps_cuhk_sysu", help="synthps_cuhk_sysu | synthps_prw (small preset)")
    p.add_argument("--work", default=os.path.join(ROOT, "output", "compare_reid_heads"), help="run folders")
    p.add_argument(
        "--output", default=os.path.join(ROOT, "docs", "results", "oimnetpp"), help="summary.json + report.md"
    )
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="extra KEY VALUE config overrides")
    a = p.parse_args(argv)
    bad = [h for h in a.heads if h not in REID_HEAD_REGISTRY]
    if bad:
        p.error(f"--heads {bad}: not in REID_HEAD_REGISTRY ({sorted(n for n, _ in REID_HEAD_REGISTRY)})")
    if "oim" not in a.heads:
        p.error("--heads must include oim (the paired differences are taken to it)")
    return a


def run_one(args, data, head: str, seed: int) -> dict:
    out = os.path.join(args.work, args.arch, head.replace("+", "p"), f"seed{seed}")
    done = os.path.join(out, "result.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    s = PipelineSettings(
        dataset=args.dataset,
        config_file=os.path.join(ROOT, CONFIGS[args.arch]),
        output=out,
        seed=seed,
        phase1_iters=args.iters,
        phase2_iters=args.iters,
        opts=["MODEL.NAE.REID_HEAD", head] + list(args.opts),
    ).resolved()
    cfg = training_cfg(build_cfg(s, data, out, iters=args.iters), "fixed", output_dir=out)
    t0 = time.perf_counter()

    class _Trainer(PersonSearchTrainer):
        progress_bar = f"{head} seed {seed}"

    trainer = run_training(cfg, _Trainer)  # seeds with cfg.SEED right before the model is built
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = evaluate_model(
        cfg, trainer.model, f"{data['prefix']}_test", os.path.join(out, "eval"), f"eval {head} s{seed}"
    )
    result = {
        "head": head,
        "seed": seed,
        "arch": args.arch,
        "iters": args.iters,
        "search": search_metrics(res),
        "detection": res.get("detection"),
        "det_thresh": float(cfg.TEST.PERSON_SEARCH.DET_THRESH),
        "gallery_size": int(cfg.TEST.PERSON_SEARCH.GALLERY_SIZE),
        "strategy": cfg.GALW.STRATEGY,
        "train_s": round(t_train, 1),
        "eval_s": round(time.perf_counter() - t1, 1),
        "s_per_iter": round(t_train / max(1, args.iters), 3),
    }
    os.makedirs(out, exist_ok=True)
    with open(done, "w") as f:
        json.dump(result, f, indent=2)
    return result


def mean_std(xs):
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def summarise(args, runs, wall_s: float) -> dict:
    by = {(r["head"], r["seed"]): r for r in runs}
    heads = {}
    for h in args.heads:
        rows = [by[(h, s)] for s in args.seeds if (h, s) in by]
        entry = {"per_seed": {str(r["seed"]): _flat(r) for r in rows}}
        for k in METRICS:
            vals = [100 * _flat(r)[k] for r in rows]
            entry[k] = dict(zip(("mean", "std"), mean_std(vals))) if vals else None
            if h != "oim":
                d = [
                    100 * (_flat(by[(h, s)])[k] - _flat(by[("oim", s)])[k])
                    for s in args.seeds
                    if (h, s) in by and ("oim", s) in by
                ]
                entry[f"diff_{k}_vs_oim"] = {"per_seed": d, **dict(zip(("mean", "std"), mean_std(d)))} if d else None
        entry["train_s"] = [r["train_s"] for r in rows]
        entry["s_per_iter"] = [r["s_per_iter"] for r in rows]
        heads[h] = entry
    return {
        "arch": args.arch,
        "config": CONFIGS[args.arch],
        "dataset": args.dataset,
        "iters": args.iters,
        "seeds": args.seeds,
        "heads": heads,
        "galw_strategy": "fixed",
        "det_thresh": runs[0]["det_thresh"] if runs else None,
        "gallery_size": runs[0]["gallery_size"] if runs else None,
        "opts": args.opts,
        "wall_s_this_invocation": round(wall_s, 1),
        "wall_s_all_runs": round(sum(r["train_s"] + r["eval_s"] for r in runs), 1),
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
        },
        "command": "OMP_NUM_THREADS=1 python tools/compare_reid_heads.py " + " ".join(sys.argv[1:]),
    }


def _ms(d) -> str:
    return f"{d['mean']:.2f} +- {d['std']:.2f}" if d else "-"


def write_report(sm: dict, path: str) -> None:
    seeds = sm["seeds"]
    lines = [
        f"# NAE re-id heads on SynthPS ({sm['arch']}, {sm['iters']} iterations, seeds {seeds})",
        "",
        f"Command: `{sm['command']}`  ",
        (
            f"Config: `{sm['config']}`, dataset {sm['dataset']} (small preset), "
            f"GALW.STRATEGY fixed, det_thresh {sm['det_thresh']}, gallery {sm['gallery_size']}.  "
        ),
        (
            f"Wall time of all runs (train + eval): {sm['wall_s_all_runs'] / 60:.1f} min "
            f"({sm['machine']['torch_threads']} torch thread(s)).  "
        ),
        "",
        (
            "Search mAP / top-1 (%), per seed and mean +- std (sample std over seeds); paired differences to "
            "`oim` on the same seed (same initial weights, same data order), mean +- std over seeds; detection "
            "AP (%) at the same det_thresh."
        ),
        "",
        (
            "| head | "
            + " | ".join(f"seed {s} mAP / top-1" for s in seeds)
            + " | mAP mean +- std | top-1 mean +- std | d mAP vs oim | d top-1 vs oim | det AP | d det AP vs oim"
            " | s/iter |"
        ),
        "|---|" + "---|" * len(seeds) + "---|---|---|---|---|---|---|",
    ]
    for h, e in sm["heads"].items():
        cells = []
        for s in seeds:
            r = e["per_seed"].get(str(s))
            cells.append(f"{100 * r['mAP']:.2f} / {100 * r['top1']:.2f}" if r else "-")
        dm = e.get("diff_mAP_vs_oim")
        dt = e.get("diff_top1_vs_oim")
        dd = e.get("diff_det_AP_vs_oim")
        spi = e["s_per_iter"]
        ref = "(ref)" if h == "oim" else "-"
        spi_s = f"{sum(spi) / len(spi):.2f}" if spi else "-"
        lines.append(
            f"| {h} | " + " | ".join(cells) + f" | {_ms(e['mAP'])} | {_ms(e['top1'])} | "
            f"{_ms(dm) if dm else ref} | {_ms(dt) if dt else ref} | {_ms(e['det_AP'])} | "
            f"{_ms(dd) if dd else ref} | {spi_s} |"
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    os.makedirs(args.output, exist_ok=True)
    data = prepare_dataset(PipelineSettings(dataset=args.dataset, seed=0))  # one dataset for every run
    runs = []
    for seed in args.seeds:
        for head in args.heads:
            r = run_one(args, data, head, seed)
            runs.append(r)
            print(
                f"[compare] {head} seed {seed}: mAP {100 * r['search']['mAP']:.2f}  "
                f"top-1 {100 * r['search']['top1']:.2f}"
                f"  ({r['train_s']:.0f} s train)",
                flush=True,
            )
            sm = summarise(args, runs, time.perf_counter() - t0)
            with open(os.path.join(args.output, "summary.json"), "w") as f:
                json.dump(sm, f, indent=2)
            write_report(sm, os.path.join(args.output, "report.md"))
    with open(os.path.join(args.output, "report.md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
