#!/usr/bin/env python
"""Train Mancs (torchreid) with galw_d2's loss weighting, evaluate with torchreid's CMC / mAP.

    python tools/train_reid.py --config-file configs/reid/mancs_synthps_tiny.yaml --output DIR
    python tools/train_reid.py --config-file configs/reid/mancs_synthps_small.yaml --output DIR GALW.STRATEGY rulwf
    python tools/train_reid.py --config-file configs/reid/mancs_R50_market1501.yaml --output DIR DEVICE cuda

Writes DIR/metrics.json (mAP, rank1/5/10 in percent, tasks, weighting), DIR/config.yaml,
DIR/last_checkpoint.pth (every SOLVER.CHECKPOINT_PERIOD epochs), DIR/model_final.pth, TensorBoard
scalars (each loss, total, sigma / weights) and, with GALW.RECORD.ENABLED, the gradient trends.
``--resume`` continues from DIR/last_checkpoint.pth; ``--eval-only CKPT`` evaluates a checkpoint.
Trailing ``KEY VALUE`` pairs override the config.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from galw_d2.reid.runner import run_training, setup_cfg  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", required=True, help="output folder (metrics.json, checkpoints, TensorBoard)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last_checkpoint.pth if present")
    p.add_argument("--eval-only", default="", metavar="CKPT", help="evaluate this checkpoint only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if len(args.opts) % 2:
        p.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    cfg = setup_cfg(args.config_file, args.opts, args.output)
    metrics = run_training(cfg, resume=args.resume, eval_only=args.eval_only, progress=not args.no_progress)
    print(
        json.dumps(
            {k: metrics[k] for k in ("mAP", "rank1", "rank5", "rank10", "weighting", "wall_time_s") if k in metrics},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
