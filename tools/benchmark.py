#!/usr/bin/env python
"""Inference cost of ROI-AlignPS*, NAE, AlignPS and detectron2's stock Faster R-CNN R50-FPN, side by side.

    python tools/benchmark.py                          # CPU (or --device cuda), 1500x900, 10 timed runs each
    python tools/benchmark.py --iters 3 --warmup 1 --json output/benchmark.json
    python tools/benchmark.py --models roi_alignps faster_rcnn --device cuda

Per model (each in its own subprocess, so peak memory is that model's): median wall time of ``--iters``
single-image forward passes after ``--warmup`` untimed ones (ms/image), peak resident memory of the
process (MiB; plus peak CUDA memory on a GPU), parameter count and GFLOPs of one forward (fvcore,
through detectron2's tracing adapter; ops fvcore has no counter for, such as deform_conv2d, are not
counted and are listed; RoIAlign and NMS neither). Then ratios to Faster R-CNN and ROI-AlignPS* / NAE
(the paper's Table 9: ROI-AlignPS* 69 ms vs NAE 85 ms on an RTX at 1500x900).

Models are the paper-scale ResNet-50 configs with random weights (no pretrained weights here) and
every test score threshold at 0, so each model always does its full test-time work: 300 RPN proposals
(NAE), 100 AlignPS detections re-embedded by the NAE branch (ROI-AlignPS*), 1000 proposals (Faster
R-CNN); FrozenBN statistics are calibrated on the test image first (see calibrate_frozen_bn). The input is
matplotlib's grace_hopper.jpg resized to exactly --size (W x H).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {
    "roi_alignps": ("ROI-AlignPS*", "configs/roi_alignps_R50_24e_cuhk_sysu.yaml"),
    "nae": ("NAE", "configs/nae_R50_24e_cuhk_sysu.yaml"),
    "alignps": ("AlignPS", "configs/alignps_R50_24e_cuhk_sysu.yaml"),
    "faster_rcnn": ("Faster R-CNN R50-FPN (stock)", None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--iters", type=int, default=10, help="timed forward passes per model (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forward passes first")
    p.add_argument("--size", default="1500x900", help="input W x H in pixels (paper: 1500x900)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra traced forward)")
    p.add_argument("--json", default=None, help="write {model: {ms_median, peak_rss_mb, params, gflops, ...}}")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: benchmark one model, print JSON
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size {args.size!r}: expected WxH, e.g. 1500x900")
    args.wh = (w, h)
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    return args


def stock_faster_rcnn_cfg(cfg):
    """detectron2's COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml (Base-RCNN-FPN) on a default cfg
    (model-zoo YAMLs are not shipped by every detectron2 install, so the settings are spelled out)."""
    m = cfg.MODEL
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.RESNETS.DEPTH = 50
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.RPN.PRE_NMS_TOPK_TEST = 1000
    m.RPN.POST_NMS_TOPK_TEST = 1000
    m.ROI_HEADS.NAME = "StandardROIHeads"
    m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    m.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    m.ROI_BOX_HEAD.NUM_FC = 2
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    m.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    m.MASK_ON = False
    return cfg


def build(name, device):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from galw_d2 import add_galw_config

    cfg = add_galw_config(get_cfg())
    path = MODELS[name][1]
    if path is None:
        stock_faster_rcnn_cfg(cfg)
    else:
        cfg.merge_from_file(os.path.join(ROOT, path))
        cfg.MODEL.ALIGNPS.TEST_SCORE_THRESH = 0.0
        cfg.MODEL.NAE.TEST_SCORE_THRESH = 0.0
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    model = build_model(cfg).eval()
    return model


@__import__("torch").no_grad()
def calibrate_frozen_bn(model, inputs):
    """Give every FrozenBatchNorm2d the statistics of its input on ``inputs`` (one pass, in order).

    With random weights and FrozenBN's identity statistics, activations grow through the ResNet until
    they overflow (NaN proposals, no detections), which would make the timings meaningless. Normalising
    each layer's input on the test image mimics the activation scale of pretrained weights; it costs
    nothing at benchmark time (FrozenBN is still a fixed affine map).
    """
    from detectron2.layers import FrozenBatchNorm2d

    def pre_hook(m, args):
        x = args[0].float()
        m.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        m.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return len(hooks)


def test_image(wh):
    import numpy as np
    import torch
    from matplotlib import cbook
    from PIL import Image

    im = (
        Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB").resize(wh, Image.BILINEAR)
    )
    arr = np.asarray(im)[:, :, ::-1].copy()  # BGR, as cfg.INPUT.FORMAT
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def run_one(args):
    """Benchmark args.one in this process; returns the figures dict."""
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build(args.one, device)
    img = test_image(args.wh)
    w, h = args.wh
    inputs = [{"image": img, "height": h, "width": w}]
    calibrate_frozen_bn(model, inputs)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times, n_det = [], 0
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            sync()
            t = time.perf_counter()
            out = model(inputs)
            sync()
            if i >= args.warmup:
                times.append((time.perf_counter() - t) * 1000.0)
            n_det = len(out[0]["instances"])
    res = {
        "name": MODELS[args.one][0],
        "ms_median": statistics.median(times),
        "ms_all": [round(t, 1) for t in times],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "params": sum(p.numel() for p in model.parameters()),
        "detections": n_det,
        "device": device,
        "threads": torch.get_num_threads(),
        "size": f"{w}x{h}",
    }
    if device.startswith("cuda"):
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    res["gflops"], res["uncounted_ops"] = (None, []) if args.no_flops else count_gflops(model, inputs)
    return res


def count_gflops(model, inputs):
    """GFLOPs of one forward by fvcore's jit-traced counter (ops it cannot count are returned)."""
    import logging
    import warnings

    import torch
    from fvcore.nn import FlopCountAnalysis

    class ImageOnly(torch.nn.Module):
        # fvcore traces tensor-in / tensor-out modules; detectron2's own adapter (detectron2.export)
        # needs caffe2 in v0.6, so wrap the dict interface by hand.
        def __init__(self, m, meta):
            super().__init__()
            self.m, self.meta = m, meta

        def forward(self, image):
            inst = self.m([dict(self.meta, image=image)])[0]["instances"]
            # Every output the model computes must be returned, or the traced graph drops its ops.
            extra = (inst.embeddings,) if inst.has("embeddings") else ()
            return (inst.pred_boxes.tensor, inst.scores) + extra

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    meta = {k: v for k, v in inputs[0].items() if k != "image"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(ImageOnly(model, meta), (inputs[0]["image"],))
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = fca.total()
        unsupported = sorted(fca.unsupported_ops())
    keep = ("deform", "roi_align", "nms", "grid_sampler")
    return total / 1e9, [o for o in unsupported if any(k in o for k in keep)]


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print("BENCHMARK_JSON " + json.dumps(run_one(args)), flush=True)
        return 0
    results = {}
    base = (
        [
            sys.executable,
            os.path.abspath(__file__),
            "--iters",
            str(args.iters),
            "--warmup",
            str(args.warmup),
            "--size",
            args.size,
            "--threads",
            str(args.threads),
        ]
        + (["--device", args.device] if args.device else [])
        + (["--no-flops"] if args.no_flops else [])
    )
    for name in args.models:
        print(
            f"[benchmark] {MODELS[name][0]}: {args.warmup} warm-up + {args.iters} timed runs at {args.size} ...",
            file=sys.stderr,
            flush=True,
        )
        p = subprocess.run(base + ["--one", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = [l for l in p.stdout.splitlines() if l.startswith("BENCHMARK_JSON ")]
        if p.returncode != 0 or not line:
            sys.stderr.write(p.stderr[-4000:])
            raise SystemExit(f"benchmark of {name} failed (exit {p.returncode})")
        results[name] = json.loads(line[-1][len("BENCHMARK_JSON ") :])
    print_table(results)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def print_table(results):
    print(f"\n{'model':32s} {'ms/img':>9s} {'peak RSS MiB':>13s} {'params (M)':>11s} {'GFLOPs':>8s} {'dets':>5s}")
    for r in results.values():
        g = "n/a" if r["gflops"] is None else f"{r['gflops']:.1f}"
        print(
            f"{r['name']:32s} {r['ms_median']:9.1f} {r['peak_rss_mb']:13.0f} {r['params'] / 1e6:11.2f} {g:>8s} "
            f"{r['detections']:5d}"
        )
    any_r = next(iter(results.values()))
    print(
        f"(median of {len(any_r['ms_all'])} runs, {any_r['size']}, device {any_r['device']}, "
        f"{any_r['threads']} threads)"
    )
    unc = sorted({o for r in results.values() for o in r.get("uncounted_ops", [])})
    if unc:
        print(f"GFLOPs exclude ops fvcore cannot count: {', '.join(unc)}")
    ref = results.get("faster_rcnn")
    if ref:
        for k, r in results.items():
            if k != "faster_rcnn":
                print(
                    f"{r['name']} / Faster R-CNN: time x{r['ms_median'] / ref['ms_median']:.2f}, "
                    f"params x{r['params'] / ref['params']:.2f}"
                    + (
                        ""
                        if r["gflops"] is None or not ref["gflops"]
                        else f", GFLOPs x{r['gflops'] / ref['gflops']:.2f}"
                    )
                )
    if "roi_alignps" in results and "nae" in results:
        ra, na = results["roi_alignps"], results["nae"]
        print(f"ROI-AlignPS* / NAE: time x{ra['ms_median'] / na['ms_median']:.2f} (paper Table 9: 69/85 = x0.81)")
    if "roi_alignps" in results and ref:
        ratio = results["roi_alignps"]["ms_median"] / ref["ms_median"]
        faster = "nae" not in results or results["roi_alignps"]["ms_median"] < results["nae"]["ms_median"]
        print(
            f"target (ROI-AlignPS* <= 1.3x Faster R-CNN and faster than NAE): "
            f"{'met' if ratio <= 1.3 and faster else 'NOT met'}"
        )


if __name__ == "__main__":
    sys.exit(main())
