"""The GALW person-search pipeline end to end: what ``make demo`` (``tools/demo.py``) runs.

Stages (Algorithm 1 of the paper, plus the evaluation around it):

1. **data**: generate SynthPS (``small`` for the demo, ``tiny`` with ``--quick``) in the chosen
   official layout, or use an already-registered real dataset; register ``<prefix>_{train,test,...}``.
2. **random init**: build the model with the run's seed and score it with the standard protocol
   before any training -- the floor the trained model must clear.
3. **phase 1**: train ROI-AlignPS* (ungrouped RULWF) from that same initialisation while recording
   each task's gradient magnitude over the shared layers (res2..res4) per epoch (Eq. 6).
4. **grouping**: slopes of the trends (Eq. 7), transform (Eq. 8), hierarchical clustering into G groups.
5. **phase 2**: train again from the same initialisation with the grouped weighting (GALW, Eq. 9).
6. **evaluation**: the standard protocol on the test split (search mAP / top-k, detection AP /
   recall), the gallery-size curve (CUHK-SYSU layout: TestG50 ... the largest written) and a top-k
   search figure (query crop + best gallery hits, correct ones marked).
7. **report**: ``metrics.json`` and ``report.md`` with the results table.

Everything goes into one output folder (default ``output/demo/``)::

    configs/{phase1,phase2}.yaml   the full configs used (re-runnable with tools/train_net.py)
    model_init.pth                 the random initial weights (shared by both phases)
    phase1/, phase2/               detectron2 OUTPUT_DIRs: model_final.pth, metrics.json, log, events
    grouping/                      trends JSON, groups.json, Fig. 3 curves, dendrogram
    eval/                          saved search results (tools/evaluate_search.py re-scores them)
    gallery_size_curve.{png,json}  mAP vs gallery size (Fig. 4)
    topk_search.png                top-k hits of a few queries (Fig. 5)
    metrics.json                   {"search", "random_init", "phase1", "groups", "detection", "settings", ...}
    report.md                      the results table and what was run

The iteration counts are set here (not in the model YAML) from the tiny config's measured speed so
the full demo fits in about 20 minutes on 2 CPU cores; ``--quick`` runs a few iterations on
``tiny`` for CI.
"""
import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["PipelineSettings", "run_pipeline", "PRESETS", "DEFAULT_CONFIG", "build_cfg", "evaluate_model"]

logger = logging.getLogger("galw_d2.pipeline")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "synthps", "roi_alignps_R18_tiny_synthps.yaml")

# Iterations and recording cadence per mode. "demo": measured on an idle 2-core machine with 2 torch
# threads, ROI-AlignPS* tiny on SynthPS small takes 0.25 s/iteration in phase 1 (probes every 5
# iterations) and 0.20 s in phase 2, an evaluation pass 8 s: 1000 + 1000 iterations ~ 4 + 3.5 min,
# ~9 min for the whole demo, leaving room for slower CPUs within the 20-minute budget.
# "quick" is the CI smoke test.
PRESETS: Dict[str, Dict] = {
    "demo": dict(preset="small", phase1_iters=1000, phase2_iters=1000, epochs=6, probe_period=5, max_queries_figure=4,
                 eval_phase1=True),
    "quick": dict(preset="tiny", phase1_iters=4, phase2_iters=4, epochs=2, probe_period=2, max_queries_figure=2,
                  eval_phase1=False),
}


@dataclass
class PipelineSettings:
    """Everything a pipeline run depends on (written into metrics.json)."""

    dataset: str = "synthps_cuhk_sysu"  # synthps_cuhk_sysu | synthps_prw | a registered real prefix
    config_file: str = DEFAULT_CONFIG
    output: str = os.path.join("output", "demo")
    quick: bool = False
    seed: int = 0
    num_groups: int = 4
    data_dir: Optional[str] = None  # where SynthPS is generated (default: $DETECTRON2_DATASETS or datasets/)
    phase1_iters: Optional[int] = None
    phase2_iters: Optional[int] = None
    epochs: Optional[int] = None  # recording epochs of phase 1 (trend points)
    probe_period: Optional[int] = None
    phase1_strategy: str = "rulwf"
    phase2_strategy: str = "galw"
    eval_phase1: Optional[bool] = None  # score the phase-1 model too (default: demo yes, quick no)
    opts: List[str] = field(default_factory=list)  # extra KEY VALUE config overrides for both phases
    resume: bool = False  # continue each phase from its last checkpoint in the output folder

    def resolved(self) -> "PipelineSettings":
        s = copy.deepcopy(self)
        p = PRESETS["quick" if s.quick else "demo"]
        for k in ("phase1_iters", "phase2_iters", "epochs", "probe_period", "eval_phase1"):
            if getattr(s, k) is None:
                setattr(s, k, p[k])
        return s


