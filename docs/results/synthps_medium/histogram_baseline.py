#!/usr/bin/env python
"""Difficulty of a SynthPS test split: re-id with colour histograms of the ground-truth boxes, scored
by galw_d2's standard protocol (GT boxes as detections with score 1, so detection is perfect and only
re-id is measured).

    python docs/results/synthps_medium/histogram_baseline.py ROOT FORMAT [--gallery-size N] [--json OUT]

Feature: the square root of the L1-normalised 8x8x8 RGB histogram (Hellinger kernel as a dot product),
of the whole box ("box") or of its central strip (middle third of the width, 10-90 % of the height:
mostly person pixels, "strip"). Also reports the standard error of the mAP over queries
(std of the per-query AP / sqrt(Q)): the noise of one split's mAP, before pairing by seed.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from galw_d2.data.datasets import load_cuhk_sysu, load_cuhk_sysu_protocol, load_prw, load_prw_protocol  # noqa: E402
from galw_d2.evaluation.search import evaluate_search  # noqa: E402


def feature(img: np.ndarray, box, strip: bool) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    if strip:
        w, h = x2 - x1, y2 - y1
        x1, x2 = x1 + w // 3, x2 - w // 3
        y1, y2 = y1 + h // 10, y2 - h // 10
    crop = img[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)].reshape(-1, 3) // 32
    hist = np.bincount(crop[:, 0] * 64 + crop[:, 1] * 8 + crop[:, 2], minlength=512).astype(np.float64)
    f = np.sqrt(hist / max(hist.sum(), 1.0))
    return (f / max(np.linalg.norm(f), 1e-12)).astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("format", choices=["cuhk_sysu", "prw"])
    ap.add_argument("--gallery-size", type=int, default=100, help="CUHK-SYSU layout: TestG{N} (-1 = all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.format == "cuhk_sysu":
        records, protocol = load_cuhk_sysu(args.root, "gallery"), load_cuhk_sysu_protocol(args.root, args.gallery_size)
    else:
        records, protocol = load_prw(args.root, "gallery"), load_prw_protocol(args.root)
    images = {r["image_name"]: np.asarray(Image.open(r["file_name"]).convert("RGB")) for r in records}
    out = {"root": os.path.abspath(args.root), "format": args.format, "protocol": f"{protocol.dataset}/{protocol.name}",
           "queries": len(protocol.queries), "gallery_images": len(protocol.gallery),
           "gallery_boxes": sum(len(r["annotations"]) for r in records)}
    for kind in ("box", "strip"):
        gallery = {}
        for r in records:
            boxes = np.array([a["bbox"] for a in r["annotations"]], dtype=np.float32).reshape(-1, 4)
            feats = np.stack([feature(images[r["image_name"]], b, kind == "strip") for b in boxes]) \
                if len(boxes) else np.zeros((0, 512), np.float32)
            gallery[r["image_name"]] = {"boxes": boxes, "scores": np.ones(len(boxes), np.float32), "feats": feats}
        qf = np.stack([feature(images[q.image], q.box, kind == "strip") for q in protocol.queries])
        res = evaluate_search(protocol, gallery, qf, det_thresh=0.5, return_per_query=True)
        ap_q = res["per_query"]["ap"][res["per_query"]["count_gt"] > 0]
        out[kind] = {"mAP": round(100 * res["mAP"], 1), "top1": round(100 * res["top1"], 1),
                     "mAP_standard_error": round(100 * float(ap_q.std(ddof=1) / np.sqrt(len(ap_q))), 2)}
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
