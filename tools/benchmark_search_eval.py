#!/usr/bin/env python
"""Time the search metrics on a CUHK-SYSU-sized synthetic case (not a test).

Default: 6,978 gallery images, ~10 detections each, 256-d features, 2,900 queries each with its own
gallery list of 4,000 images (TestG4000-like, 1-5 images containing the person, one duplicate entry).

    OMP_NUM_THREADS=2 python tools/benchmark_search_eval.py [--queries 2900] [--gallery-size 4000]
        [--images 6978] [--dets 10] [--dim 256] [--full]

``--full`` also times the full-gallery rule ("all_but_query": every image but the query's own).
"""

import argparse
import time

import numpy as np

from galw_d2.data.protocol import GalleryImage, SearchProtocol, SearchQuery
from galw_d2.evaluation import evaluate_search


def build_case(n_q, gsize, n_img, n_det, dim, seed=0, rule="explicit"):
    rng = np.random.default_rng(seed)
    names = [f"s{i}.jpg" for i in range(n_img)]
    n_per = rng.poisson(n_det, n_img)
    gallery, gt = {}, {}
    for i, n in enumerate(names):
        k = int(n_per[i])
        xy = rng.uniform(0, 600, (k, 2)).astype(np.float32)
        wh = rng.uniform(20, 150, (k, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + wh], 1)
        gallery[n] = {
            "boxes": boxes,
            "scores": rng.uniform(0, 1, k).astype(np.float32),
            "feats": rng.normal(size=(k, dim)).astype(np.float32),
        }
        gt[n] = (boxes[:2] + rng.normal(0, 5, (min(k, 2), 4)).astype(np.float32)) if k else np.zeros((0, 4), np.float32)
    queries = []
    pids_of = {n: [] for n in names}
    for qi in range(n_q):
        n_pos = int(rng.integers(1, 6))
        pos = rng.choice(n_img, n_pos + 1, replace=False)
        qimg, pos = names[pos[0]], pos[1:]
        entries = []
        for p in pos:
            b = gt[names[p]][0] if len(gt[names[p]]) else np.array([0, 0, 50, 120], np.float32)
            entries.append((names[p], b))
            pids_of[names[p]].append((qi, b))
        neg = rng.choice(n_img, gsize - n_pos, replace=False)
        entries += [(names[g], None) for g in neg]
        entries.append(entries[0])  # a duplicate entry
        queries.append(SearchQuery(qimg, [0, 0, 50, 120], pid=qi, gallery=entries if rule == "explicit" else None))
    gal_gt = {n: GalleryImage(n, [b for _, b in pids_of[n]], [q for q, _ in pids_of[n]]) for n in names}
    proto = SearchProtocol("cuhk_sysu", f"TestG{gsize}" if rule == "explicit" else "TestG-1", rule, gal_gt, queries)
    qf = rng.normal(size=(n_q, dim)).astype(np.float32)
    return proto, gallery, qf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2900)
    ap.add_argument("--gallery-size", type=int, default=4000)
    ap.add_argument("--images", type=int, default=6978)
    ap.add_argument("--dets", type=float, default=10)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--det-thresh", type=float, default=0.0)
    ap.add_argument("--full", action="store_true", help="also time the full-gallery (all_but_query) rule")
    args = ap.parse_args()
    rules = ["explicit"] + (["all_but_query"] if args.full else [])
    for rule in rules:
        t0 = time.perf_counter()
        proto, gallery, qf = build_case(args.queries, args.gallery_size, args.images, args.dets, args.dim, rule=rule)
        n_det = sum(len(g["scores"]) for g in gallery.values())
        t1, c1 = time.perf_counter(), time.process_time()
        out = evaluate_search(proto, gallery, qf, det_thresh=args.det_thresh, progress=True)
        t2, c2 = time.perf_counter(), time.process_time()
        print(
            f"rule={rule} queries={args.queries} gallery_size={args.gallery_size if rule == 'explicit' else 'all'} "
            f"images={args.images} detections={n_det} dim={args.dim}: build {t1 - t0:.1f} s, "
            f"score {t2 - t1:.1f} s wall, {c2 - c1:.1f} s CPU (all threads)  "
            f"(mAP={out['mAP']:.4f} top1={out['top1']:.4f})"
        )


if __name__ == "__main__":
    main()
