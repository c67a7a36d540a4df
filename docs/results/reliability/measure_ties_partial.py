#!/usr/bin/env python
"""Measure the silent evaluation cases of the reliability issue on a real protocol (SynthPS, CUHK-SYSU
layout, generated here) and what the evaluation now reports for them.

    PYTHONPATH=. python docs/results/reliability/measure_ties_partial.py --preset small --out docs/results/reliability

Results files (no model needed, so the numbers isolate the evaluation):
  * "noisy oracle": GT boxes as detections, one-hot-by-identity features plus Gaussian noise (--sigma, 0.3 per
    dimension, seed 0): a plausible, imperfect model;
  * "constant": the same boxes, every feature identical (a collapsed embedding);
  * "partial": the noisy oracle without every second gallery image.
Writes ties_partial.json: standard and pessimistic metrics per TestG{N} and what the partial file does.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from galw_d2.data import load_cuhk_sysu_protocol  # noqa: E402
from galw_d2.data.datasets.cuhk_sysu import cuhk_sysu_gallery_sizes  # noqa: E402
from galw_d2.data.synthps import generate_synthps  # noqa: E402
from galw_d2.evaluation.evaluator import evaluate_results  # noqa: E402


def results(protocol, mode, sigma=0.1, seed=0):
    rng = np.random.default_rng(seed)
    pids = sorted({int(p) for g in protocol.gallery.values() for p in g.pids if p >= 0}
                  | {q.pid for q in protocol.queries})
    col = {p: i for i, p in enumerate(pids)}
    dim = len(pids) + 1

    def feat(pid):
        if mode == "constant":
            return np.ones(dim, np.float32)
        v = np.zeros(dim, np.float32)
        v[col[pid] if pid >= 0 else dim - 1] = 1.0
        return v + rng.normal(0, sigma, dim).astype(np.float32)

    gallery = {n: {"boxes": g.boxes, "scores": np.ones(len(g.pids), np.float32),
                   "feats": np.stack([feat(int(p)) for p in g.pids]) if len(g.pids) else np.zeros((0, dim), np.float32)}
               for n, g in protocol.gallery.items()}
    queries = [{"image": q.image, "box": q.box, "feat": feat(q.pid)} for q in protocol.queries]
    return {"gallery": gallery, "queries": queries}


def pct(d):
    return {k: round(100 * v, 2) for k, v in d.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--work", default="output/reliability")
    ap.add_argument("--out", default="docs/results/reliability")
    ap.add_argument("--sigma", type=float, default=0.3, help="feature noise per dimension of the noisy oracle")
    a = ap.parse_args()
    t0 = time.time()
    root = os.path.join(a.work, f"synthps_{a.preset}_cuhk")
    if not os.path.isdir(os.path.join(root, "annotation")):
        generate_synthps(root, "cuhk_sysu", a.preset, 0)
    out = {"command": " ".join(sys.argv), "preset": a.preset, "sigma": a.sigma, "protocols": {}}
    for g in cuhk_sysu_gallery_sizes(root) + [-1]:
        proto = load_cuhk_sysu_protocol(root, gallery_size=g)
        row = {}
        for mode in ("noisy_oracle", "constant"):
            s = evaluate_results(proto, results(proto, mode, a.sigma), det_thresh=0.5, detection=False)["search"]
            t = s["ties"]
            row[mode] = {"standard": pct(t["standard"]), "pessimistic": pct(t["pessimistic"]),
                         "tied_top1_fraction": t["tied_top1_fraction"], "affected_fraction": t["affected_fraction"],
                         "feature_spread": round(t["feature_spread"], 4), "collapsed": t["collapsed"],
                         "warning": t["warning"] is not None}
        full = results(proto, "noisy_oracle", a.sigma)
        part = dict(full, gallery={n: r for i, (n, r) in enumerate(full["gallery"].items()) if i % 2 == 0})
        try:
            evaluate_results(proto, part, detection=False)
            row["partial"] = {"refused": False}
        except ValueError as e:
            allowed = evaluate_results(proto, part, detection=False, allow_partial=True)["search"]
            row["partial"] = {"refused": True, "error": str(e)[:160],
                              "allow_partial_scores": pct({k: allowed[k] for k in ("mAP", "top1", "top5", "top10")}),
                              "missing_gallery_images": allowed["missing_gallery_images"]}
        out["protocols"][proto.name] = row
        print(proto.name, json.dumps(row)[:400])
    out["wall_s"] = round(time.time() - t0, 1)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "ties_partial.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {a.out}/ties_partial.json in {out['wall_s']} s")


if __name__ == "__main__":
    main()
