"""Build and run a Mancs training from a reid config (the body of tools/train_reid.py).

:func:`build_engine` wires the parts: torchreid data manager (:mod:`.data`), the Mancs model (torchreid
factory, :mod:`.model`), the loss weighting (:func:`.engine.build_reid_weighting`), Adam, the optional
gradient-trend recorder, and :class:`.engine.MancsEngine`. :func:`run_training` trains (resuming from
``OUTPUT/last_checkpoint.pth`` when asked), evaluates with torchreid's metrics and writes
``OUTPUT/metrics.json``::

    {"mAP", "rank1", "rank5", "rank10": percent on the first target dataset,
     "datasets": {name: {...}}, "tasks": ["loss_rank", "loss_cls", "loss_att"],
     "weighting": {"strategy", "groups", "sigma": {task: sigma}, "weights": {task: effective weight}},
     "epochs", "iterations", "wall_time_s", "seed"}
"""

import os
import time

import torch
from torchreid.reid.utils import set_random_seed

from .config import REID_TASKS, get_reid_cfg
from .data import build_datamanager
from .engine import MancsEngine, build_optimizer, build_reid_weighting, shared_parameters, write_json
from .losses import CurriculumTripletLoss
from .model import build_mancs_from_config

__all__ = ["setup_cfg", "build_engine", "run_training"]


def setup_cfg(config_file: str = "", opts=(), output: str = ""):
    """Reid config from a YAML file and ``KEY VALUE`` overrides (frozen)."""
    cfg = get_reid_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if output:
        cfg.OUTPUT_DIR = output
    if cfg.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def build_engine(cfg, progress: bool = True) -> MancsEngine:
    """Every part of a Mancs run of ``cfg``; the model init depends on ``cfg.SEED`` only (same init for
    every weighting strategy of a seed)."""
    set_random_seed(int(cfg.SEED))
    dm = build_datamanager(cfg)
    set_random_seed(int(cfg.SEED))  # the model init does not depend on what data loading drew
    model = build_mancs_from_config(cfg, dm.num_train_pids)
    if str(cfg.GALW.STRATEGY).lower() == "dwa" and not (cfg.GALW.DWA.EPOCH_ITERS or cfg.GALW.RECORD.EPOCH_ITERS):
        cfg = cfg.clone()  # DWA's epoch = one pass over the training data (its paper's definition)
        cfg.defrost()
        cfg.GALW.DWA.EPOCH_ITERS = len(dm.train_loader)
        cfg.freeze()
    weighting = build_reid_weighting(cfg, REID_TASKS)
    optimizer = build_optimizer(cfg, model, weighting)
    scheduler = None
    if len(cfg.SOLVER.STEPS):
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.SOLVER.STEPS), float(cfg.SOLVER.GAMMA))
    if getattr(weighting, "needs_shared_parameters", False):  # GradNorm, gradient aggregation
        patterns = list(weighting.shared_param_patterns) or list(cfg.GALW.RECORD.SHARED_PARAMS)
        weighting.bind_shared_parameters([p for _, p in shared_parameters(model, patterns)])
    recorder = None
    if cfg.GALW.RECORD.ENABLED:
        from galw_d2.galw.recorder import GradientTrendRecorder

        epoch_iters = int(cfg.GALW.RECORD.EPOCH_ITERS) or len(dm.train_loader)
        recorder = GradientTrendRecorder(
            shared_parameters(model, cfg.GALW.RECORD.SHARED_PARAMS),
            int(cfg.GALW.RECORD.PERIOD),
            epoch_iters,
            tasks=list(REID_TASKS),
        )
    lc = cfg.LOSS
    triplet = CurriculumTripletLoss(
        lc.MARGIN, lc.CURRICULUM_T0, lc.CURRICULUM_T1, lc.CURRICULUM_A, lc.CURRICULUM_B, lc.POSITIVES
    )
    return MancsEngine(
        dm,
        model,
        weighting,
        optimizer,
        triplet,
        focal_gamma=float(lc.FOCAL_GAMMA),
        scheduler=scheduler,
        clip_grad_norm=float(cfg.SOLVER.CLIP_GRAD_NORM),
        recorder=recorder,
        checkpoint_period=int(cfg.SOLVER.CHECKPOINT_PERIOD),
        save_dir=cfg.OUTPUT_DIR,
        progress=progress,
        use_gpu=cfg.DEVICE != "cpu",
    )


