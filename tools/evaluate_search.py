#!/usr/bin/env python
"""Re-score a saved-results file (written by PersonSearchEvaluator with TEST.PERSON_SEARCH.SAVE_RESULTS)
under the standard person-search protocol, without running a model.

Examples:
    python tools/evaluate_search.py --dataset cuhk_sysu --root datasets/cuhk_sysu \
        --results output/inference/cuhk_sysu_test/search_results.pth --gallery-size 100 --json out.json
    python tools/evaluate_search.py --dataset prw --root datasets/prw --results R.pth --cross-camera
    # CUHK-SYSU gallery-size curve (Fig. 4): every TestG{N}.mat present, plus the full set
    python tools/evaluate_search.py --dataset cuhk_sysu --root DIR --results R.pth --sweep --plot fig4.png
    # top-k figure (Fig. 5) for some queries
    python tools/evaluate_search.py --dataset cuhk_sysu --root DIR --results R.pth --topk-figure fig5.png \
        --figure-queries 0 1 2

The JSON: {"search": {"mAP", "top1", "top5", "top10"}, "detection": {"AP", "recall"}, "settings": {...},
"ties": {"standard": {...}, "pessimistic": {...}, "tied_top1_fraction", "affected_fraction",
"feature_spread", "collapsed", "warning"}} (fractions in [0, 1]; with --sweep, "sweep":
{gallery_size: {...}} as well).

A results file that does not cover the protocol's gallery (missing or unknown images, path-style keys,
an empty gallery), inverted boxes, NaN/inf values or an unreadable file stop with an error naming the
file, field and values; --allow-partial scores missing images as images without detections (and
reports how many). Collapsed or heavily tied embeddings print a WARNING with the pessimistic numbers.
"""

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from galw_d2.evaluation.results import load_results  # noqa: E402
from galw_d2.evaluation.scoring import evaluate_results  # noqa: E402
from galw_d2.evaluation.search import TIE_RULES, check_det_thresh  # noqa: E402

logger = logging.getLogger("evaluate_search")


def load_protocol(dataset, root, gallery_size=100, subset=None, cross_camera=False, box_convention="standard"):
    if dataset == "cuhk_sysu":
        from galw_d2.data.datasets.cuhk_sysu import load_cuhk_sysu_protocol

        if cross_camera:
            raise SystemExit("--cross-camera applies to PRW only")
        return load_cuhk_sysu_protocol(root, gallery_size=gallery_size, subset=subset, box_convention=box_convention)
    from galw_d2.data.datasets.prw import load_prw_protocol

    if subset:
        raise SystemExit("--subset applies to CUHK-SYSU only")
    return load_prw_protocol(root, cross_camera=cross_camera, box_convention=box_convention)


def image_dir(dataset, root):
    return os.path.join(root, "Image", "SSM") if dataset == "cuhk_sysu" else os.path.join(root, "frames")


