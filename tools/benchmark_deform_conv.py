#!/usr/bin/env python
"""Micro-benchmark: torchvision's CPU deform_conv2d vs galw_d2's fast CPU path, side by side.

    OMP_NUM_THREADS=1 python tools/benchmark_deform_conv.py              # AlignPS shapes at 1500x900
    OMP_NUM_THREADS=1 python tools/benchmark_deform_conv.py --scale 0.25 # quick, smaller maps

Shapes (inference at 1500x900 -> P3 of 113x188, stride 8): the AFA neck's output conv (768 -> 256, DCNv1),
its res3 lateral (512 -> 256, DCNv1) and the FCOS towers' last conv (256 -> 256, DCNv2). Offsets are
random (std ``--offset-std`` px), the mask of DCNv2 in (0, 2) like DeformConv's 2*sigmoid. Each op runs
under torch.no_grad() after one untimed warm-up; the median of ``--iters`` runs is printed (ms), with
the speed-up and the largest relative difference between the two outputs.
"""

import argparse
import os
import statistics
import sys
import time

import torch
from torchvision.ops import deform_conv2d

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from galw_d2.modeling.alignps.deform_conv import deform_conv2d_cpu_fast  # noqa: E402

SHAPES = {  # name: (C_in, C_out, H, W at 1500x900, modulated)
    "afa_output": (768, 256, 113, 188, False),
    "afa_lateral_res3": (512, 256, 113, 188, False),
    "fcos_tower_last": (256, 256, 113, 188, True),
}


def median_ms(fn, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    p.add_argument("--scale", type=float, default=1.0, help="scale the map's H and W (quick runs)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--offset-std", type=float, default=1.0)
    args = p.parse_args(argv)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, median of {args.iters}"
    )
    print(
        f"{'shape':<18} {'input':<20} {'kind':<6} {'torchvision ms':>15} {'fast ms':>10} "
        f"{'speed-up':>9} {'rel diff':>9}"
    )
    g = torch.Generator().manual_seed(0)
    for name in args.shapes:
        c_in, c_out, h, w, modulated = SHAPES[name]
        h, w = max(3, round(h * args.scale)), max(3, round(w * args.scale))
        x = torch.randn(1, c_in, h, w, generator=g)
        weight = torch.randn(c_out, c_in, 3, 3, generator=g) * 0.01
        bias = torch.randn(c_out, generator=g)
        offset = torch.randn(1, 18, h, w, generator=g) * args.offset_std
        mask = 2.0 * torch.sigmoid(torch.randn(1, 9, h, w, generator=g)) if modulated else None
        with torch.no_grad():
            ref = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
            got = deform_conv2d_cpu_fast(x, offset, weight, bias, padding=1, mask=mask)
            rel = ((got - ref).abs().max() / ref.abs().max()).item()
            t_tv = median_ms(lambda: deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask), args.iters)
            t_fast = median_ms(
                lambda: deform_conv2d_cpu_fast(x, offset, weight, bias, padding=1, mask=mask), args.iters
            )
        shape = f"1x{c_in}x{h}x{w}->{c_out}"
        print(
            f"{name:<18} {shape:<20} {'DCNv2' if modulated else 'DCNv1':<6} {t_tv:>15.1f} {t_fast:>10.1f} "
            f"{t_tv / t_fast:>8.2f}x {rel:>9.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
