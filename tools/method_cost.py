#!/usr/bin/env python
"""Time one training step of every multi-task method against the plain (fixed-weight) step.

    python tools/method_cost.py [--model roi_alignps|toy] [--iters 6] [--strategies fixed,dwa,...]
                                [--device cpu] [--output docs/results/method_cost/roi_alignps_cpu.json]

``roi_alignps`` = configs/synthps/roi_alignps_R18_tiny_synthps.yaml (10 tasks; shared parameters =
``GALW.RECORD.SHARED_PARAMS``, ResNet-18 res2..res4) on two generated 240x352 images with 3 persons
each (the batch of tests/test_models_meta_arch.py); ``toy`` = the two-task GALWToyNet of tests/galw_toy.py.
A step is what ``GALWStep.run_step`` does: forward of the GALWModel, ``zero_grad``, the weighting's
``backward``, ``optimizer.step()``, ``after_step``, the deferred OIM updates. Every strategy starts
from the same initial weights and sees the same batch; strategies are timed round-robin (one step
of each per round, ``--iters`` rounds after one warm-up round) so machine-load drift hits all alike.
Reported: median seconds per step, its ratio to ``fixed``, whether every loss and total stayed
finite, and each method's last logged weights.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT = "fixed,rlw,dwa,famo,gradnorm,upgrad,pcgrad,mgda,imtl_g,aligned_mtl,dualproj,upgrad@vmap"


def _batch(seed=0, h=240, w=352):
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(2):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(
            torch.tensor([[20.0, 30.0, 80.0, 200.0], [150.0, 20.0, 210.0, 180.0], [250.0, 40.0, 320.0, 230.0]])
        )
        inst.gt_classes = torch.zeros(3, dtype=torch.long)
        inst.gt_pids = torch.tensor([0, -1, 2 + i])
        img = torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)
        out.append({"image": img, "instances": inst, "height": h, "width": w})
    return out


def _cfg(model: str, device: str):
    from detectron2.config import get_cfg

    from galw_d2 import add_galw_config

    if model == "toy":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from galw_toy import toy_cfg

        cfg = toy_cfg("/tmp/method_cost_toy", record=False)
    else:
        cfg = add_galw_config(get_cfg())
        cfg.merge_from_file(os.path.join(ROOT, "configs/synthps/roi_alignps_R18_tiny_synthps.yaml"))
        cfg.MODEL.PERSON_SEARCH.NUM_PIDS = 6
        cfg.GALW.TASKS = []
    cfg.MODEL.DEVICE = device
    cfg.GALW.DWA.EPOCH_ITERS = 2
    return cfg


def _build(cfg, strategy: str, state):
    from detectron2.modeling import build_model

    from galw_d2.engine import GALWModel
    from galw_d2.engine.trainer import bind_shared_parameters
    from galw_d2.galw.weighting import build_loss_weighting

    c = cfg.clone()
    name, _, variant = strategy.partition("@")
    c.GALW.STRATEGY = name
    if variant == "vmap":
        c.GALW.AGGREGATION.JACOBIAN = "vmap"
    model = build_model(c)
    model.load_state_dict(state)
    tasks = None
    galw = GALWModel(model, build_loss_weighting(c, tasks=tasks)).to(torch.device(c.MODEL.DEVICE))
    bind_shared_parameters(c, galw)
    opt = torch.optim.SGD([p for p in galw.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    return galw, opt


def _step(galw, opt, data, it):
    from galw_d2.utils.state import apply_pending_updates

    if galw.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = galw(data)
    opt.zero_grad()
    galw.weighting.backward(out["total"], out["losses"])
    opt.step()
    galw.weighting.after_step(out["losses"], it)
    apply_pending_updates(galw)
    if galw.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["roi_alignps", "toy"], default="roi_alignps")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--strategies", default=DEFAULT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--output", default="")
    a = ap.parse_args(argv)

    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    cfg = _cfg(a.model, a.device)
    state = build_model(cfg).state_dict()
    if a.model == "toy":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from galw_toy import toy_batches

        data = next(toy_batches(0, n=16))
    else:
        data = _batch()
    strategies = [s for s in a.strategies.split(",") if s]
    built = {s: _build(cfg, s, state) for s in strategies}
    times = {s: [] for s in strategies}
    finite = {s: True for s in strategies}
    last_info = {}
    tasks = None
    with EventStorage(0):
        for r in range(a.iters + 1):
            for s in strategies:
                torch.manual_seed(r)
                dt, out = _step(*built[s], data, r)
                tasks = tasks or list(out["losses"])
                vals = [float(v.detach()) for v in out["losses"].values()] + [float(out["total"].detach())]
                finite[s] = finite[s] and all(math.isfinite(v) for v in vals)
                last_info[s] = {k: v for k, v in out["info"].items() if k.startswith("galw/weight/")}
                if r > 0:  # round 0 = warm-up
                    times[s].append(dt)
    base = statistics.median(times["fixed"]) if "fixed" in times else None
    res = {
        "model": a.model,
        "device": a.device,
        "tasks": tasks,
        "iters": a.iters,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "median_s": {s: statistics.median(v) for s, v in times.items()},
        "ratio_to_fixed": {s: statistics.median(v) / base for s, v in times.items()} if base else None,
        "all_losses_finite": finite,
        "last_weights": last_info,
        "times_s": times,
    }
    for s in strategies:
        r = f"{res['ratio_to_fixed'][s]:.2f}x" if base else ""
        print(f"{s:14s} {res['median_s'][s]:.4f} s/step  {r}  finite={finite[s]}")
    if a.output:
        os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
        with open(a.output, "w") as f:
            json.dump(res, f, indent=1)
        print("wrote", a.output)
    return res


if __name__ == "__main__":
    main()
