#!/usr/bin/env python
"""Group GALW tasks from recorded gradient trends (paper Algorithm 1, lines 7-11).

    python tools/group_tasks.py --trends output/phase1/gradient_trends.json --num-groups 4 --output DIR \
        [--strategy slope|branch|semantic|random|manual] [--slope mean_diff|lstsq] [--log-base 10] \
        [--linkage average] [--seed 0] [--manual "loss_a,loss_b;loss_c" | --manual table4_g4]

Writes DIR/groups.json ({"groups", "slopes", "transformed", "settings", "report"}), DIR/galw_phase2.yaml
(merge it after the model config for phase 2), DIR/gradient_trends.png (Fig. 3) and DIR/dendrogram.png.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("MPLBACKEND", "Agg")

from galw_d2.galw.grouping import GROUP_PRESETS, GROUPING_REGISTRY  # noqa: E402
from galw_d2.galw.workflow import make_groups  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trends", required=True, help="trends JSON written by phase 1 (GALW.RECORD.OUTPUT)")
    ap.add_argument("--num-groups", type=int, required=True, help="number of groups G")
    ap.add_argument(
        "--strategy",
        default="slope",
        choices=GROUPING_REGISTRY.names(),
        help="a grouping strategy of galw_d2.galw.GROUPING_REGISTRY",
    )
    ap.add_argument("--slope", default="mean_diff", choices=["mean_diff", "lstsq"], help="Eq. 7 or least squares")
    ap.add_argument("--log-base", type=float, default=10.0, help="base of the log in Eq. 8 (default 10)")
    ap.add_argument("--linkage", default="average", help="scipy linkage method (default average)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    ap.add_argument(
        "--manual",
        default=None,
        help=f'manual groups, e.g. "loss_a,loss_b;t3", or a preset of the paper: {", ".join(GROUP_PRESETS)}',
    )
    ap.add_argument("--output", required=True, help="output folder")
    a = ap.parse_args(argv)
    try:
        res = make_groups(
            a.trends,
            a.num_groups,
            a.output,
            strategy=a.strategy,
            slope=a.slope,
            log_base=a.log_base,
            linkage=a.linkage,
            seed=a.seed,
            manual=a.manual,
        )
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"group_tasks: error: {e}", file=sys.stderr)
        return 2
    for i, g in enumerate(res["groups"]):
        print(f"group {i + 1}: {', '.join(g)}")
    rep = res["report"]
    print(f"requested {rep['requested']} groups, found {rep['found']}")
    for n in rep["notes"]:
        print(f"note: {n}")
    for k, p in res["paths"].items():
        if p:
            print(f"wrote {k}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
