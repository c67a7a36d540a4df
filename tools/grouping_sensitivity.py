#!/usr/bin/env python
"""How much GALW's groups depend on the grouping settings and on the trends' length (no training).

    python tools/grouping_sensitivity.py --trends output/study/seed*/phase1/gradient_trends.json \
        --num-groups 4 --output docs/results/study/grouping_sensitivity

For each recorded trends file (one per seed) the tasks are grouped with the default settings (slope
mean_diff, log base 10, average linkage, G) and with one setting changed at a time: log base e, least-
squares slope, single / complete linkage, G - 1 and G + 1, only the first or the last half of the epochs
(trend length and noise), and the paper's Table 4 grouping. Reported per variant: the adjusted Rand index
(ARI) to the default grouping of the same seed (mean over seeds: 1 = the setting does not matter) and
the mean ARI between seeds (1 = stable across seeds). Writes ``<output>.json`` and ``<output>.md``.
"""

import argparse
import json
import os
import sys
from itertools import combinations

import numpy as np

from galw_d2.evaluation.stats import adjusted_rand_index, groups_to_labels
from galw_d2.galw.grouping import group_tasks, load_trends
from galw_d2.tasks import TASKS


def _half(trends: dict, first: bool) -> dict:
    t = json.loads(json.dumps(trends))
    for k, v in t["gradient_magnitude"].items():
        n = len(v) // 2
        t["gradient_magnitude"][k] = v[:n] if first else v[len(v) - n :]
        if "probe_counts" in t:
            c = t["probe_counts"][k]
            t["probe_counts"][k] = c[:n] if first else c[len(c) - n :]
    return t


def variants(g: int):
    """(label, trends transform, group_tasks keywords)."""
    same = lambda t: t  # noqa: E731
    return [
        ("default (mean_diff, log10, average, G)", same, {}),
        ("log base e", same, {"log_base": float(np.e)}),
        ("least-squares slope", same, {"slope": "lstsq"}),
        ("single linkage", same, {"linkage": "single"}),
        ("complete linkage", same, {"linkage": "complete"}),
        (f"G = {g - 1}", same, {"num_groups": g - 1}),
        (f"G = {g + 1}", same, {"num_groups": g + 1}),
        ("first half of the epochs", lambda t: _half(t, True), {}),
        ("last half of the epochs", lambda t: _half(t, False), {}),
        ("paper Table 4, G = 4 (manual)", same, {"strategy": "manual", "manual": "table4_g4"}),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trends", nargs="+", required=True, help="trends JSON files, one per seed")
    p.add_argument("--num-groups", type=int, default=4)
    p.add_argument("--output", required=True, help="output path without extension")
    a = p.parse_args(argv)
    trends = [load_trends(f) for f in a.trends]
    tasks = list(trends[0]["tasks"])
    rows, groups_of = [], {}
    roi_alignps_tasks = {t.name for t in TASKS if t.index <= 10}
    for label, fn, kw in variants(a.num_groups):
        if kw.get("strategy") == "manual" and set(tasks) != roi_alignps_tasks:
            continue  # the paper's grouping names ROI-AlignPS*'s ten tasks
        kw = dict(kw)
        g = kw.pop("num_groups", a.num_groups)
        gs = [group_tasks(fn(t), g, **kw)["groups"] for t in trends]
        groups_of[label] = gs
        labels = [groups_to_labels(g, tasks) for g in gs]
        base = [groups_to_labels(g, tasks) for g in groups_of[variants(a.num_groups)[0][0]]]
        to_default = float(np.mean([adjusted_rand_index(x, y) for x, y in zip(labels, base)]))
        across = [adjusted_rand_index(x, y) for x, y in combinations(labels, 2)]
        rows.append(
            {
                "variant": label,
                "ari_to_default": to_default,
                "ari_across_seeds": float(np.mean(across)) if across else None,
                "num_groups_found": [len(g) for g in gs],
            }
        )
    short = {t: t.replace("loss_", "") for t in tasks}
    md = [
        "# Sensitivity of GALW's groups to the grouping settings (no training)",
        "",
        f"Trends: {len(trends)} files ({', '.join(a.trends)}); G = {a.num_groups}.",
        "",
        "| variant | ARI to the default grouping (mean over seeds) | mean ARI across seeds | groups found |",
        "|---|---|---|---|",
    ]
    for r in rows:
        across = "-" if r["ari_across_seeds"] is None else f"{r['ari_across_seeds']:.2f}"
        md.append(f"| {r['variant']} | {r['ari_to_default']:.2f} | {across} | {r['num_groups_found']} |")
    md += ["", "Default groups per trends file:", ""]
    for f, g in zip(a.trends, groups_of[rows[0]["variant"]]):
        md.append(f"- {f}: " + "  ".join("{" + ", ".join(short[t] for t in grp) + "}" for grp in g))
    md.append("")
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output + ".json", "w") as f:
        json.dump({"rows": rows, "groups": groups_of, "trends": a.trends, "num_groups": a.num_groups}, f, indent=1)
    with open(a.output + ".md", "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
