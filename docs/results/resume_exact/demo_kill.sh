#!/bin/bash
# demo --quick (12+12 iterations): uninterrupted vs killed (SIGKILL once phase1/model_0000007.pth exists) + --resume
set -u
cd /work/wt/reliab2
export OMP_NUM_THREADS=1 PYTHONPATH=/work/wt/reliab2
PY=/work/main/.venv/bin/python
B=/tmp/reliab2_demo_kill; rm -rf $B; mkdir -p $B
ARGS="--quick --phase1-iters 12 --phase2-iters 12 --data-dir $B/data --seed 0"
t0=$(date +%s)
$PY tools/demo.py $ARGS --output $B/full > $B/full.log 2>&1; echo "full rc=$? $(( $(date +%s)-t0 ))s"
$PY tools/demo.py $ARGS --output $B/killed > $B/killed1.log 2>&1 &
PID=$!
while [ ! -f $B/killed/phase1/model_0000007.pth ] && kill -0 $PID 2>/dev/null; do sleep 0.05; done
kill -9 $PID; wait $PID; echo "killed rc=$?"; ls $B/killed/phase1
$PY tools/demo.py $ARGS --output $B/killed --resume > $B/killed2.log 2>&1; echo "resume rc=$? $(( $(date +%s)-t0 ))s"
$PY - <<'PY'
import json, torch
B="/tmp/reliab2_demo_kill"
a, b = (json.load(open(f"{B}/{r}/metrics.json")) for r in ("full", "killed"))
print("groups equal:", a["groups"] == b["groups"], a["groups"])
print("search equal:", a["search"] == b["search"], a["search"].get("mAP"), b["search"].get("mAP"))
for ph in ("phase1", "phase2"):
    ma, mb = (torch.load(f"{B}/{r}/{ph}/model_final.pth", weights_only=False)["model"] for r in ("full", "killed"))
    print(ph, "tensors differing:", sum(not torch.equal(ma[k], mb[k]) for k in ma), "of", len(ma))
PY
