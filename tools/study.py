#!/usr/bin/env python
"""Loss-weighting arms x seeds on SynthPS, paired by seed, with confidence intervals (galw_d2/apps/study.py).

    python tools/study.py --output output/study --publish docs/results/study --seeds 0 1 2 3 4 \
        --arms fixed ulwf rulwf ulwf_grouped galw --preset medium --iters 1000
    python tools/study.py --quick --output output/study_quick      # SynthPS tiny, 4 iterations, 2 seeds
    python tools/study.py --output output/study --summarize --publish docs/results/study  # statistics only

Resumable: rerun the same command after an interruption; finished runs are not redone (each leaves
<output>/seed<S>/<arm>/result.json) and an interrupted training continues from its last checkpoint.
Writes <output>/summary.json, report.md and forest.png. Run long studies in the background:
    nohup python tools/study.py ... > study.log 2>&1 &
"""

import argparse
import logging
import sys
import warnings

if "--verbose" not in sys.argv:
    logging.captureWarnings(True)
    warnings.simplefilter("ignore", FutureWarning)

from galw_d2.apps.study import TABLE3_ARMS, StudySettings, publish, run_study, summarize  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Paired loss-weighting study on SynthPS (see the module docstring).")
    p.add_argument("--output", default="output/study")
    p.add_argument("--arms", nargs="+", default=None, help=f"weighting-registry names (default: {TABLE3_ARMS})")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 3 4 (--quick: 0 1)")
    p.add_argument("--dataset", default="synthps_cuhk_sysu", help="synthps_cuhk_sysu | synthps_prw | registered prefix")
    p.add_argument("--preset", default=None, help="SynthPS preset (default medium; --quick: tiny)")
    p.add_argument("--config-file", default="synthps/roi_alignps_R18_tiny_synthps.yaml")
    p.add_argument("--iters", type=int, default=None, help="iterations per run (default 1000; --quick: 4)")
    p.add_argument("--epochs", type=int, default=None, help="phase-1 trend points (default 10; --quick: 2)")
    p.add_argument("--probe-period", type=int, default=None, help="probe every N iterations (default 5; --quick 2)")
    p.add_argument("--num-groups", type=int, default=4)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num-boot", type=int, default=2000, help="bootstrap resamples of the intervals")
    p.add_argument("--quick", action="store_true", help="tiny smoke version (CI)")
    p.add_argument("--summarize", action="store_true", help="only recompute the statistics of finished runs")
    p.add_argument(
        "--publish",
        default=None,
        metavar="DIR",
        help="then copy the light results (summary, report, figure, per-run result.json) to DIR",
    )
    p.add_argument("--verbose", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every run")
    a = p.parse_args(argv)
    q = a.quick
    s = StudySettings(
        output=a.output,
        arms=a.arms or (["fixed", "rulwf", "galw"] if q else list(TABLE3_ARMS)),
        seeds=a.seeds or ([0, 1] if q else [0, 1, 2, 3, 4]),
        dataset=a.dataset,
        preset=a.preset or ("tiny" if q else "medium"),
        config_file=a.config_file,
        iters=a.iters or (4 if q else 1000),
        epochs=a.epochs or (2 if q else 10),
        probe_period=a.probe_period or (2 if q else 5),
        num_groups=a.num_groups,
        data_dir=a.data_dir,
        opts=list(a.opts),
        num_boot=a.num_boot,
    )
    try:
        if a.summarize:
            summary = summarize(s.output, s.seeds, s.arms, num_boot=s.num_boot, settings=s)
        else:
            summary = run_study(s, verbose=a.verbose)
    except ValueError as e:
        print(f"study: error: {e}", file=sys.stderr)
        return 2
    with open(f"{s.output}/report.md") as f:
        print(f.read())
    if a.publish:
        print(f"study: published {len(publish(s.output, a.publish))} files to {a.publish}")
    return 0 if not summary["missing_runs"] else 3


if __name__ == "__main__":
    sys.exit(main())
