"""Evaluation of person-search models for the applications: the standard protocol over a test
split with a progress bar, the gallery-size curve (Fig. 4) and the top-k figure (Fig. 5), re-scored
from the saved results without new inference."""

import json
import os
from typing import Dict, List

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_on_dataset
from tqdm import tqdm

from ..data import get_search_protocol
from ..engine.person_search import PersonSearchTrainer
from ..evaluation import load_results
from ..evaluation.evaluator import evaluate_results
from ..evaluation.plots import plot_map_vs_gallery_size, plot_topk_search

__all__ = ["evaluate_model", "search_metrics", "det_thresh", "gallery_size_curve", "make_figures", "GALLERY_SIZES"]


class _TqdmLoader:
    """A data loader wrapped in a tqdm bar that keeps ``len()`` (inference_on_dataset needs it)."""

    def __init__(self, loader, desc: str):
        self.loader, self.desc = loader, desc

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(tqdm(self.loader, total=len(self.loader), desc=self.desc, dynamic_ncols=True, mininterval=1.0))


def evaluate_model(cfg, model, dataset_name: str, output_folder: str, desc: str = "eval", **evaluator_kwargs) -> Dict:
    """Standard-protocol evaluation of ``model`` on ``dataset_name`` (a ``<prefix>_test`` dataset).

    Returns the evaluator's dict (``{"search": {...}, "detection": {...}, ...}``); the saved-results
    file lands in ``output_folder``.
    """
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


def search_metrics(res: Dict) -> Dict:
    """mAP, top-1/5/10 (fractions) of an evaluator result dict."""
    s = res.get("search", res)
    return {k: float(s[k]) for k in ("mAP", "top1", "top5", "top10") if k in s}


GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000, -1)


def gallery_size_curve(results: Dict, test_name: str, fmt: str, det_thresh: float) -> List[Dict]:
    """Re-score saved results on every protocol of the dataset (no inference).

    CUHK-SYSU layout: every TestG{N}.mat the dataset has, plus the whole test set (N = -1); PRW
    layout: the standard and the cross-camera protocols.
    """
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
            curve.append(
                {
                    "gallery_size": "cross-camera" if cc else "standard",
                    "protocol": proto.name,
                    "mAP": r["mAP"],
                    "top1": r["top1"],
                }
            )
    return curve


def make_figures(
    cfg, data: Dict, test_name: str, results_dirs: Dict[str, str], out: str, max_queries: int, topk: int = 5
) -> Dict:
    """Gallery-size curves (one per evaluated model, Fig. 4) and the top-k figure of the last model
    (Fig. 5), from the saved results. ``results_dirs``: {label: folder with search_results.pth},
    the figure's model last. Returns {"gallery_size_curve": [...] (last model), "curves": {label: [...]}}."""
    thr = det_thresh(cfg)
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
    pts = {
        k: {c["gallery_size"]: c["mAP"] for c in v if isinstance(c["gallery_size"], int) and c["gallery_size"] > 0}
        for k, v in curves.items()
    }
    pts = {k: v for k, v in pts.items() if v}
    if pts:
        plot_map_vs_gallery_size(
            pts, os.path.join(out, "gallery_size_curve.png"), title=f"SynthPS ({data['fmt']} layout) test split"
        )
    if results is not None:
        proto = (
            get_search_protocol(test_name, gallery_size=int(cfg.TEST.PERSON_SEARCH.GALLERY_SIZE))
            if data["fmt"] == "cuhk_sysu"
            else get_search_protocol(test_name)
        )
        files = {
            r.get("image_name", os.path.basename(r["file_name"])): r["file_name"] for r in DatasetCatalog.get(test_name)
        }
        qf = np.stack([q["feat"] for q in results["queries"]])
        idx = list(range(min(max_queries, len(proto.queries))))
        if idx:
            plot_topk_search(
                proto,
                results["gallery"],
                qf,
                idx,
                lambda n: files[n],
                os.path.join(out, "topk_search.png"),
                k=topk,
                det_thresh=thr,
            )
    return {"gallery_size_curve": last, "curves": curves}


def det_thresh(cfg) -> float:
    """The detection score threshold of the search metrics (always reported with results)."""
    return float(cfg.TEST.PERSON_SEARCH.DET_THRESH)
