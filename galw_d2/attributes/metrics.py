"""Pedestrian-attribute metrics (numpy): label-based mA and instance-based accuracy/precision/recall/F1.

All inputs are (N, A) arrays of 0/1 (predictions ``pred``, ground truth ``gt``); entries of ``gt``
< 0 are "unlabeled" and ignored by the label-based metric (the instance-based metrics need complete
rows, and reject them).

Label-based (Li et al. 2015 / PA-100K protocol), per attribute j:
``TPR_j = TP/(TP+FN)``, ``TNR_j = TN/(TN+FP)``, ``mA_j = (TPR_j + TNR_j) / 2``; ``mA`` = mean over
attributes. **Empty sets:** an attribute without positive ground truth has no TPR, one without
negatives no TNR; its mA_j is then the one rate that is defined (e.g. an attribute absent from the
test set scores its TNR). Attributes with no labeled entry at all are left out of the mean (and a
ValueError is raised if no attribute is left).

Instance-based, per sample i with predicted set P_i and ground-truth set G_i:
``accuracy_i = |P∩G| / |P∪G|``, ``precision_i = |P∩G| / |P|``, ``recall_i = |P∩G| / |G|``; each is
averaged over samples, and ``F1 = 2 * precision * recall / (precision + recall)`` of those means (0
when both are 0). **Empty sets:** when P and G are both empty the sample is a perfect match
(accuracy = precision = recall = 1); an empty P with a non-empty G has precision 0 (and recall 0);
a non-empty P with an empty G has recall 0 (and precision 0). All results are fractions in [0, 1].
"""

from typing import Dict, Optional

import numpy as np

__all__ = ["label_based_metrics", "instance_based_metrics", "attribute_metrics", "binarize"]


def _as_2d(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (samples, attributes) array, got shape {a.shape}")
    return a


def binarize(probs, threshold: float = 0.5) -> np.ndarray:
    """0/1 int array: probs >= threshold."""
    return (np.asarray(probs) >= threshold).astype(np.int64)


def _check(pred, gt):
    pred, gt = _as_2d("pred", pred), _as_2d("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    if not np.isin(pred, (0, 1)).all():
        raise ValueError("pred must be 0/1 (binarize probabilities first)")
    return pred.astype(np.int64), gt


def label_based_metrics(pred, gt) -> Dict[str, object]:
    """{"mA": float, "per_attribute_mA": (A,) array (nan = not evaluable), "TPR": (A,), "TNR": (A,)}."""
    pred, gt = _check(pred, gt)
    gt_valid = gt >= 0
    g = (gt > 0.5) & gt_valid
    ng = (gt <= 0.5) & gt_valid
    p = pred == 1
    tp = (p & g).sum(0)
    tn = (~p & ng).sum(0)
    npos, nneg = g.sum(0), ng.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(npos > 0, tp / np.maximum(npos, 1), np.nan)
        tnr = np.where(nneg > 0, tn / np.maximum(nneg, 1), np.nan)
    if tpr.size == 0 or np.all(np.isnan(tpr) & np.isnan(tnr)):
        raise ValueError("label_based_metrics: no attribute has a labeled ground-truth entry")
    both = np.stack([tpr, tnr])
    n_def = (~np.isnan(both)).sum(0)
    per = np.where(n_def > 0, np.nansum(both, axis=0) / np.maximum(n_def, 1), np.nan)
    return {"mA": float(np.nanmean(per)), "per_attribute_mA": per, "TPR": tpr, "TNR": tnr}


def instance_based_metrics(pred, gt) -> Dict[str, float]:
    """{"accuracy", "precision", "recall", "F1"} (fractions), empty sets as in the module docstring."""
    pred, gt = _check(pred, gt)
    if (gt < 0).any():
        raise ValueError("instance_based_metrics needs complete ground truth (found entries < 0)")
    if pred.shape[0] == 0:
        raise ValueError("instance_based_metrics: no samples")
    g = gt > 0.5
    p = pred == 1
    inter = (p & g).sum(1).astype(np.float64)
    union = (p | g).sum(1).astype(np.float64)
    np_, ng = p.sum(1).astype(np.float64), g.sum(1).astype(np.float64)
    both_empty = union == 0
    acc = np.where(both_empty, 1.0, inter / np.maximum(union, 1))
    prec = np.where(np_ > 0, inter / np.maximum(np_, 1), np.where(both_empty, 1.0, 0.0))
    rec = np.where(ng > 0, inter / np.maximum(ng, 1), np.where(both_empty, 1.0, 0.0))
    P, R = float(prec.mean()), float(rec.mean())
    f1 = 2 * P * R / (P + R) if (P + R) > 0 else 0.0
    return {"accuracy": float(acc.mean()), "precision": P, "recall": R, "F1": f1}


def attribute_metrics(probs_or_pred, gt, threshold: Optional[float] = 0.5) -> Dict[str, float]:
    """All five numbers {"mA", "accuracy", "precision", "recall", "F1"}; ``threshold`` None means
    the first argument is already 0/1."""
    pred = probs_or_pred if threshold is None else binarize(probs_or_pred, threshold)
    out = {"mA": label_based_metrics(pred, gt)["mA"]}
    out.update(instance_based_metrics(pred, gt))
    return out
