"""The GALW person-search demo end to end: what ``make demo`` (``tools/demo.py``) runs.

Stages (Algorithm 1 of the paper, plus the evaluation around it), each a call into the library:

1. **data** (:func:`~galw_d2.apps.recipe.prepare_dataset`): SynthPS ``small`` (``tiny`` with
   ``--quick``) in the chosen official layout, or an already-registered real dataset;
2. **random init**: the phase-1 trainer's model scored before any training -- the floor;
3. **phase 1** (:class:`galw_d2.galw.workflow.TwoPhase`): ROI-AlignPS* with ``GALW.PHASE1.STRATEGY``
   (default: the fixed Table 1 weights, as the paper's Fig. 3), recording each task's gradient
   magnitude over the shared layers (res2..res4) per epoch (Eq. 6);
4. **grouping**: slopes (Eq. 7), transform (Eq. 8), hierarchical clustering into G groups;
5. **phase 2**: GALW (Eq. 9) from the same initial weights (checked by digest);
6. **evaluation**: standard protocol, gallery-size curve, top-k figure;
7. **report**: ``metrics.json`` and ``report.md``.

Output folder layout::

    configs/{phase1,phase2}.yaml   the full configs used (re-runnable with tools/train_net.py)
    model_init.pth                 the initial weights (shared by both phases)
    phase1/, phase2/               detectron2 OUTPUT_DIRs: model_final.pth, metrics.json, log, events
    grouping/                      trends JSON, groups.json, Fig. 3 curves, dendrogram
    eval/                          saved search results (tools/evaluate_search.py re-scores them)
    gallery_size_curve.{png,json}  mAP vs gallery size (Fig. 4)
    topk_search.png                top-k hits of a few queries (Fig. 5)
    metrics.json                   {"search", "random_init", "phase1", "groups", "detection", "settings", ...}
    report.md                      the results table and what was run
"""

import json
import os
import shutil
from dataclasses import asdict
from typing import Dict

import torch

from ..engine.person_search import PersonSearchTrainer
from ..galw.workflow import TwoPhase
from .console import setup_console
from .evaluation import det_thresh, evaluate_model, make_figures, search_metrics
from .recipe import PRESETS, PipelineSettings, build_cfg, prepare_dataset, save_cfg
from .report import Stages, print_summary, short_task_name, write_report
from .run_dir import check_run_settings, claim_output_dir, run_settings

__all__ = ["run_pipeline"]


def _trainer_with_bar(desc: str):
    class _T(PersonSearchTrainer):
        progress_bar = desc

    return _T


