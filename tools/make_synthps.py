#!/usr/bin/env python
"""Generate SynthPS, a synthetic person-search dataset, in the official CUHK-SYSU or PRW layout.

Example:
    python tools/make_synthps.py --output datasets/synthps_small_cuhk --format cuhk_sysu --preset small --seed 0
    python tools/make_synthps.py --output datasets/synthps_medium_prw --format prw --preset medium --seed 0

Prints a summary (images, identities, boxes, queries) and writes a preview grid of scenes with their
boxes and ids (default <output>/preview.jpg). The same seed gives the same files, byte for byte.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from galw_d2.data.synthps import FORMATS, PRESETS, generate_synthps, render_preview, summarize  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, help="dataset root to create (new, empty, or a previous SynthPS root)")
    ap.add_argument("--format", required=True, choices=FORMATS, help="official file layout to write")
    ap.add_argument(
        "--preset",
        default="tiny",
        choices=sorted(PRESETS),
        help="dataset size: tiny (tests), small (demo), medium (studies); see docs/synthps.md (default: tiny)",
    )
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument("--preview", default=None, help="preview image path (default: <output>/preview.jpg)")
    ap.add_argument("--no-preview", action="store_true", help="do not write a preview image")
    ap.add_argument("--preview-scenes", type=int, default=12, help="scenes in the preview grid (default: 12)")
    ap.add_argument("--preview-scale", type=float, default=1.0, help="resize factor of the preview tiles (default: 1)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)

    t0 = time.time()
    try:
        root, truth = generate_synthps(
            args.output, args.format, args.preset, args.seed, progress=args.preset != "tiny", return_truth=True
        )
    except (FileExistsError, ValueError) as e:
        ap.error(str(e))
    elapsed = time.time() - t0
    summary = summarize(truth)
    summary["root"] = root
    summary["seconds"] = round(elapsed, 2)
    if not args.no_preview:
        summary["preview"] = render_preview(root, args.preview, n=args.preview_scenes, scale=args.preview_scale)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    tr, te = summary["train"], summary["test"]
    print(f"SynthPS {args.preset} ({args.format}, seed {args.seed}) written to {root} in {elapsed:.1f} s")
    print(
        f"  train: {tr['images']} images, {tr['ids']} ids, {tr['boxes']} boxes ({tr['unlabeled']} unlabeled), "
        f"{tr['cameras']} cameras, person height {tr['person_height'][0]}-{tr['person_height'][1]} px"
    )
    print(
        f"  test:  {te['images']} images, {te['ids']} ids, {te['boxes']} boxes ({te['unlabeled']} unlabeled), "
        f"{summary['queries']} queries"
        + (f", gallery sizes {summary['gallery_sizes']}" if summary["gallery_sizes"] else "")
    )
    print(f"  attributes: {summary['attributes']} ({os.path.join(root, 'synthps_attributes.json')})")
    if "preview" in summary:
        print(f"  preview: {summary['preview']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