def _det_thresh(text: str) -> float:
    """argparse type of --det-thresh: a finite number in [0, 1)."""
    try:
        return check_det_thresh(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def score(args, gallery_size, detection=True):
    protocol = load_protocol(args.dataset, args.root, gallery_size, args.subset, args.cross_camera, args.box_convention)
    res = load_results(args.results, protocol=protocol, allow_partial=args.allow_partial)
    out = evaluate_results(
        protocol,
        res,
        det_thresh=args.det_thresh,
        detection=detection,
        progress=args.progress,
        allow_partial=args.allow_partial,
        tie_rule=args.tie_rule,
        source=args.results,
    )
    s = out["search"]
    result = {"search": {k: s[k] for k in ("mAP", "top1", "top5", "top10")}}
    if "detection" in out:
        result["detection"] = {k: out["detection"][k] for k in ("AP", "recall")}
    result["settings"] = {
        "dataset": args.dataset,
        "protocol": f"{protocol.dataset}/{protocol.name}",
        "rule": protocol.rule,
        "det_thresh": args.det_thresh,
        "gallery_size": gallery_size if args.dataset == "cuhk_sysu" else None,
        "cross_camera": args.cross_camera,
        "subset": args.subset,
        "box_convention": args.box_convention,
        "num_queries": s["num_queries"],
        "num_queries_without_gt": s["num_queries_without_gt"],
        "results_file": os.path.abspath(args.results),
        "tie_rule": args.tie_rule,
        "missing_gallery_images": s["missing_gallery_images"],
        "inference_settings": res.get("settings", {}),
    }
    # NaN (fewer than 2 detections) is not JSON: null
    result["ties"] = {k: (None if isinstance(v, float) and v != v else v) for k, v in s["ties"].items()}
    return result, protocol, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=["cuhk_sysu", "prw"], help="layout of --root")
    ap.add_argument("--root", required=True, help="dataset root (the official layout, or a SynthPS root)")
    ap.add_argument("--results", required=True, help="saved-results file (torch.save'd dict)")
    ap.add_argument("--gallery-size", type=int, default=100, help="CUHK-SYSU TestG{N}; -1 = full test set")
    ap.add_argument(
        "--det-thresh", type=_det_thresh, default=0.5, help="detection score threshold in [0, 1) (always reported)"
    )
    ap.add_argument(
        "--tie-rule",
        default="standard",
        choices=TIE_RULES,
        help="order of equal similarities: standard (gallery order, the published protocol) or "
        "pessimistic (false positives first); both are in the JSON's 'ties'",
    )
    ap.add_argument(
        "--allow-partial",
        action="store_true",
        help="score protocol gallery images missing from the results file as images without "
        "detections (default: an error); the count is reported",
    )
    ap.add_argument("--cross-camera", action="store_true", help="PRW: gallery = other cameras only")
    ap.add_argument("--subset", default=None, choices=["Occlusion", "Resolution"], help="CUHK-SYSU query subset")
    ap.add_argument(
        "--box-convention",
        default="standard",
        choices=["standard", "geometric"],
        help="ground-truth boxes: the published protocol's integer boxes (default) or float boxes "
        "clipped after the conversion (docs/datasets.md 'Box conventions')",
    )
    ap.add_argument("--json", default=None, help="write the metrics and settings here")
    ap.add_argument("--sweep", action="store_true", help="CUHK-SYSU: every TestG{N}.mat present, and -1")
    ap.add_argument("--plot", default=None, help="with --sweep: mAP vs gallery size figure (png/pdf)")
    ap.add_argument("--topk-figure", default=None, help="top-k search figure for --figure-queries")
    ap.add_argument("--figure-queries", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--figure-k", type=int, default=5)
    ap.add_argument("--progress", action="store_true", help="progress bar while scoring")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    result, protocol, res = score(args, args.gallery_size)
    print(
        f"{result['settings']['protocol']} det_thresh={args.det_thresh}: "
        + " ".join(f"{k}={100 * v:.2f}%" for k, v in result["search"].items())
        + (
            ""
            if "detection" not in result
            else " | detection " + " ".join(f"{k}={100 * v:.2f}%" for k, v in result["detection"].items())
        )
    )
    if result["settings"]["missing_gallery_images"]:
        print(
            f"WARNING: {result['settings']['missing_gallery_images']} protocol gallery images are missing from "
            f"{args.results} and were scored as images without detections (--allow-partial)",
            file=sys.stderr,
        )
    if result["ties"]["warning"]:
        print(f"WARNING: {result['ties']['warning']}", file=sys.stderr)
    if args.sweep:
        if args.dataset != "cuhk_sysu":
            raise SystemExit("--sweep applies to CUHK-SYSU only")
        from galw_d2.data.datasets.cuhk_sysu import cuhk_sysu_gallery_sizes

        sweep = {}
        for g in cuhk_sysu_gallery_sizes(args.root) + [-1]:
            r, _, _ = score(args, g, detection=False)
            sweep[g] = r["search"]
            print(f"  gallery {g:>5}: mAP={100 * r['search']['mAP']:.2f}% top1={100 * r['search']['top1']:.2f}%")
        result["sweep"] = {str(g): v for g, v in sweep.items()}
        if args.plot:
            from galw_d2.evaluation.plots import plot_map_vs_gallery_size

            label = os.path.splitext(os.path.basename(args.results))[0]
            plot_map_vs_gallery_size({label: {g: v["mAP"] for g, v in sweep.items()}}, args.plot)
            print(f"wrote {args.plot}")
    if args.topk_figure:
        import numpy as np

        from galw_d2.evaluation.plots import plot_topk_search

        qf = np.stack([q["feat"] for q in res["queries"]])
        bad = [i for i in args.figure_queries if not 0 <= i < len(protocol.queries)]
        if bad:
            raise SystemExit(f"--figure-queries {bad}: the protocol has {len(protocol.queries)} queries")
        plot_topk_search(
            protocol,
            res["gallery"],
            qf,
            args.figure_queries,
            image_dir(args.dataset, args.root),
            args.topk_figure,
            k=args.figure_k,
            det_thresh=args.det_thresh,
        )
        print(f"wrote {args.topk_figure}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


def cli(argv=None) -> int:
    """Command-line entry: bad input (file, protocol, values) ends with a one-line error and exit 1,
    not a traceback (``main`` raises, for callers and tests)."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate_search: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