def run_pipeline(settings: PipelineSettings, verbose: bool = False) -> Dict:
    """Run the seven stages and return the metrics dict written to ``<output>/metrics.json``.

    ``verbose``: also show detectron2's logs and third-party warnings on the console (always in
    ``<output>/log.txt``)."""
    s = settings.resolved()
    out = os.path.abspath(s.output)
    # before any work: usable counts, one run per folder (lock), --resume only onto the same settings
    check_run_settings(s.phase1_iters, s.phase2_iters, s.num_groups)
    run_dir = claim_output_dir(out, run_settings(s), resume=s.resume, overwrite=s.overwrite)
    if s.overwrite:
        s.opts = list(s.opts) + ["GALW.OVERWRITE_OUTPUT", "True"]  # the trainers replace the old checkpoints
    setup_console(out, verbose)
    torch.manual_seed(s.seed)
    st = Stages(7)

    st.start("data", "dataset")
    data = prepare_dataset(s)
    test_name = f"{data['prefix']}_test"

    cfg = build_cfg(s, data, out, iters=s.phase1_iters)
    cfg2_base = build_cfg(s, data, out, iters=s.phase2_iters) if s.phase2_iters != s.phase1_iters else None
    init: Dict = {}

    def on_built(phase: int, trainer) -> None:
        if phase != 1:
            return
        st.start("random_init", "random-init model on the test split (the floor)")
        init["state"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        torch.save({"model": init["state"]}, os.path.join(out, "model_init.pth"))
        init["res"] = evaluate_model(
            trainer.cfg,
            trainer.model,
            test_name,
            os.path.join(out, "eval", "random_init"),
            "eval random-init",
            save_results=True,
        )
        r = search_metrics(init["res"])
        print(
            f"[demo] random init: search mAP {100 * r.get('mAP', 0):.2f}%  top-1 {100 * r.get('top1', 0):.2f}%",
            flush=True,
        )
        st.start(
            "phase1",
            f"phase 1: {s.phase1_iters} iterations, {trainer.cfg.GALW.STRATEGY.upper()} (ungrouped), "
            "recording gradient trends",
        )

    wf = TwoPhase(cfg, _trainer_with_bar("phase 1"), out, resume=s.resume, on_built=on_built)
    cfg1 = wf.phase1_cfg()
    save_cfg(cfg1, os.path.join(out, "configs", "phase1.yaml"))
    p1 = wf.run_phase1()
    res_p1 = None
    if s.eval_phase1:
        res_p1 = evaluate_model(
            cfg1, p1.trainer.model, test_name, os.path.join(out, "eval", "phase1"), "eval phase 1", save_results=True
        )
        print(
            f"[demo] phase 1 ({cfg1.GALW.STRATEGY}): search mAP {100 * search_metrics(res_p1).get('mAP', 0):.2f}%",
            flush=True,
        )
    del p1.trainer

    st.start("grouping", f"grouping the tasks into {s.num_groups} groups from the gradient trends")
    os.makedirs(os.path.join(out, "grouping"), exist_ok=True)
    shutil.copyfile(p1.trends, os.path.join(out, "grouping", "trends.json"))
    grouping = wf.group(p1.trends)
    groups = grouping["groups"]
    for i, g in enumerate(groups):
        print(f"[demo]   group {i + 1}: {', '.join(short_task_name(t) for t in g)}", flush=True)
    for n in grouping.get("report", {}).get("notes") or []:
        print(f"[demo]   grouping note: {n}", flush=True)

    st.start("phase2", f"phase 2: {s.phase2_iters} iterations, {s.phase2_strategy.upper()} with the groups")
    wf.trainer_cls = _trainer_with_bar("phase 2")
    cfg2 = wf.phase2_cfg(groups, s.phase2_strategy, base_cfg=cfg2_base)
    save_cfg(cfg2, os.path.join(out, "configs", "phase2.yaml"))
    p2 = wf.run_phase2(groups, s.phase2_strategy, base_cfg=cfg2_base)
    same_init = (
        None if p1.initial_digest is None or p2.initial_digest is None else p1.initial_digest == p2.initial_digest
    )

    st.start("eval", "standard protocol on the test split, gallery-size curve, top-k figure")
    res_p2 = evaluate_model(
        cfg2, p2.trainer.model, test_name, os.path.join(out, "eval", "phase2"), "eval phase 2", save_results=True
    )
    p1_label = f"phase 1 ({cfg1.GALW.STRATEGY.upper()})"
    dirs = {
        "random init": os.path.join(out, "eval", "random_init"),
        p1_label: os.path.join(out, "eval", "phase1"),
        f"phase 2 ({s.phase2_strategy.upper()})": os.path.join(out, "eval", "phase2"),
    }
    extras = make_figures(
        cfg2, data, test_name, dirs, out, PRESETS["quick" if s.quick else "demo"]["max_queries_figure"]
    )

    st.start("report", "metrics.json and report.md")
    st.end()
    metrics = {
        "search": search_metrics(res_p2),
        "random_init": search_metrics(init["res"]),
        "phase1": search_metrics(res_p1) if res_p1 else None,
        "detection": res_p2.get("detection"),
        "groups": [list(g) for g in groups],
        "grouping": {k: v for k, v in grouping.items() if k not in ("groups", "paths")},
        "gallery_size_curve": extras.get("gallery_size_curve"),
        "gallery_size_curves": extras.get("curves"),
        "settings": {
            **asdict(s),
            "phase1_strategy": str(cfg1.GALW.STRATEGY),
            "seed_used": int(cfg1.SEED),
            "probe_loss": str(cfg1.GALW.RECORD.PROBE_LOSS),
            "dataset_prefix": data["prefix"],
            "dataset_root": data["root"],
            "det_thresh": det_thresh(cfg2),
            "same_initial_weights_both_phases": same_init,
            "device": str(cfg2.MODEL.DEVICE),
            "torch_threads": torch.get_num_threads(),
        },
        "evaluation_raw": {"random_init": init["res"], "phase1": res_p1, "phase2": res_p2},
        "runtime_s": {**st.times, "total": round(st.elapsed(), 1)},
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=str)
    write_report(metrics, os.path.join(out, "report.md"))
    print_summary(metrics)
    run_dir.release()
    return metrics
