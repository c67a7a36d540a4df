"""Scoring a saved-results dict against a protocol: numpy only (no detectron2, no torch), so the
command-line re-scoring (tools/evaluate_search.py) and other codebases can use it."""

import logging
from typing import Dict, Mapping

import numpy as np

from .detection import evaluate_detection
from .results import check_against_protocol, validate_results
from .search import check_det_thresh, evaluate_search

__all__ = ["evaluate_results"]

logger = logging.getLogger(__name__)


def evaluate_results(
    protocol,
    results: Mapping,
    det_thresh: float = 0.5,
    detection: bool = True,
    progress: bool = False,
    allow_partial: bool = False,
    source: str = "results",
    **search_kwargs,
) -> Dict:
    """Score a (validated or raw) results dict against a protocol.

    Args:
        allow_partial: score protocol gallery images without an entry as images without detections
            (otherwise an error, see :func:`~galw_d2.evaluation.results.check_against_protocol`).
        search_kwargs: passed to :func:`~galw_d2.evaluation.search.evaluate_search` (``tie_rule``, ``topk`` ...).

    Returns ``{"search": {mAP, top1, top5, top10, num_queries, num_queries_without_gt, tie_rule, ties,
    missing_gallery_images}, "detection": {AP, recall, num_gt, num_det}}`` (no "detection" when
    ``detection=False``).
    """
    check_det_thresh(det_thresh)
    res = validate_results(results, source=source)
    missing = check_against_protocol(res, protocol, source, allow_partial=allow_partial)
    if missing:
        logger.warning(
            f"[evaluate_results] {source}: {missing} protocol gallery images have no entry and are scored "
            f"as images without detections (allow_partial)"
        )
    qf = np.stack([q["feat"] for q in res["queries"]]) if res["queries"] else np.zeros((0, 0), np.float32)
    out = {
        "search": evaluate_search(
            protocol, res["gallery"], qf, det_thresh=det_thresh, progress=progress, **search_kwargs
        )
    }
    out["search"]["missing_gallery_images"] = int(missing)
    if detection:
        out["detection"] = evaluate_detection(protocol.gallery, res["gallery"], det_thresh=det_thresh)
    return out
