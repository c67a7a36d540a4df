#!/usr/bin/env python
"""Stack smoke run: train a stock detectron2 model from galw_d2's config on a tiny generated dataset for
a few iterations and print every iteration's losses (checks torch + detectron2 + galw_d2 configs).

    python tools/smoke_stock.py [--iters 10] [--config-file configs/stock/faster_rcnn_R18_FPN_tiny.yaml]

Exits non-zero if any loss is not finite. The main job is tools/demo.py (the GALW pipeline).
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage

from galw_d2 import add_galw_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_toy_images(out_dir: str, num_images: int = 8, size=(192, 256), seed: int = 0):
    """Write ``num_images`` scenes of 1-3 upright coloured 'people' (head + body) on textured noise.

    Returns detectron2 dataset dicts with XYXY_ABS person boxes.
    """
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for i in range(num_images):
        img = (rng.normal(110, 25, (h, w, 3))).clip(0, 255).astype(np.uint8)
        img = cv2.GaussianBlur(img, (5, 5), 0)
        annos = []
        for _ in range(rng.integers(1, 4)):
            ph = int(rng.integers(48, 120))
            pw = max(12, int(ph * rng.uniform(0.3, 0.45)))
            x0 = int(rng.integers(0, w - pw))
            y0 = int(rng.integers(0, h - ph))
            head = ph // 6
            body_col = tuple(int(c) for c in rng.integers(0, 255, 3))
            legs_col = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.circle(img, (x0 + pw // 2, y0 + head // 2 + 1), max(3, head // 2), (150, 180, 220), -1)
            cv2.rectangle(img, (x0, y0 + head), (x0 + pw, y0 + ph // 2 + head // 2), body_col, -1)
            cv2.rectangle(img, (x0 + pw // 8, y0 + ph // 2 + head // 2), (x0 + pw - pw // 8, y0 + ph), legs_col, -1)
            annos.append({"bbox": [x0, y0, x0 + pw, y0 + ph], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0})
        path = os.path.join(out_dir, f"toy_{i:03d}.jpg")
        cv2.imwrite(path, img)
        records.append({"file_name": path, "image_id": i, "height": h, "width": w, "annotations": annos})
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs/stock/faster_rcnn_R18_FPN_tiny.yaml"))
    parser.add_argument("--iters", type=int, default=10, help="training iterations (default 10)")
    parser.add_argument("--output", default=os.path.join(ROOT, "output/demo_stock"), help="where the toy images go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu" else "cpu"
    name = "galw_demo_toy_train"
    records = make_toy_images(os.path.join(args.output, "images"), seed=args.seed)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["person"])
    cfg.DATASETS.TRAIN = (name,)
    cfg.freeze()

    model = build_model(cfg)
    print(
        f"[demo] {cfg.MODEL.META_ARCHITECTURE} from {os.path.relpath(args.config_file, ROOT)}: "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, device {cfg.MODEL.DEVICE}"
    )
    optimizer = build_optimizer(cfg, model)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    bad = 0
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(args.iters):
            storage.iter = it
            trainer.iter = it
            t0 = time.perf_counter()
            trainer.run_step()
            dt = time.perf_counter() - t0
            losses = {
                k: v.median(1) for k, v in storage.histories().items() if k.startswith("loss") or k == "total_loss"
            }
            finite = all(math.isfinite(v) for v in losses.values())
            bad += not finite
            print(
                f"[demo] iter {it + 1:3d}/{args.iters}  "
                + "  ".join(f"{k}={v:.4f}" for k, v in sorted(losses.items()))
                + f"  ({dt:.2f} s)"
                + ("" if finite else "  NON-FINITE")
            )
            sys.stdout.flush()
    if bad:
        print(f"[demo] {bad} iteration(s) had non-finite losses", file=sys.stderr)
        return 1
    print(f"[demo] done: {args.iters} iterations, all losses finite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
