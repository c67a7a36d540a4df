#!/usr/bin/env python
"""The paper's Table 3 on SynthPS: loss weighting x task grouping, several seeds, mean +- std.

    python tools/ablation.py                         # SynthPS small, demo-sized runs, seeds 0 1 2
    python tools/ablation.py --quick                 # SynthPS tiny, 4 iterations per arm (smoke test)
    python tools/ablation.py --seeds 0 1 --iters 150 --output output/ablation

Arms (all from the same initial weights per seed, same iterations, same data order):

    fixed           the original fixed task weights (t3 = 10, others 1): the ROI-AlignPS* baseline
    ULWF            Kendall et al. uncertainty weighting, one sigma per task
    RULWF           + the lambda |sigma - 1| regulariser (Eq. 5)           = the phase-1 run
    ULWF+grouping   ULWF with one sigma per group (groups from this seed's phase-1 trends)
    GALW            RULWF with one sigma per group (Eq. 9)

RULWF is phase 1 itself (gradient recording does not change training), so each seed trains four
models and scores five. Writes ``OUTPUT/ablation.json`` (every run's metrics and groups) and
``OUTPUT/ablation.md`` (the table) and prints the table.

Runtime on 2 idle CPU cores: per seed 4 trainings (0.20-0.25 s/iteration) + 5 evaluations (8 s), so
about 3.5 min per 200 iterations per seed plus 1 min; default (the demo's 1000 iterations, 3 seeds):
about 55 min. Measured: ``--iters 150 --seeds 0 1`` took 759 s wall with one thread while the machine
was shared (seed 1 alone, on an almost idle machine: 208 s); ``--quick --seeds 0 1``: 138 s shared.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARMS = [  # (label, strategy, lambda, grouped)
    ("fixed", "fixed", 1.0, False),
    ("ULWF", "ulwf", 0.0, False),
    ("RULWF", "rulwf", 1.0, False),
    ("ULWF+grouping", "galw", 0.0, True),
    ("GALW", "galw", 1.0, True),
]


def parse_args(argv=None):
    from galw_d2.pipeline import DEFAULT_CONFIG

    p = argparse.ArgumentParser(description="Table 3 ablation (weighting x grouping) on SynthPS.")
    p.add_argument("--dataset", default="synthps_cuhk_sysu", help="synthps_cuhk_sysu | synthps_prw | a registered prefix")
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--output", default=os.path.join(ROOT, "output", "ablation"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=None, help="iterations per arm (default: the demo's)")
    p.add_argument("--num-groups", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="SynthPS tiny, a few iterations (smoke test)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every arm")
    return p.parse_args(argv)


def run_seed(args, seed: int, out: str):
    """Phase 1 (= RULWF arm) + grouping + the other arms for one seed. Returns {arm: metrics}, groups."""
    from galw_d2.pipeline import (PipelineSettings, _search, _trainer, build_cfg, evaluate_model, find_trends_file,
                                  group_tasks, prepare_dataset)

    s = PipelineSettings(dataset=args.dataset, config_file=os.path.abspath(args.config_file), output=out,
                         quick=args.quick, seed=seed, num_groups=args.num_groups, data_dir=args.data_dir,
                         phase1_iters=args.iters, phase2_iters=args.iters, opts=list(args.opts)).resolved()
    # The dataset is the seed-0 one for every seed (seeds vary initialisation and data order only).
    data = prepare_dataset(PipelineSettings(**{**s.__dict__, "seed": 0}))
    test_name = f"{data['prefix']}_test"
    res, times = {}, {}
    t0 = time.perf_counter()
    cfg = build_cfg(s, data, 1, os.path.join(out, "RULWF"))
    tr = _trainer(cfg, f"seed {seed} RULWF (+recording)")
    tr.resume_or_load(resume=False)
    tr.train()
    res["RULWF"] = _search(evaluate_model(cfg, tr.model, test_name, os.path.join(out, "RULWF", "eval"), f"eval RULWF s{seed}"))
    times["RULWF"] = round(time.perf_counter() - t0, 1)
    grouping = group_tasks(find_trends_file(cfg, tr), args.num_groups, os.path.join(out, "grouping"))
    groups = grouping["groups"]
    del tr
    for label, strategy, lam, grouped in ARMS:
        if label == "RULWF":
            continue
        t0 = time.perf_counter()
        s_arm = PipelineSettings(**{**s.__dict__, "phase2_strategy": strategy,
                                    "opts": list(s.opts) + ["GALW.LAMBDA", str(lam)]})
        cfg = build_cfg(s_arm, data, 2, os.path.join(out, label), groups=groups if grouped else None)
        tr = _trainer(cfg, f"seed {seed} {label}")
        tr.resume_or_load(resume=False)
        tr.train()
        res[label] = _search(evaluate_model(cfg, tr.model, test_name, os.path.join(out, label, "eval"), f"eval {label} s{seed}"))
        times[label] = round(time.perf_counter() - t0, 1)
        del tr
    return res, groups, times


def table(all_res, seeds):
    import numpy as np

    rows = []
    for label, *_ in ARMS:
        vals = {k: [100 * all_res[s][label][k] for s in seeds] for k in ("mAP", "top1")}
        sd = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
        rows.append((label, float(np.mean(vals["mAP"])), sd(vals["mAP"]), float(np.mean(vals["top1"])), sd(vals["top1"])))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    from detectron2.utils.logger import setup_logger

    os.makedirs(args.output, exist_ok=True)
    setup_logger(output=os.path.join(args.output, "log.txt"), name="detectron2", abbrev_name="d2")
    t_start = time.perf_counter()
    all_res, all_groups, all_times = {}, {}, {}
    for seed in args.seeds:
        print(f"[ablation] seed {seed}: phase 1 (RULWF + recording), grouping, then {len(ARMS) - 1} arms", flush=True)
        all_res[seed], all_groups[seed], all_times[seed] = run_seed(args, seed, os.path.join(args.output, f"seed{seed}"))
        print(f"[ablation] seed {seed}: " + "  ".join(f"{k} {100 * v['mAP']:.2f}" for k, v in all_res[seed].items()), flush=True)
    rows = table(all_res, args.seeds)
    total = round(time.perf_counter() - t_start, 1)
    iters = args.iters or ("quick preset" if args.quick else "the demo's")
    md = [f"# Table 3 on SynthPS ({args.dataset}, seeds {args.seeds}, {iters} iterations per arm)", "",
          "| arm | weighting | task grouping | mAP (%) mean +- std | top-1 (%) mean +- std |", "|---|---|---|---|---|"]
    for (label, strategy, lam, grouped), (_, m, ms, t, ts) in zip(ARMS, rows):
        weighting = "fixed" if strategy == "fixed" else ("ULWF" if lam == 0 else "RULWF")
        md.append(f"| {label} | {weighting} | {'yes' if grouped else 'no'} | {m:.2f} +- {ms:.2f} | {t:.2f} +- {ts:.2f} |")
    md += ["", f"Total runtime: {total:.0f} s.", ""]
    with open(os.path.join(args.output, "ablation.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(args.output, "ablation.json"), "w") as f:
        json.dump({"arms": [a[0] for a in ARMS], "seeds": args.seeds, "results": all_res, "groups": all_groups,
                   "runtime_s": {"per_seed": all_times, "total": total},
                   "table": [dict(zip(("arm", "mAP_mean", "mAP_std", "top1_mean", "top1_std"), r)) for r in rows],
                   "settings": {k: v for k, v in vars(args).items()}}, f, indent=2, default=str)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
