"""Cost of the gradient probes: train a tiny config with probing on and time every step.

    python tools/benchmark_galw_overhead.py [--config stock|roi_alignps] [--iters 60] [--period 20] [--output DIR]

In ONE run (same process, same data, same load on the machine) every iteration is timed, and the time
spent inside the probes is timed separately, so

    overhead = mean probe time / (period x mean time of a step without probe)

(the slowdown of training at that probe period) is measured on the same steps; the raw ratio of
probe time to probe-free training time over the run is reported too. The report also gives the mean
step time of probe and non-probe iterations. ``--ab`` additionally trains a second run with recording
off for a wall-clock comparison (noisy on a shared machine). ``stock`` = configs/stock/faster_rcnn_R18_FPN_tiny.yaml
(GeneralizedRCNN, 4 losses) on generated toy images; ``roi_alignps`` =
configs/synthps/roi_alignps_R18_tiny_synthps.yaml (10 tasks) on a generated SynthPS-tiny root.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from galw_d2.model_zoo import get_config_file

__all__ = ["measure_overhead"]


def _toy_detection_dataset(out_dir, n=16, size=(192, 256), seed=0):
    import cv2
    from detectron2.structures import BoxMode

    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    recs = []
    for i in range(n):
        h, w = size
        img = rng.normal(110, 25, (h, w, 3)).clip(0, 255).astype(np.uint8)
        annos = []
        for _ in range(int(rng.integers(1, 4))):
            ph = int(rng.integers(48, 120))
            pw = max(12, int(ph * 0.4))
            x0, y0 = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
            img[y0 : y0 + ph, x0 : x0 + pw] = rng.integers(0, 255, 3)
            annos.append({"bbox": [x0, y0, x0 + pw, y0 + ph], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0})
        p = os.path.join(out_dir, f"{i:03d}.jpg")
        cv2.imwrite(p, img)
        recs.append({"file_name": p, "image_id": i, "height": h, "width": w, "annotations": annos})
    return recs


def _setup_cfg(kind, work, iters, period, record):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from galw_d2 import add_galw_config

    cfg = add_galw_config(get_cfg())
    if kind == "stock":
        cfg.merge_from_file(get_config_file("stock/faster_rcnn_R18_FPN_tiny.yaml"))
        name = "galw_overhead_toy_train"
        if name not in DatasetCatalog.list():
            recs = _toy_detection_dataset(os.path.join(work, "images"))
            DatasetCatalog.register(name, lambda: recs)
            MetadataCatalog.get(name).set(thing_classes=["person"])
        cfg.DATASETS.TRAIN = (name,)
        cfg.GALW.TASKS = ["loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"]
        cfg.GALW.TASK_KINDS = ["loss_box_reg=reg"]
    elif kind == "roi_alignps":
        from galw_d2.data import register_synthps
        from galw_d2.data.synthps import generate_synthps

        cfg.merge_from_file(get_config_file("synthps/roi_alignps_R18_tiny_synthps.yaml"))
        prefix = "galw_overhead_synthps"
        if f"{prefix}_train" not in DatasetCatalog.list():
            root = os.path.join(work, "synthps_tiny_cuhk")
            if not os.path.exists(os.path.join(root, ".galw_overhead_ok")):
                generate_synthps(root, "cuhk_sysu", "tiny", 0)
                open(os.path.join(root, ".galw_overhead_ok"), "w").close()
            register_synthps(root, "cuhk_sysu", prefix)
        cfg.DATASETS.TRAIN = (f"{prefix}_train",)
        cfg.DATASETS.TEST = ()
    else:
        raise ValueError(f"--config: expected stock or roi_alignps, got {kind}")
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = os.path.join(work, f"out_{kind}_{int(record)}")
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.GALW.STRATEGY = "rulwf"
    cfg.GALW.RECORD.ENABLED = record
    cfg.GALW.RECORD.PERIOD = period
    cfg.GALW.RECORD.EPOCH_ITERS = max(1, iters // 3)
    return cfg


def _trainer_cls(kind):
    if kind == "roi_alignps":
        from galw_d2.engine.person_search import PersonSearchTrainer as base
    else:
        from galw_d2.engine import GALWTrainer as base

    class Timed(base):
        step_times, probe_times = [], []

        def build_writers(self):
            return []

        def run_step(self):
            t0 = time.perf_counter()
            super().run_step()
            Timed.step_times.append(time.perf_counter() - t0)

    return Timed


def _run(kind, work, iters, period, record):
    torch.manual_seed(0)
    cfg = _setup_cfg(kind, work, iters, period, record)
    cls = _trainer_cls(kind)
    cls.step_times, cls.probe_times = [], []
    t = cls(cfg)
    if t.recorder is not None:
        orig = t.recorder.probe

        def timed_probe(losses, iteration):
            t0 = time.perf_counter()
            out = orig(losses, iteration)
            cls.probe_times.append((iteration, time.perf_counter() - t0))
            return out

        t.recorder.probe = timed_probe
    t.resume_or_load(resume=False)
    t0 = time.perf_counter()
    t.train()
    return (
        time.perf_counter() - t0,
        list(cls.step_times),
        list(cls.probe_times),
        len(t.recorder.tasks) if t.recorder else 0,
    )


def measure_overhead(kind="stock", iters=60, period=20, work=None, ab=False, warmup=5) -> dict:
    """Train ``iters`` iterations with probing every ``period``; return the timing report (dict)."""
    work = work or tempfile.mkdtemp(prefix="galw_overhead_")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    wall, steps, probes, ntasks = _run(kind, work, iters, period, True)
    steps = np.asarray(steps[warmup:])
    probe_iters = {it for it, _ in probes}
    p_total = sum(dt for it, dt in probes if it >= warmup)
    step_total = float(steps.sum())
    probe_step_idx = [i - warmup for i in range(warmup, iters) if i in probe_iters]
    nonprobe = np.delete(steps, probe_step_idx) if probe_step_idx else steps
    rep = {
        "config": kind,
        "iters": iters,
        "period": period,
        "tasks": ntasks,
        "warmup_iters_excluded": warmup,
        "mean_step_s_without_probe": float(nonprobe.mean()),
        "mean_step_s_on_probe_iters": float(steps[probe_step_idx].mean()) if probe_step_idx else None,
        "mean_probe_s": float(np.mean([dt for it, dt in probes if it >= warmup])) if p_total else None,
        "time_in_probes_s": p_total,
        "train_time_s": step_total,
        "overhead_pct_at_period": (
            100.0 * float(np.mean([dt for it, dt in probes if it >= warmup])) / (period * float(nonprobe.mean()))
        )
        if p_total
        else 0.0,
        "probe_time_over_train_time_pct": 100.0 * p_total / max(step_total - p_total, 1e-9),
        "wall_s_with_probing": wall,
    }
    if ab:
        wall_off, steps_off, _, _ = _run(kind, work, iters, period, False)
        rep["wall_s_without_probing"] = wall_off
        rep["mean_step_s_run_without_probing"] = float(np.mean(steps_off[warmup:]))
        rep["overhead_pct_ab_runs"] = 100.0 * (rep["train_time_s"] / float(np.sum(steps_off[warmup:])) - 1.0)
    return rep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="stock", choices=["stock", "roi_alignps"])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--period", type=int, default=20)
    ap.add_argument("--ab", action="store_true", help="also train a run without probing (wall-clock A/B)")
    ap.add_argument("--output", default=None, help="work folder (data, outputs, overhead.json)")
    a = ap.parse_args(argv)
    rep = measure_overhead(a.config, a.iters, a.period, a.output, a.ab)
    print(json.dumps(rep, indent=1))
    if a.output:
        with open(os.path.join(a.output, f"overhead_{a.config}.json"), "w") as f:
            json.dump(rep, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