def _weighting_summary(cfg, engine: MancsEngine) -> dict:
    w = engine.weighting
    out = {"strategy": str(cfg.GALW.STRATEGY).lower(), "groups": [list(g) for g in getattr(w, "groups", [])] or None}
    if hasattr(w, "log_sigma"):
        s = w.log_sigma.detach().cpu().tolist()
        a = w.assignment.tolist()
        out["sigma"] = {t: float(torch.tensor(s[a[i]]).exp()) for i, t in enumerate(w.tasks)}
        out["weights"] = {t: float(torch.tensor(-2.0 * s[a[i]]).exp()) / float(w.k[i]) for i, t in enumerate(w.tasks)}
    else:  # any other registered method: the weights it used at the last step (its logging info)
        last = getattr(engine, "last_step", None) or {}
        out["weights"] = {t: last.get(f"galw/weight/{t}") for t in REID_TASKS}
    return out


def run_training(cfg, resume: bool = False, eval_only: str = "", progress: bool = True) -> dict:
    """Train (or evaluate ``eval_only``, a checkpoint path) and write ``OUTPUT_DIR/metrics.json``."""
    out = cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    threads = torch.get_num_threads()
    if int(cfg.NUM_THREADS) > 0:
        torch.set_num_threads(int(cfg.NUM_THREADS))
    t_start = time.time()
    try:
        engine = build_engine(cfg, progress=progress)
        start_epoch = 0
        last = os.path.join(out, "last_checkpoint.pth")
        if eval_only:
            engine.resume(eval_only)
            engine.last_metrics = engine.evaluate(
                cfg.TEST.DIST_METRIC, cfg.TEST.NORMALIZE_FEATURE, list(cfg.TEST.RANKS), cfg.DATA.CUHK03_CLASSIC_SPLIT
            )
        else:
            if resume and os.path.isfile(last):
                start_epoch = engine.resume(last)
            eval_period = int(cfg.TEST.EVAL_PERIOD)
            engine.run(
                save_dir=out,
                max_epoch=int(cfg.SOLVER.MAX_EPOCH),
                start_epoch=start_epoch,
                eval_freq=eval_period if eval_period > 0 else -1,
                dist_metric=cfg.TEST.DIST_METRIC,
                normalize_feature=bool(cfg.TEST.NORMALIZE_FEATURE),
                ranks=list(cfg.TEST.RANKS),
                use_metric_cuhk03=bool(cfg.DATA.CUHK03_CLASSIC_SPLIT),
            )
            if engine.recorder is not None:
                engine.write_trends(
                    os.path.join(out, cfg.GALW.RECORD.OUTPUT), {"model": "mancs", "config_seed": int(cfg.SEED)}
                )
    finally:
        torch.set_num_threads(threads)
    datasets = engine.last_metrics
    first = next(iter(datasets.values()))
    metrics = {k: first[k] for k in first if k == "mAP" or k.startswith("rank")}
    metrics.update(
        datasets=datasets,
        tasks=list(REID_TASKS),
        weighting=_weighting_summary(cfg, engine),
        epochs=int(cfg.SOLVER.MAX_EPOCH),
        iterations=int(cfg.SOLVER.MAX_EPOCH) * engine.num_batches,
        start_epoch=start_epoch,
        wall_time_s=round(time.time() - t_start, 1),
        seed=int(cfg.SEED),
        num_train_pids=int(engine.datamanager.num_train_pids),
    )
    write_json(os.path.join(out, "metrics.json"), metrics)
    return metrics
