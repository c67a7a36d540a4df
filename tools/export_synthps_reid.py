#!/usr/bin/env python
"""Export the person crops of a PRW-layout person-search root (SynthPS ``--format prw``, or PRW) as a
Market-1501-layout re-id dataset that torchreid reads (galw_d2.reid.data).

    # generate SynthPS small (PRW layout) if missing, then export its crops
    python tools/export_synthps_reid.py --output datasets/reid/synthps_reid_small --preset small --seed 0
    # an existing PRW-layout root
    python tools/export_synthps_reid.py --source datasets/prw --output datasets/reid/prw_crops

Train with ``DATA.ROOT datasets/reid DATA.SOURCES "['synthps_reid_small']"`` (names
``synthps_reid_<preset>`` are registered with torchreid by tools/train_reid.py).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from galw_d2.reid.data import export_reid_crops  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="Market-1501-layout folder to write")
    p.add_argument("--source", default="", help="PRW-layout root ('' = generate SynthPS --preset/--seed)")
    p.add_argument("--preset", default="small", help="SynthPS preset when generating (tiny | small)")
    p.add_argument("--seed", type=int, default=0, help="SynthPS seed, and the query choice")
    p.add_argument("--min-height", type=int, default=0, help="skip boxes lower than this (pixels)")
    args = p.parse_args(argv)
    src = args.source
    if not src:
        from galw_d2.data.synthps import generate_synthps

        src = os.path.join(os.path.dirname(os.path.abspath(args.output)), f"synthps_{args.preset}_prw_s{args.seed}")
        if not os.path.isfile(os.path.join(src, "synthps_meta.json")):
            generate_synthps(src, "prw", args.preset, args.seed)
    try:
        meta = export_reid_crops(src, args.output, seed=args.seed, min_height=args.min_height)
    except (FileExistsError, ValueError, FileNotFoundError) as e:
        p.error(str(e))
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
