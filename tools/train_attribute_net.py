#!/usr/bin/env python
"""Train the stand-alone pedestrian-attribute recognizer (torchreid backbone + ALMs), then evaluate it
on the held-out split and write OUTPUT/metrics.json and OUTPUT/model_final.pth.

    python tools/train_attribute_net.py --config-file configs/attributes/alm_synthps_tiny.yaml --output DIR
    # PA-100K, ResNet-50 with ImageNet weights from a file, on a GPU
    python tools/train_attribute_net.py --config-file configs/attributes/alm_synthps_tiny.yaml --output DIR \
        ATTRIBUTE_NET.DATA.TYPE pa100k ATTRIBUTE_NET.DATA.ROOT datasets/PA-100K \
        ATTRIBUTE_NET.BACKBONE resnet50 ATTRIBUTE_NET.BACKBONE_WEIGHTS resnet50.pth MODEL.DEVICE cuda

Trailing ``KEY VALUE`` pairs override the config. ``--eval-only`` evaluates ATTRIBUTE_NET.WEIGHTS.
"""

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402

from galw_d2 import add_galw_config  # noqa: E402


def setup(args):
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", required=True, help="output folder (metrics.json, model_final.pth, config.yaml)")
    p.add_argument("--eval-only", action="store_true", help="evaluate ATTRIBUTE_NET.WEIGHTS on the held-out split")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = setup(args)
    threads = torch.get_num_threads()
    if int(cfg.ATTRIBUTE_NET.NUM_THREADS) > 0:
        torch.set_num_threads(int(cfg.ATTRIBUTE_NET.NUM_THREADS))
    try:
        return _run(args, cfg)
    finally:
        torch.set_num_threads(threads)  # main() is also called in-process (tests)


def _run(args, cfg):
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    if args.eval_only:
        from galw_d2.attributes.engine import evaluate_checkpoint

        out = evaluate_checkpoint(cfg, cfg.ATTRIBUTE_NET.WEIGHTS, args.output)
    else:
        from galw_d2.attributes.engine import train_and_evaluate

        out = train_and_evaluate(cfg, args.output, progress=not args.no_progress)
    keys = ("mA", "accuracy", "precision", "recall", "F1", "constant_mA", "num_train", "num_test", "train_seconds")
    print(json.dumps({k: out[k] for k in keys if k in out}, indent=2))
    return out


if __name__ == "__main__":
    main()
