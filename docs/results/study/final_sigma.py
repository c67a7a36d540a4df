"""Final learned sigma of a study's uncertainty arms, per task, read from the checkpoints, and the
effective task weights they give.

    python docs/results/study/final_sigma.py output/study > docs/results/study/final_sigma.md

RULWF's regulariser lambda |sigma - 1| (lambda = 1) makes sigma = 1 a local minimum whenever L/k < 1
(one-sided derivatives at log sigma = 0: -2L/k and 2 - 2L/k); the sigma tables show where the runs
ended. The weight of task i is exp(-2 s_g(i)) / k_i = 1 / (k_i sigma_g(i)^2) (Eq. 5/9): a grouped
arm's sigma follows the group's summed loss, so a small-loss task in a group with a large-loss one loses
the large weight it gets on its own (ULWF's optimum is sigma^2 = 2 L / k, i.e. weight 1 / (2 L)).
"""

import json
import math
import os
import sys

import numpy as np
import torch

from galw_d2.tasks import TASK_KIND_K, TASKS

out = sys.argv[1]
seeds = [0, 1, 2, 3, 4]
arms = [a for a in ("ulwf", "rulwf", "galw", "ulwf_grouped") if os.path.isdir(f"{out}/seed0/{a}")]
names = [t.short for t in TASKS[:10]]
short = {t.name: t.short for t in TASKS}
k = {t.short: TASK_KIND_K[t.kind] for t in TASKS}
print(f"# Final sigma and task weights per uncertainty arm (`python docs/results/study/final_sigma.py {out}`)\n")
weights, detection = {}, {}
for arm in arms:
    print(f"## {arm}: sigma per task\n")
    print("| seed | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    weights[arm], detection[arm] = [], []
    for s in seeds:
        ck = torch.load(f"{out}/seed{s}/{arm}/model_final.pth", map_location="cpu", weights_only=False)["model"]
        ls, asg = ck["galw_weighting.log_sigma"].tolist(), ck["galw_weighting.assignment"].tolist()
        # The weighting's task order: GALW.GROUPS flattened for the grouped arms (weighting_tasks()),
        # the task table's order otherwise; assignment[i] is the slot of the weighting's i-th task.
        with open(f"{out}/seed{s}/{arm}/result.json") as f:
            result = json.load(f)
        groups = result.get("groups")
        detection[arm].append(result.get("detection") or {})
        order = [short[t] for g in groups for t in g] if groups else names
        sigma = {order[i]: math.exp(ls[asg[i]]) for i in range(len(order))}
        weights[arm].append([1.0 / (k[n] * sigma[n] ** 2) for n in names])
        print(f"| {s} | " + " | ".join(f"{sigma[n]:.3f}" for n in names) + " |")
    print()
print("## Effective task weight 1 / (k sigma^2) at the end of training (mean over seeds)\n")
print("| arm | " + " | ".join(names) + " | detection AP / recall (%) |")
print("|---" * (len(names) + 2) + "|")
if os.path.isdir(f"{out}/seed0/fixed"):
    weights["fixed"] = [[t.weight for t in TASKS[:10]]]  # the Table 1 row (GALW.FIXED.PRESET table1)
    detection["fixed"] = []
    for s in seeds:
        with open(f"{out}/seed{s}/fixed/result.json") as f:
            detection["fixed"].append(json.load(f).get("detection") or {})
    arms = ["fixed"] + arms
for arm in arms:
    w = np.mean(weights[arm], axis=0)
    det = detection[arm]
    ap = np.mean([100 * d.get("AP", float("nan")) for d in det])
    rc = np.mean([100 * d.get("recall", float("nan")) for d in det])
    print(f"| {arm} | " + " | ".join(f"{x:.2f}" for x in w) + f" | {ap:.1f} / {rc:.1f} |")
print()
