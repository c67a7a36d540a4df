"""Final learned sigma of the study's uncertainty arms, per task, read from the checkpoints.

    python docs/results/study/final_sigma.py output/study > docs/results/study/final_sigma.md

RULWF's regulariser lambda |sigma - 1| (lambda = 1) makes sigma = 1 a local minimum whenever L/k < 1
(one-sided derivatives at log sigma = 0: -2L/k and 2 - 2L/k); this shows where the runs ended.
"""
import json
import math
import sys

import torch

from galw_d2.tasks import TASKS

out = sys.argv[1]
seeds = [0, 1, 2, 3, 4]
names = [t.short for t in TASKS[:10]]
short = {t.name: t.short for t in TASKS}
print("# Final sigma per task (`python docs/results/study/final_sigma.py output/study`)\n")
for arm in ("ulwf", "rulwf", "galw", "ulwf_grouped"):
    print(f"## {arm}\n")
    print("| seed | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for s in seeds:
        ck = torch.load(f"{out}/seed{s}/{arm}/model_final.pth", map_location="cpu", weights_only=False)["model"]
        ls, asg = ck["galw_weighting.log_sigma"].tolist(), ck["galw_weighting.assignment"].tolist()
        # The weighting's task order: GALW.GROUPS flattened for the grouped arms (weighting_tasks()),
        # the task table's order otherwise; assignment[i] is the slot of the weighting's i-th task.
        with open(f"{out}/seed{s}/{arm}/result.json") as f:
            groups = json.load(f).get("groups")
        order = [short[t] for g in groups for t in g] if groups else names
        sigma = {order[i]: math.exp(ls[asg[i]]) for i in range(len(order))}
        print(f"| {s} | " + " | ".join(f"{sigma[n]:.3f}" for n in names) + " |")
    print()
