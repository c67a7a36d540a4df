"""Detection AP and recall of the person-search protocol (SPEC §5), numpy only.

As the published CUHK-SYSU / PRW code: per gallery image keep detections with score >= ``det_thresh``;
a detection is a true positive when it and a GT box are each other's highest-IoU partner (ties: the
first index) and their IoU >= ``iou_thresh`` (0.5, no "+1" pixels). Over all images,
``recall = TP / #GT`` and ``AP = average_precision(labels, scores) * recall`` (0 when nothing is found).
Images without GT boxes contribute only false positives (the reference code crashes on them); images
without detections still count their GT boxes. ``labeled_only`` drops unlabeled GT (pid -1) and
images left without GT.
"""

from typing import Dict, Mapping

import numpy as np

from .search import _ap_sorted, check_det_thresh, pairwise_iou

__all__ = ["evaluate_detection", "match_detections"]


def match_detections(gt_boxes: np.ndarray, det_boxes: np.ndarray, iou_thresh: float = 0.5) -> np.ndarray:
    """(num_det,) bool: detection j matches some GT by mutual argmax IoU with IoU >= ``iou_thresh``."""
    nd = len(det_boxes)
    if len(gt_boxes) == 0 or nd == 0:
        return np.zeros(nd, dtype=bool)
    ious = pairwise_iou(gt_boxes, det_boxes)  # (G, N)
    best_gt = ious.argmax(axis=0)  # per detection
    best_det = ious.argmax(axis=1)  # per GT
    j = np.arange(nd)
    return (best_det[best_gt] == j) & (ious[best_gt, j] >= iou_thresh)


def evaluate_detection(
    gallery_gt: Mapping,
    detections: Mapping[str, Mapping[str, np.ndarray]],
    det_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    labeled_only: bool = False,
) -> Dict:
    """Args:
        gallery_gt: ``{name: GalleryImage}`` (``SearchProtocol.gallery``): the images scored.
        detections: validated ``results["gallery"]``; images missing from it have no detections.

    Returns:
        ``{"AP": float, "recall": float, "num_gt": int, "num_det": int}`` (fractions).
    """
    det_thresh = check_det_thresh(det_thresh)
    labels, scores = [], []
    count_gt = count_tp = 0
    for name, g in gallery_gt.items():
        gt = np.asarray(g.boxes, np.float64).reshape(-1, 4)
        if labeled_only:
            gt = gt[np.asarray(g.pids).reshape(-1) >= 0]
            if len(gt) == 0:
                continue
        count_gt += len(gt)
        d = detections.get(name)
        if d is None or len(d["scores"]) == 0:
            continue
        s = np.asarray(d["scores"], np.float64).reshape(-1)
        keep = s >= det_thresh
        if not keep.any():
            continue
        tp = match_detections(gt, np.asarray(d["boxes"], np.float64).reshape(-1, 4)[keep], iou_thresh)
        labels.append(tp)
        scores.append(s[keep])
        count_tp += int(tp.sum())
    n_det = int(sum(len(x) for x in labels))
    recall = count_tp / count_gt if count_gt else 0.0
    if count_tp == 0:
        ap = 0.0
    else:
        lab, sc = np.concatenate(labels).astype(np.float64), np.concatenate(scores)
        o = np.argsort(-sc, kind="stable")
        ap = _ap_sorted(lab[o], sc[o]) * recall
    return {"AP": float(ap), "recall": float(recall), "num_gt": int(count_gt), "num_det": n_det}
