"""Held-apart check of the grouping mechanism (issue 14): GALW with three groupings vs RULWF on seeds
5, 6, 7 (never used to choose anything), paired by seed.

    python docs/results/heldout_grouping/compare.py output > docs/results/heldout_grouping/report.md

Reads ``<root>/heldout_slope/seed<S>/{fixed,rulwf,galw}/result.json`` (tools/study.py, the default
slope grouping from each seed's phase 1) and ``<root>/heldout_{magnitude,table4}/seed<S>/galw/result.json``
(tools/study.py with a pre-made ``seed<S>/grouping/groups.json``: the study then skips phase 1 and trains
GALW with those groups; same settings, so the same initial weights and data order as the slope study).
"""

import json
import sys

import numpy as np

from galw_d2.evaluation.stats import mean_std, paired_difference

root = sys.argv[1]
seeds = [5, 6, 7]
arms = {
    "fixed": f"{root}/heldout_slope/seed{{s}}/fixed",
    "rulwf": f"{root}/heldout_slope/seed{{s}}/rulwf",
    "galw (slope groups, the paper's method)": f"{root}/heldout_slope/seed{{s}}/galw",
    "galw (loss-magnitude groups)": f"{root}/heldout_magnitude/seed{{s}}/galw",
    "galw (the paper's Table 4 PRW groups)": f"{root}/heldout_table4/seed{{s}}/galw",
}
res = {a: [json.load(open(p.format(s=s) + "/result.json")) for s in seeds] for a, p in arms.items()}


def per_query(arm, key):
    return 100 * np.asarray([r[key] for r in res[arm]])


print("# Held-apart check: which grouping, if any, helps GALW here (seeds 5, 6, 7)\n")
print("`python docs/results/heldout_grouping/compare.py output` (see the module docstring for the runs).\n")
print("| arm | groups (seed 5) | mAP (%) | top-1 (%) | det. AP / recall (%) |")
print("|---|---|---|---|---|")
for a in arms:
    m = mean_std([100 * r["mAP"] for r in res[a]])
    t = mean_std([100 * r["top1"] for r in res[a]])
    ap = np.mean([100 * r["detection"]["AP"] for r in res[a]])
    rc = np.mean([100 * r["detection"]["recall"] for r in res[a]])
    g = res[a][0].get("groups")
    gs = " ".join("{" + ",".join(x.replace("loss_", "") for x in grp) + "}" for grp in g) if g else "-"
    print(f"| {a} | {gs} | {m['mean']:.2f} ± {m['std']:.2f} | {t['mean']:.2f} ± {t['std']:.2f} | {ap:.1f} / {rc:.1f} |")
print("\nPaired differences (95% interval: bootstrap over seeds and queries; t: Student-t over seeds):\n")
print("| comparison | Δ mAP [95% CI] | t interval | Δ top-1 [95% CI] |")
print("|---|---|---|---|")
names = list(arms)
pairs = [(n, "rulwf") for n in names[2:]] + [(names[3], names[2]), (names[4], names[2])]
for a, b in pairs:
    d = paired_difference(per_query(a, "per_query_ap"), per_query(b, "per_query_ap"), num_boot=2000)
    d1 = paired_difference(per_query(a, "per_query_top1"), per_query(b, "per_query_top1"), num_boot=2000)
    print(
        f"| {a} − {b} | {d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] "
        f"| [{d['ci95_t'][0]:+.2f}, {d['ci95_t'][1]:+.2f}] "
        f"| {d1['mean']:+.2f} [{d1['ci95'][0]:+.2f}, {d1['ci95'][1]:+.2f}] |"
    )
print()
