"""Time the standard-protocol evaluation of a random-init ROI-AlignPS* tiny on a SynthPS root.

    OMP_NUM_THREADS=1 python docs/results/synthps_medium/eval_time.py ROOT FORMAT PRESET

Builds the config the demo pipeline uses (galw_d2.apps.recipe.build_cfg, seed 0), the model with
random initial weights, and runs galw_d2.apps.evaluation.evaluate_model on <prefix>_test; prints a RESULT
line with the wall time of the evaluation. TORCH_THREADS sets torch's threads (default 1).
"""
import json, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import torch
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from galw_d2.data import register_synthps
from galw_d2.apps.evaluation import evaluate_model
from galw_d2.apps.recipe import PipelineSettings, build_cfg

root, fmt, preset = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
prefix = f"time_{preset}_{fmt}"
register_synthps(root, fmt, prefix, preset=preset)
data = {"prefix": prefix, "fmt": fmt, "root": root, "synthetic": True, "preset": preset}
cfg = build_cfg(PipelineSettings(seed=0).resolved(), data, f"output/eval_time/{prefix}")
seed_all_rng(0)
model = build_model(cfg)
model.eval()
from detectron2.data import DatasetCatalog
t0 = time.time(); n = len(DatasetCatalog.get(f"{prefix}_test")); t_load = time.time() - t0
t0 = time.time()
res = evaluate_model(cfg, model, f"{prefix}_test", f"output/eval_time/{prefix}/eval", desc=prefix)
el = time.time() - t0
out = {"root": root, "fmt": fmt, "preset": preset, "test_records": n, "load_s": round(t_load, 2),
       "eval_s": round(el, 1), "torch_threads": torch.get_num_threads(),
       "gallery_size": int(cfg.TEST.PERSON_SEARCH.GALLERY_SIZE), "det_thresh": float(cfg.TEST.PERSON_SEARCH.DET_THRESH),
       "search": {k: res["search"][k] for k in ("mAP", "top1") if k in res.get("search", {})}}
print("RESULT", json.dumps(out))