class _Stages:
    """Prints numbered stage banners with elapsed times (the demo's progress outline)."""

    def __init__(self, total: int):
        self.total, self.k, self.t0, self.times = total, 0, time.perf_counter(), {}
        self._cur, self._cur_t = None, None

    def start(self, name: str, what: str):
        self.end()
        self.k += 1
        self._cur, self._cur_t = name, time.perf_counter()
        print(f"[demo] ({self.k}/{self.total}) {what}  [t={time.perf_counter() - self.t0:.0f} s]", flush=True)

    def end(self):
        if self._cur is not None:
            self.times[self._cur] = round(time.perf_counter() - self._cur_t, 1)
            self._cur = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def prepare_dataset(settings: PipelineSettings) -> Dict:
    """Generate (if needed) and register the dataset. Returns {"prefix", "fmt", "root", "synthetic"}."""
    from detectron2.data import DatasetCatalog

    name = settings.dataset
    if not name.startswith("synthps"):
        if f"{name}_train" not in DatasetCatalog.list():
            raise ValueError(f"--dataset {name!r}: no registered dataset {name}_train; use synthps_cuhk_sysu, "
                             f"synthps_prw or a registered prefix such as cuhk_sysu / prw")
        from detectron2.data import MetadataCatalog

        meta = MetadataCatalog.get(f"{name}_train")
        return {"prefix": name, "fmt": getattr(meta, "dataset_type", "?"), "root": getattr(meta, "root", "?"),
                "synthetic": False}
    fmt = name[len("synthps_"):] or "cuhk_sysu"
    fmt = {"cuhk": "cuhk_sysu", "cuhk_sysu": "cuhk_sysu", "prw": "prw"}.get(fmt)
    if fmt is None:
        raise ValueError(f"--dataset {name!r}: expected synthps_cuhk_sysu or synthps_prw")
    preset = PRESETS["quick" if settings.quick else "demo"]["preset"]
    from galw_d2.data import register_synthps
    from galw_d2.data.synthps import generate_synthps

    base = settings.data_dir or os.environ.get("DETECTRON2_DATASETS", os.path.join(ROOT, "datasets"))
    short = "cuhk" if fmt == "cuhk_sysu" else "prw"
    root = os.path.join(base, f"synthps_{preset}_{short}" + ("" if settings.seed == 0 else f"_seed{settings.seed}"))
    stamp = os.path.join(root, ".galw_demo_complete")
    if not os.path.exists(stamp):
        print(f"[demo] generating SynthPS {preset} ({fmt} layout, seed {settings.seed}) into {root}", flush=True)
        root = generate_synthps(root, fmt, preset, settings.seed, progress=True) or root
        with open(stamp, "w") as f:
            f.write(f"{preset} {fmt} seed={settings.seed}\n")
    else:
        print(f"[demo] SynthPS {preset} ({fmt}) already generated at {root}; reusing it", flush=True)
    prefix = f"galw_demo_{preset}_{short}_s{settings.seed}"
    if f"{prefix}_train" not in DatasetCatalog.list():
        register_synthps(root, fmt, prefix, preset=preset)
    return {"prefix": prefix, "fmt": fmt, "root": root, "synthetic": True, "preset": preset}


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def build_cfg(settings: PipelineSettings, data: Dict, phase: int, output_dir: str, groups=None, trends_file=None):
    """The full config of one training phase: the model YAML + the pipeline's overrides."""
    from detectron2.config import get_cfg

    from galw_d2 import add_galw_config

    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(settings.config_file)
    iters = settings.phase1_iters if phase == 1 else settings.phase2_iters
    cfg.DATASETS.TRAIN = (f"{data['prefix']}_train",)
    cfg.DATASETS.TEST = ()  # the pipeline evaluates explicitly (random init, phase 1, phase 2)
    cfg.OUTPUT_DIR = output_dir
    cfg.SEED = settings.seed
    cfg.MODEL.WEIGHTS = ""
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.MAX_ITER = iters
    # The LR schedule scaled to the short run: warm-up ~7% of the run, /10 at 2/3 and 11/12 of it
    # (the paper's 16/24 and 22/24 epochs).
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, iters // 15))
    cfg.SOLVER.STEPS = tuple(s for s in (int(iters * 2 / 3), int(iters * 11 / 12)) if 0 < s < iters)
    # A checkpoint every third of the run: an interrupted demo continues with --resume.
    cfg.SOLVER.CHECKPOINT_PERIOD = max(1, iters // 3)
    cfg.TEST.EVAL_PERIOD = 0
    # Detections come from the AlignPS branch (SPEC §1): score them with AlignPS's published
    # thresholds (0.2 CUHK-SYSU, 0.15 PRW) unless the config or --opts set one explicitly. Reported.
    if float(cfg.TEST.PERSON_SEARCH.DET_THRESH) == 0.5 and cfg.MODEL.META_ARCHITECTURE in ("ROIAlignPS", "AlignPS"):
        cfg.TEST.PERSON_SEARCH.DET_THRESH = 0.2 if data.get("fmt") == "cuhk_sysu" else 0.15
    sizes = available_gallery_sizes(data)
    if sizes and int(cfg.TEST.PERSON_SEARCH.GALLERY_SIZE) not in sizes + [-1]:
        # SynthPS writes the official sizes that fit its test split (tiny: TestG50 only)
        cfg.TEST.PERSON_SEARCH.GALLERY_SIZE = max(g for g in sizes if g <= 100) if min(sizes) <= 100 else min(sizes)
    apply_galw_overrides(cfg, settings, phase, iters, groups=groups)
    if settings.opts:
        cfg.merge_from_list(list(settings.opts))
    cfg.freeze()
    return cfg


def available_gallery_sizes(data: Dict) -> List[int]:
    """N of every TestG{N}.mat of a CUHK-SYSU-layout root (sorted); [] for PRW."""
    import glob
    import re

    if data.get("fmt") != "cuhk_sysu" or not os.path.isdir(str(data.get("root"))):
        return []
    names = glob.glob(os.path.join(data["root"], "annotation", "test", "train_test", "TestG*.mat"))
    return sorted(int(m.group(1)) for m in (re.search(r"TestG(\d+)\.mat$", n) for n in names) if m)


def apply_galw_overrides(cfg, settings: PipelineSettings, phase: int, iters: int, groups=None) -> None:
    """Set the GALW keys of a phase: strategy; phase 1 records trends, phase 2 uses ``groups``."""
    g = cfg.GALW
    g.STRATEGY = settings.phase1_strategy if phase == 1 else settings.phase2_strategy
    if groups is not None:
        g.GROUPS = [list(x) for x in groups]
    g.GROUPING.NUM_GROUPS = settings.num_groups
    g.RECORD.ENABLED = phase == 1
    g.RECORD.PERIOD = settings.probe_period
    # "Epochs" of the trends = equal windows of the short run (a SynthPS epoch is a few dozen
    # iterations; the windows give Eq. 7 the same number of points whatever the dataset size).
    g.RECORD.EPOCH_ITERS = max(1, iters // max(1, settings.epochs))


def save_cfg(cfg, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(cfg.dump())


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
class _TqdmLoader:
    """A data loader wrapped in a tqdm bar that keeps ``len()`` (inference_on_dataset needs it)."""

    def __init__(self, loader, desc: str):
        self.loader, self.desc = loader, desc

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        from tqdm import tqdm

        return iter(tqdm(self.loader, total=len(self.loader), desc=self.desc, dynamic_ncols=True, mininterval=1.0))


def evaluate_model(cfg, model, dataset_name: str, output_folder: str, desc: str = "eval", **evaluator_kwargs) -> Dict:
    """Standard-protocol evaluation of ``model`` on ``dataset_name`` (a ``<prefix>_test`` dataset).

    Returns the evaluator's dict (``{"search": {...}, "detection": {...}, ...}``); the saved-results
    file lands in ``output_folder``.
    """
    from detectron2.evaluation import inference_on_dataset

    from galw_d2.engine.person_search import PersonSearchTrainer

    os.makedirs(output_folder, exist_ok=True)
    loader = PersonSearchTrainer.build_test_loader(cfg, dataset_name)
    evaluator = PersonSearchTrainer.build_evaluator(cfg, dataset_name, output_folder, **evaluator_kwargs)
    was_training = model.training
    res = inference_on_dataset(model, _TqdmLoader(loader, desc), evaluator)
    model.train(was_training)
    return _to_builtin(res)


def _to_builtin(x):
    if isinstance(x, dict):
        return {str(k): _to_builtin(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_builtin(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        return x.item()
    return x


def _search(res: Dict) -> Dict:
    s = res.get("search", res)
    return {k: float(s[k]) for k in ("mAP", "top1", "top5", "top10") if k in s}


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------
def _trainer(cfg, desc: str):
    from detectron2.utils.env import seed_all_rng

    from galw_d2.engine.person_search import PersonSearchTrainer

    # The same seed right before the model is built: both phases (and every ablation arm) start
    # from identical initial weights.
    seed_all_rng(cfg.SEED)

    class _T(PersonSearchTrainer):
        progress_bar = desc

    return _T(cfg)


def run_pipeline(settings: PipelineSettings) -> Dict:
    """Run the seven stages and return the metrics dict written to ``<output>/metrics.json``."""
    from detectron2.utils.logger import setup_logger

    from galw_d2.engine import unwrap_galw

    s = settings.resolved()
    out = os.path.abspath(s.output)
    os.makedirs(out, exist_ok=True)
    setup_logger(output=os.path.join(out, "log.txt"), name="detectron2", abbrev_name="d2")
    setup_logger(output=os.path.join(out, "log.txt"), name="galw_d2")
    torch.manual_seed(s.seed)
    st = _Stages(7)

    st.start("data", "dataset")
    data = prepare_dataset(s)
    test_name = f"{data['prefix']}_test"

    st.start("random_init", "random-init model on the test split (the floor)")
    cfg1 = build_cfg(s, data, 1, os.path.join(out, "phase1"))
    save_cfg(cfg1, os.path.join(out, "configs", "phase1.yaml"))
    trainer1 = _trainer(cfg1, "phase 1")
    model_init = copy.deepcopy(unwrap_galw(trainer1.model).state_dict())
    torch.save({"model": model_init}, os.path.join(out, "model_init.pth"))
    res_init = evaluate_model(cfg1, trainer1.model, test_name, os.path.join(out, "eval", "random_init"),
                              "eval random-init", save_results=True)
    print(f"[demo] random init: search mAP {100 * _search(res_init).get('mAP', 0):.2f}%  "
          f"top-1 {100 * _search(res_init).get('top1', 0):.2f}%", flush=True)

    st.start("phase1", f"phase 1: {s.phase1_iters} iterations, {s.phase1_strategy.upper()} (ungrouped), recording gradient trends")
    trainer1.resume_or_load(resume=s.resume)
    trainer1.train()
    res_p1 = None
    if s.eval_phase1:
        res_p1 = evaluate_model(cfg1, trainer1.model, test_name, os.path.join(out, "eval", "phase1"),
                                "eval phase 1", save_results=True)
        print(f"[demo] phase 1 ({s.phase1_strategy}): search mAP {100 * _search(res_p1).get('mAP', 0):.2f}%", flush=True)
    trends_file = find_trends_file(cfg1, trainer1)
    del trainer1

    st.start("grouping", f"grouping the tasks into {s.num_groups} groups from the gradient trends")
    grouping = group_tasks(trends_file, s.num_groups, os.path.join(out, "grouping"))
    groups = grouping["groups"]
    for i, g in enumerate(groups):
        print(f"[demo]   group {i + 1}: {', '.join(_short(t) for t in g)}", flush=True)

    st.start("phase2", f"phase 2: {s.phase2_iters} iterations, {s.phase2_strategy.upper()} with the groups")
    cfg2 = build_cfg(s, data, 2, os.path.join(out, "phase2"), groups=groups)
    save_cfg(cfg2, os.path.join(out, "configs", "phase2.yaml"))
    trainer2 = _trainer(cfg2, "phase 2")
    same_init = _same_weights(unwrap_galw(trainer2.model).state_dict(), model_init)
    trainer2.resume_or_load(resume=s.resume)
    trainer2.train()
    model2 = trainer2.model

    st.start("eval", "standard protocol on the test split, gallery-size curve, top-k figure")
    res_p2 = evaluate_model(cfg2, model2, test_name, os.path.join(out, "eval", "phase2"), "eval phase 2",
                            save_results=True)
    dirs = {"random init": os.path.join(out, "eval", "random_init"),
            f"phase 1 ({s.phase1_strategy.upper()})": os.path.join(out, "eval", "phase1"),
            f"phase 2 ({s.phase2_strategy.upper()})": os.path.join(out, "eval", "phase2")}
    extras = make_figures(cfg2, data, test_name, dirs, out, PRESETS["quick" if s.quick else "demo"]["max_queries_figure"])

    st.start("report", "metrics.json and report.md")
    st.end()
    metrics = {
        "search": _search(res_p2),
        "random_init": _search(res_init),
        "phase1": _search(res_p1) if res_p1 else None,
        "detection": res_p2.get("detection"),
        "groups": [list(g) for g in groups],
        "grouping": {k: v for k, v in grouping.items() if k != "groups"},
        "gallery_size_curve": extras.get("gallery_size_curve"),
        "gallery_size_curves": extras.get("curves"),
        "settings": {**asdict(s), "dataset_prefix": data["prefix"], "dataset_root": data["root"],
                     "det_thresh": _det_thresh(cfg2), "same_initial_weights_both_phases": same_init,
                     "device": str(cfg2.MODEL.DEVICE), "torch_threads": torch.get_num_threads()},
        "evaluation_raw": {"random_init": res_init, "phase1": res_p1, "phase2": res_p2},
        "runtime_s": {**st.times, "total": round(st.elapsed(), 1)},
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=str)
    write_report(metrics, os.path.join(out, "report.md"))
    print_summary(metrics)
    return metrics


def _same_weights(a: Dict, b: Dict) -> bool:
    """Same model weights, leaving out the loss-weighting state (one sigma per task vs per group)."""
    ka = [k for k in a if not k.startswith("galw_weighting.")]
    kb = [k for k in b if not k.startswith("galw_weighting.")]
    return ka == kb and all(torch.equal(a[k], b[k]) for k in ka)


def _short(name: str) -> str:
    from galw_d2.tasks import TASKS_BY_NAME

    t = TASKS_BY_NAME.get(name)
    return f"{t.short} ({name})" if t else name


def _det_thresh(cfg) -> float:
    return float(cfg.TEST.PERSON_SEARCH.DET_THRESH)


# ---------------------------------------------------------------------------------------------
# adapters to the GALW part (trends file, grouping) and the evaluation part (curves, figures)
# ---------------------------------------------------------------------------------------------
def find_trends_file(cfg, trainer) -> str:
    """Path of the trends JSON phase 1 wrote."""
    for cand in (trainer.trends_path() if hasattr(trainer, "trends_path") else None,
                 os.path.join(cfg.OUTPUT_DIR, "gradient_trends.json")):
        if cand and os.path.exists(cand):
            return cand
    import glob

    hits = sorted(glob.glob(os.path.join(cfg.OUTPUT_DIR, "*trend*.json")))
    if hits:
        return hits[0]
    raise FileNotFoundError(f"phase 1 wrote no gradient-trends JSON into {cfg.OUTPUT_DIR} "
                            f"(is gradient recording on in cfg.GALW?)")


def group_tasks(trends_file: str, num_groups: int, output_dir: str, strategy: str = "slope", seed: int = 0) -> Dict:
    """Algorithm 1 lines 7-13 with the GALW part's workflow: slopes (Eq. 7), transform (Eq. 8),
    hierarchical clustering. Writes ``output_dir/{trends.json, groups.json, galw_phase2.yaml,
    gradient_trends.png, dendrogram.png}``; returns groups.json's content."""
    import shutil

    from galw_d2.galw.workflow import make_groups

    os.makedirs(output_dir, exist_ok=True)
    shutil.copyfile(trends_file, os.path.join(output_dir, "trends.json"))
    res = make_groups(trends_file, num_groups, output_dir, strategy=strategy, seed=seed)
    for n in res.get("report", {}).get("notes") or []:
        print(f"[demo]   grouping note: {n}", flush=True)
    return res


GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000, -1)


def gallery_size_curve(results: Dict, test_name: str, fmt: str, det_thresh: float) -> List[Dict]:
    """Re-score saved results on every protocol of the dataset (no inference).

    CUHK-SYSU layout: every TestG{N}.mat the dataset has, plus the whole test set (N = -1); PRW
    layout: the standard and the cross-camera protocols.
    """
    from galw_d2.data import get_search_protocol
    from galw_d2.evaluation.evaluator import evaluate_results

    curve = []
    if fmt == "cuhk_sysu":
        for n in GALLERY_SIZES:
            try:
                proto = get_search_protocol(test_name, gallery_size=n)
            except (FileNotFoundError, KeyError, ValueError):
                continue  # this gallery size was not generated
            r = evaluate_results(proto, results, det_thresh=det_thresh, detection=False)["search"]
            curve.append({"gallery_size": n, "protocol": proto.name, "mAP": r["mAP"], "top1": r["top1"]})
    else:
        for cc in (False, True):
            proto = get_search_protocol(test_name, cross_camera=cc)
            r = evaluate_results(proto, results, det_thresh=det_thresh, detection=False)["search"]
            curve.append({"gallery_size": "cross-camera" if cc else "standard", "protocol": proto.name,
                          "mAP": r["mAP"], "top1": r["top1"]})
    return curve


def make_figures(cfg, data: Dict, test_name: str, results_dirs: Dict[str, str], out: str, max_queries: int,
                 topk: int = 5) -> Dict:
    """Gallery-size curves (one per evaluated model, Fig. 4) and the top-k figure of the last model
    (Fig. 5), from the saved results. ``results_dirs``: {label: folder with search_results.pth},
    the figure's model last. Returns {"gallery_size_curve": [...] (last model), "curves": {label: [...]}}."""
    from detectron2.data import DatasetCatalog

    from galw_d2.data import get_search_protocol
    from galw_d2.evaluation import load_results
    from galw_d2.evaluation.plots import plot_map_vs_gallery_size, plot_topk_search

    thr = _det_thresh(cfg)
    curves, results = {}, None
    for label, d in results_dirs.items():
        p = os.path.join(d, "search_results.pth")
        if not os.path.exists(p):
            continue
        results = load_results(p)
        curves[label] = gallery_size_curve(results, test_name, data["fmt"], thr)
    last = curves[list(curves)[-1]] if curves else []
    with open(os.path.join(out, "gallery_size_curve.json"), "w") as f:
        json.dump({"det_thresh": thr, "curves": curves}, f, indent=2)
    pts = {k: {c["gallery_size"]: c["mAP"] for c in v if isinstance(c["gallery_size"], int) and c["gallery_size"] > 0}
           for k, v in curves.items()}
    pts = {k: v for k, v in pts.items() if v}
    if pts:
        plot_map_vs_gallery_size(pts, os.path.join(out, "gallery_size_curve.png"),
                                 title=f"SynthPS ({data['fmt']} layout) test split")
    if results is not None:
        proto = get_search_protocol(test_name, gallery_size=int(cfg.TEST.PERSON_SEARCH.GALLERY_SIZE)) \
            if data["fmt"] == "cuhk_sysu" else get_search_protocol(test_name)
        files = {r.get("image_name", os.path.basename(r["file_name"])): r["file_name"]
                 for r in DatasetCatalog.get(test_name)}
        qf = np.stack([q["feat"] for q in results["queries"]])
        idx = list(range(min(max_queries, len(proto.queries))))
        if idx:
            plot_topk_search(proto, results["gallery"], qf, idx, lambda n: files[n],
                             os.path.join(out, "topk_search.png"), k=topk, det_thresh=thr)
    return {"gallery_size_curve": last, "curves": curves}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
PAPER_NUMBERS = [  # SPEC §6: published mAP / top-1 (%), real datasets, ResNet-50, GPU training
    ("NAE", (91.5, 92.4), (43.3, 80.9)),
    ("AlignPS", (93.1, 93.4), (45.9, 81.9)),
    ("ROI-AlignPS*", (95.0, 95.3), (50.3, 84.3)),
    ("ROI-AlignPS* + GALW", (95.6, 96.3), (52.9, 86.1)),
]


def _pct(d: Optional[Dict], k: str) -> str:
    return "-" if not d or k not in d or d[k] is None else f"{100 * d[k]:.2f}"


def write_report(m: Dict, path: str) -> None:
    s = m["settings"]
    rows = [("random initial weights", m["random_init"]),
            (f"phase 1: {s['phase1_strategy'].upper()}, no grouping", m.get("phase1")),
            (f"phase 2: {s['phase2_strategy'].upper()} ({len(m['groups'])} groups)", m["search"])]
    lines = [
        "# GALW demo report",
        "",
        f"Dataset: `{s['dataset']}` (registered as `{s['dataset_prefix']}`, root `{s['dataset_root']}`); "
        f"model config `{os.path.relpath(s['config_file'], ROOT) if os.path.isabs(s['config_file']) else s['config_file']}`; "
        f"seed {s['seed']}; {s['phase1_iters']} + {s['phase2_iters']} iterations on {s['device']} "
        f"({s['torch_threads']} threads); detection score threshold {s['det_thresh']}; "
        f"{'quick mode' if s['quick'] else 'full demo'}.",
        "",
        "## Search on the SynthPS test split (measured by this run)",
        "",
        "| model | mAP (%) | top-1 (%) | top-5 (%) | top-10 (%) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {_pct(r, 'mAP')} | {_pct(r, 'top1')} | {_pct(r, 'top5')} | {_pct(r, 'top10')} |")
    det = m.get("detection") or {}
    if det:
        lines += ["", f"Detection (phase 2): AP {_pct(det, 'AP')} %, recall {_pct(det, 'recall')} %."]
    lines += ["", "## Groups found (phase 1 gradient trends)", ""]
    for i, g in enumerate(m["groups"]):
        lines.append(f"{i + 1}. " + ", ".join(f"`{_short(t)}`" for t in g))
    curve = m.get("gallery_size_curve")
    if curve:
        lines += ["", "## mAP vs gallery size", "", "| gallery size | mAP (%) | top-1 (%) |", "|---|---|---|"]
        for row in curve:
            lines.append(f"| {row['gallery_size']} | {100 * row['mAP']:.2f} | {100 * row['top1']:.2f} |")
    lines += ["", "## Published numbers (paper, real datasets; NOT comparable with SynthPS)", "",
              "| method | CUHK-SYSU mAP / top-1 | PRW mAP / top-1 |", "|---|---|---|"]
    for name, c, p in PAPER_NUMBERS:
        lines.append(f"| {name} | {c[0]} / {c[1]} | {p[0]} / {p[1]} |")
    rt = m["runtime_s"]
    lines += ["", "## Runtime (s)", "", "| " + " | ".join(rt) + " |", "|" + "---|" * len(rt),
              "| " + " | ".join(str(v) for v in rt.values()) + " |", ""]
    figs = [f for f in ("gallery_size_curve.png", "topk_search.png", "grouping/gradient_trends.png",
                        "grouping/dendrogram.png") if os.path.exists(os.path.join(os.path.dirname(path), f))]
    if figs:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def print_summary(m: Dict) -> None:
    r, t = m["random_init"], m["search"]
    print("", flush=True)
    print("[demo] ================= results (SynthPS test split, standard protocol) =================")
    print(f"[demo] {'model':<34} {'mAP':>8} {'top-1':>8}")
    print(f"[demo] {'random initial weights':<34} {_pct(r, 'mAP'):>8} {_pct(r, 'top1'):>8}")
    if m.get("phase1"):
        print(f"[demo] {'phase 1 (ungrouped)':<34} {_pct(m['phase1'], 'mAP'):>8} {_pct(m['phase1'], 'top1'):>8}")
    print(f"[demo] {'phase 2 (GALW, grouped)':<34} {_pct(t, 'mAP'):>8} {_pct(t, 'top1'):>8}")
    print(f"[demo] groups: " + "  ".join("{" + ",".join(_short(x).split(" ")[0] for x in g) + "}" for g in m["groups"]))
    print(f"[demo] total runtime {m['runtime_s']['total']:.0f} s; output in {m['settings']['output']}", flush=True)
