"""tools/train_net.py with 2 CPU processes (gloo): train ROI-AlignPS* tiny on SynthPS tiny and evaluate
with the person-search protocol, through detectron2's own ``launch``.

Runs only where detectron2's ``launch`` starts several CPU processes (upstream main falls back to
GLOO); detectron2 v0.6's ``launch`` asserts CUDA for world_size > 1, so the test is skipped there
(the gloo path of the trainer itself is tested on both versions with torch.multiprocessing in
test_galw_trainer.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from galw_d2.utils.env import launch_supports_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthps", "roi_alignps_R18_tiny_synthps.yaml")


@pytest.mark.skipif(
    torch.cuda.is_available() or not launch_supports_cpu(),
    reason="detectron2's launch cannot start several CPU processes here (v0.6 asserts CUDA for "
    "world_size > 1; upstream main uses GLOO)",
)
def test_two_process_gloo_train_and_eval_through_train_net(tmp_path, synthps_tiny):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    os.symlink(synthps_tiny["cuhk_sysu"], datasets / "synthps_tiny_cuhk")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--num-gpus",
        "2",
        "--config-file",
        CONFIG,
        "OUTPUT_DIR",
        str(out),
        "DATASETS.TRAIN",
        "('synthps_tiny_cuhk_train',)",
        "DATASETS.TEST",
        "('synthps_tiny_cuhk_test',)",
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "100",
        "SOLVER.WARMUP_ITERS",
        "1",
        "SOLVER.STEPS",
        "()",
        "TEST.EVAL_PERIOD",
        "4",
        "TEST.PERSON_SEARCH.GALLERY_SIZE",
        "50",
        "INPUT.PERSON_SEARCH.TRAIN_LONG_SIDE_RANGE",
        "(160, 192)",
        "SEED",
        "3",
    ]
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=str(datasets),
        OMP_NUM_THREADS="1",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
    ck = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ck["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last = [m for m in metrics if "search/mAP" in m]
    assert last and 0.0 <= last[-1]["search/mAP"] <= 100.0
    assert "World size: 2" in r.stdout  # default_setup's line (rank 0)
