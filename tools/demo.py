#!/usr/bin/env python
"""The main job: GALW person search on SynthPS, end to end, on a CPU (what ``make demo`` runs).

    python tools/demo.py                      # full demo: SynthPS small, ~20 min on 2 CPU cores
    python tools/demo.py --quick              # a few iterations on SynthPS tiny (the CI test), ~1 min
    python tools/demo.py --dataset synthps_prw --output output/demo_prw --seed 1

Generates SynthPS, scores the randomly initialised ROI-AlignPS* tiny model, trains phase 1 (the fixed
Table 1 weights by default, GALW.PHASE1.STRATEGY) recording the tasks' gradient trends, groups the
tasks, trains phase 2 with GALW from the same initial weights, evaluates with the standard person-search
protocol and prints the table. Everything lands in ``--output``: configs, checkpoints, trends + Fig. 3
curves + dendrogram, metrics.json, gallery-size curve, top-k figure and report.md (see
galw_d2/apps/demo.py for the layout).

Exits non-zero when the trained model does not beat its random initial weights on search mAP.
(The stack smoke run of the skeleton, stock Faster R-CNN on toy images, is tools/smoke_stock.py.)
"""

import argparse
import logging
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # third-party deprecation warnings at import time: to the log, not the console
    logging.captureWarnings(True)
    warnings.simplefilter("ignore", FutureWarning)

from galw_d2.apps.demo import run_pipeline  # noqa: E402
from galw_d2.apps.recipe import DEFAULT_CONFIG, PipelineSettings  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="GALW person-search demo on SynthPS (see the README).")
    p.add_argument(
        "--dataset",
        default="synthps_cuhk_sysu",
        help="synthps_cuhk_sysu (default), synthps_prw, or a registered real prefix (cuhk_sysu, prw)",
    )
    p.add_argument(
        "--config-file",
        default=DEFAULT_CONFIG,
        help="model config: a path or a packaged config name (default: ROI-AlignPS* R18 tiny)",
    )
    p.add_argument("--output", default=os.path.join("output", "demo"), help="output folder (default output/demo/)")
    p.add_argument("--quick", action="store_true", help="tiny preset and a few iterations (the CI smoke test)")
    p.add_argument("--seed", type=int, default=0, help="seed of SynthPS, the initial weights and the data order")
    p.add_argument("--num-groups", type=int, default=4, help="task groups G (paper: 4)")
    p.add_argument(
        "--data-dir", default=None, help="where SynthPS is generated (default $DETECTRON2_DATASETS or datasets/)"
    )
    p.add_argument("--phase1-iters", type=int, default=None, help="override the preset's phase-1 iterations")
    p.add_argument("--phase2-iters", type=int, default=None, help="override the preset's phase-2 iterations")
    p.add_argument(
        "--eval-phase1",
        dest="eval_phase1",
        action="store_true",
        default=None,
        help="also score the phase-1 model (default in the full demo)",
    )
    p.add_argument(
        "--no-eval-phase1",
        dest="eval_phase1",
        action="store_false",
        help="skip scoring the phase-1 model (saves one test pass; default with --quick)",
    )
    p.add_argument(
        "--phase1-strategy",
        default=None,
        help="weighting of phase 1 (default: the config's GALW.PHASE1.STRATEGY, 'fixed' as the paper's Fig. 3)",
    )
    p.add_argument("--verbose", action="store_true", help="also print detectron2's logs and library warnings")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: each phase restarts from its last checkpoint in --output",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --output (refused otherwise; --resume continues it)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides applied to both phases")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    settings = PipelineSettings(
        dataset=args.dataset,
        config_file=args.config_file,
        output=args.output,
        quick=args.quick,
        seed=args.seed,
        num_groups=args.num_groups,
        data_dir=args.data_dir,
        phase1_iters=args.phase1_iters,
        phase2_iters=args.phase2_iters,
        eval_phase1=args.eval_phase1,
        opts=list(args.opts),
        resume=args.resume,
        phase1_strategy=args.phase1_strategy,
        overwrite=args.overwrite,
    )
    m = run_pipeline(settings, verbose=args.verbose)
    if not args.quick and m["search"].get("mAP", 0.0) <= m["random_init"].get("mAP", 0.0):
        print("[demo] FAILED: the trained model does not beat its random initial weights", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
