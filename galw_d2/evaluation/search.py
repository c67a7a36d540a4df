"""Person-search metrics of the standard protocol (SPEC §5), vectorised with numpy (no detectron2).

Per query, exactly as the published CUHK-SYSU / PRW evaluation code (OIM, NAE, SeqNet, AlignPS):

* The query's gallery is given by the protocol rule (:mod:`galw_d2.data.protocol`); its detections
  are those with score >= ``det_thresh``; similarity = cosine (features are L2-normalised here).
* For every gallery image that contains the query person (GT box of width w, height h) the IoU
  threshold is ``min(0.5, w*h / ((w+10)*(h+10)))``; among that image's detections the most similar
  one with IoU >= the threshold is the image's only true positive (ties in similarity: the earlier
  detection). IoU without the "+1" pixel convention.
* All the gallery's detections are concatenated; ``AP = average_precision(labels, sims) *
  found / count_gt`` where ``count_gt`` = gallery entries containing the person (images left without
  any detection are still counted; for an "explicit" CUHK-SYSU list, a duplicated image is scored
  once but every listed entry with a box counts); AP = 0 when nothing is found.
* top-k: some true positive is among the k most similar detections. Ties in similarity are broken by
  position in the concatenated list (gallery order, then detection order), i.e. a stable descending
  sort. (The reference code's ``np.argsort(..)[::-1]`` leaves tie order to numpy's sort algorithm.)
* A query whose person appears in none of its gallery images (``count_gt == 0``, where the reference
  code divides by zero) is left out of mAP / top-k and counted in ``num_queries_without_gt``.

Ties and collapsed embeddings. With the standard rule above, tied similarities are ordered by gallery
position, and CUHK-SYSU TestG lists put the query person's images first: constant features (every
similarity tied) then score top-5 / top-10 far above chance. The standard numbers are kept (they are
what the published code computes), but every evaluation also computes the ``"pessimistic"`` rule
(among equal similarities the false positives rank first; AP with one threshold per detection in that
order) and reports, in ``out["ties"]``: both metric sets, the fraction of queries whose best similarity
is shared by several detections, the fraction whose AP or first-hit rank depends on the rule, and the
spread of the gallery features (``sqrt(1 - |mean unit feature|^2)``: 0 when every feature is the
same). Collapsed or heavily tied embeddings log a loud warning and set ``out["ties"]["warning"]``.
``tie_rule="pessimistic"`` makes the pessimistic numbers the headline ones.

Speed: the similarities of a chunk of queries to all detections are one matrix product (memory
bounded by ``chunk_bytes``); each query's body is vectorised and ranks only its true positives
(O(n log T), no sort of its n detections).
"""

import logging
import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..protocol import SearchProtocol

__all__ = [
    "average_precision",
    "iou_threshold",
    "box_iou_rows",
    "pairwise_iou",
    "DetectionTable",
    "QueryScore",
    "evaluate_search",
    "score_query",
    "check_det_thresh",
    "feature_spread",
    "TIE_RULES",
]

logger = logging.getLogger(__name__)

TIE_RULES = ("standard", "pessimistic")
# Collapse / tie alarms: feature spread below this (unit features: 1 = spread out, 0 = all equal) ...
COLLAPSED_SPREAD = 0.05
# ... or a gap of at least this between the standard and the pessimistic metrics (fractions).
TIE_GAP_WARN = 0.005


def check_det_thresh(det_thresh) -> float:
    """``det_thresh`` as a float; ``ValueError`` unless it is finite and in [0, 1) (detection scores are
    probabilities: 1 or more keeps nothing, NaN keeps nothing without saying so)."""
    try:
        t = float(det_thresh)
    except (TypeError, ValueError):
        raise ValueError(f"det_thresh {det_thresh!r}: expected a finite number in [0, 1)") from None
    if not (math.isfinite(t) and 0.0 <= t < 1.0):
        raise ValueError(
            f"det_thresh {t}: expected a finite number in [0, 1) (detections with score >= det_thresh are kept)"
        )
    return t


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision, exactly ``sklearn.metrics.average_precision_score`` (binary, no weights).

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds in decreasing order, where tied
    scores form one threshold (so the order of tied items never matters).

    Args:
        y_true: (N,) 0/1 labels.
        y_score: (N,) finite scores, higher = more likely positive.

    Returns:
        AP in [0, 1]; 0.0 when there is no positive (sklearn warns and returns an ill-defined value).
    """
    y_true = np.asarray(y_true).reshape(-1).astype(np.float64)
    y_score = np.asarray(y_score).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"average_precision: {y_true.size} labels but {y_score.size} scores")
    order = np.argsort(-y_score, kind="stable")
    return _ap_sorted(y_true[order], y_score[order])


def _ap_sorted(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP of labels/scores already sorted by decreasing score."""
    if labels.size == 0:
        return 0.0
    tps_all = np.cumsum(labels)
    total = tps_all[-1]
    if total <= 0:
        return 0.0
    # last index of each run of equal scores = one threshold
    last = np.flatnonzero(np.diff(scores)) if scores.size > 1 else np.zeros(0, dtype=np.int64)
    last = np.concatenate([last, [labels.size - 1]])
    tps = tps_all[last]
    precision = tps / (last + 1.0)
    recall = tps / total
    d_recall = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(d_recall * precision))


def iou_threshold(w, h):
    """The size-adaptive IoU threshold ``min(0.5, w*h / ((w+10)*(h+10)))`` of a GT box (w, h)."""
    w = np.asarray(w, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    return np.minimum(0.5, (w * h) / ((w + 10.0) * (h + 10.0)))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of XYXY boxes along the last axis, broadcasting the leading ones (no +1); 0 for empty unions."""
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = (
        (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (N, 4) and (N, 4) XYXY boxes (no +1), (N,) float64; 0 for empty unions."""
    return _iou(np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4))


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of (N, 4) with every box of (M, 4), XYXY, no +1: (N, M) float64."""
    return _iou(np.asarray(a, dtype=np.float64).reshape(-1, 1, 4), np.asarray(b, dtype=np.float64).reshape(1, -1, 4))


def _l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32, copy=False)


class _Index(dict):
    """name -> image id; -1 for a name never seen (an image with no detections and no GT record)."""

    def __missing__(self, key):
        return -1


@dataclass
class DetectionTable:
    """All gallery detections above the score threshold, concatenated image by image.

    Attributes:
        names: image names, index = image id; ``index`` maps name -> id.
        offsets: (G+1,) detections of image g are rows ``offsets[g]:offsets[g+1]``.
        boxes: (M, 4) float32; scores: (M,) float32; feats: (M, D) float32 L2-normalised;
        image: (M,) int64 image id of each row.
    """

    names: List[str]
    index: Dict[str, int]
    offsets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    feats: np.ndarray
    image: np.ndarray

    @classmethod
    def build(
        cls, gallery: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str], det_thresh: float, dim: int
    ) -> "DetectionTable":
        """Args: gallery = validated ``results["gallery"]`` (see :mod:`.results`); names = every image
        name that may be looked up (protocol gallery + explicit lists), images absent from ``gallery``
        get no detections; dim = feature size D."""
        names = list(dict.fromkeys(list(names) + list(gallery)))
        index = _Index((n, i) for i, n in enumerate(names))
        boxes, scores, feats, counts = [], [], [], np.zeros(len(names), dtype=np.int64)
        for i, n in enumerate(names):
            r = gallery.get(n)
            if r is None or len(r["scores"]) == 0:
                continue
            keep = np.asarray(r["scores"]) >= det_thresh
            if not keep.any():
                continue
            boxes.append(np.asarray(r["boxes"], dtype=np.float32)[keep])
            scores.append(np.asarray(r["scores"], dtype=np.float32)[keep])
            feats.append(np.asarray(r["feats"], dtype=np.float32)[keep])
            counts[i] = int(keep.sum())
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if boxes:
            boxes_a, scores_a, feats_a = np.concatenate(boxes), np.concatenate(scores), _l2n(np.concatenate(feats))
        else:
            boxes_a = np.zeros((0, 4), np.float32)
            scores_a = np.zeros((0,), np.float32)
            feats_a = np.zeros((0, dim), np.float32)
        image = np.repeat(np.arange(len(names), dtype=np.int64), counts)
        return cls(names, index, offsets, boxes_a, scores_a, feats_a, image)

    def rows_of(self, image_ids: np.ndarray) -> np.ndarray:
        """Row indices of the detections of ``image_ids`` (in that order), vectorised."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        starts = self.offsets[image_ids]
        lens = self.offsets[image_ids + 1] - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        # arange per image without a Python loop: global arange minus the run start offsets
        run_start = np.repeat(np.cumsum(lens) - lens, lens)
        return np.repeat(starts, lens) + (np.arange(total, dtype=np.int64) - run_start)


@dataclass
class _QueryGallery:
    """One query's gallery: detection rows, GT box per positive image, and count_gt."""

    rows: np.ndarray  # (n,) detection rows in concatenation order
    gt_images: np.ndarray  # (P,) image ids whose detections can hold the one TP
    gt_boxes: np.ndarray  # (P, 4)
    count_gt: int


class _GalleryPlanner:
    """Turns a protocol query into its :class:`_QueryGallery` (rule-specific, vectorised)."""

    def __init__(self, protocol: SearchProtocol, table: DetectionTable):
        self.p, self.t = protocol, table
        if protocol.rule != "explicit":
            # protocol gallery images in gallery order, their cameras, and where each pid occurs
            self.gal_ids = np.array([table.index[n] for n in protocol.gallery], dtype=np.int64)
            self.gal_cam = np.array([g.camera for g in protocol.gallery.values()], dtype=np.int64)
            self.pid_occ: Dict[int, List[Tuple[int, np.ndarray, int]]] = {}
            for gi, g in zip(self.gal_ids, protocol.gallery.values()):
                seen = set()
                for box, pid in zip(g.boxes, g.pids):
                    pid = int(pid)
                    if pid < 0 or pid in seen:
                        continue  # first box of a pid in an image is its GT (reference: ravel()[:4])
                    seen.add(pid)
                    self.pid_occ.setdefault(pid, []).append((int(gi), box, g.camera))
            # detections of gallery-order images, with their image's camera
            self.all_rows = table.rows_of(self.gal_ids)
            cam_of_image = np.full(len(table.names), -1, dtype=np.int64)
            cam_of_image[self.gal_ids] = self.gal_cam
            self.row_image = table.image[self.all_rows]
            self.row_cam = cam_of_image[self.row_image]

    def plan(self, q) -> _QueryGallery:
        t = self.t
        if self.p.rule == "explicit":
            names = list(map(itemgetter(0), q.gallery))
            boxes = list(map(itemgetter(1), q.gallery))
            if not names:
                return _QueryGallery(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32), 0)
            ids_all = np.array(itemgetter(*names)(t.index), dtype=np.int64).reshape(-1)
            # a duplicated image is scored once, with its first entry's box; every entry with a box counts
            _, first_idx = np.unique(ids_all, return_index=True)
            first_idx.sort()
            ids = ids_all[first_idx]
            listed = [i for i, b in enumerate(boxes) if b is not None]
            listed = [i for i in listed if np.size(boxes[i]) > 0]
            count_gt = len(listed)
            is_first = np.zeros(len(names), dtype=bool)
            is_first[first_idx] = True
            gt = [(int(ids_all[i]), boxes[i]) for i in listed if is_first[i] and ids_all[i] >= 0]
            rows = t.rows_of(ids[ids >= 0])  # unknown names (-1) have no detections
        else:
            qid = t.index.get(q.image, -1)
            keep = self.row_image != qid
            occ = [
                (gi, b)
                for gi, b, cam in self.pid_occ.get(int(q.pid), [])
                if gi != qid and (self.p.rule != "other_cameras" or cam != q.camera)
            ]
            if self.p.rule == "other_cameras":
                keep &= self.row_cam != q.camera
            rows = self.all_rows[keep]
            gt = occ
            count_gt = len(occ)
        if gt:
            gt_images = np.array([g for g, _ in gt], dtype=np.int64)
            gt_boxes = np.stack([np.asarray(b, np.float32).reshape(4) for _, b in gt])
        else:
            gt_images, gt_boxes = np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
        return _QueryGallery(rows, gt_images, gt_boxes, int(count_gt))


@dataclass
class QueryScore:
    """Per-query outcome. ``rows``/``sims``/``labels``: the ranked list in decreasing similarity (stable),
    only from :func:`score_query` (None inside :func:`evaluate_search`)."""

    ap: float
    count_tp: int
    count_gt: int
    first_tp_rank: int  # 0-based rank of the best true positive, -1 if none
    rows: np.ndarray
    sims: np.ndarray
    labels: np.ndarray
    ap_pessimistic: float = 0.0  # AP / first rank when tied false positives rank before true positives
    first_tp_rank_pessimistic: int = -1
    top_tied: bool = False  # the highest similarity of the gallery is shared by several detections


def _true_positives(table: DetectionTable, g: _QueryGallery, sims_all: np.ndarray) -> np.ndarray:
    """Rows of the one true positive per GT image (most similar detection over its IoU threshold)."""
    if g.gt_images.size == 0:
        return np.zeros(0, dtype=np.int64)
    lens = table.offsets[g.gt_images + 1] - table.offsets[g.gt_images]
    cand = table.rows_of(g.gt_images)
    if cand.size == 0:
        return cand
    slot = np.repeat(np.arange(g.gt_images.size), lens)
    gtb = g.gt_boxes.astype(np.float64)
    thr = iou_threshold(gtb[:, 2] - gtb[:, 0], gtb[:, 3] - gtb[:, 1])
    ok = box_iou_rows(table.boxes[cand], gtb[slot]) >= thr[slot]
    cand, slot = cand[ok], slot[ok]
    if cand.size == 0:
        return cand
    # per image: most similar candidate, ties -> the earlier detection
    o = np.lexsort((cand, -sims_all[cand].astype(np.float64), slot))
    cs = slot[o]
    firsts = np.concatenate([[True], cs[1:] != cs[:-1]])
    return cand[o][firsts]


def _count_at_least(s: np.ndarray, thresholds: np.ndarray, strict: bool) -> np.ndarray:
    """For ascending ``thresholds`` (T,): #{i: s_i >= t} (or > t when strict) per t, in O(n log T)
    time and O(n) memory (no (T, n) comparison matrix: T can be large in a full PRW gallery)."""
    idx = np.searchsorted(thresholds, s, side="left" if strict else "right")  # thresholds below s_i
    counts = np.bincount(idx, minlength=thresholds.size + 1)
    return np.cumsum(counts[::-1])[::-1][1:]


def _score(table: DetectionTable, g: _QueryGallery, sims_all: np.ndarray, ranked: bool = False) -> QueryScore:
    """AP / top-k of one query without sorting its detections: only the (few) true positives are ranked.

    With T true positives at similarities s_t among the n gallery detections s, sklearn's AP is
    sum_t (#TP with s >= s_t) / (#detections with s >= s_t) / T (tied scores share one threshold);
    the rank of a TP is #(s > s_t) + #(s == s_t earlier in the concatenated list).

    Pessimistic rule: the j-th of the m TPs tied at s_t (j = 1..m) comes after the FPs tied with them,
    so its precision is (#TP with s > s_t + j) / (#(s > s_t) + #FP(s == s_t) + j), and the best TP's
    rank is #(s > s*) + #FP(s == s*).
    """
    tp_rows = _true_positives(table, g, sims_all)
    count_tp = int(tp_rows.size)
    if count_tp > g.count_gt:  # cannot happen with a consistent protocol
        raise AssertionError(f"{count_tp} true positives > {g.count_gt} gallery entries with the person")
    ap, first, ap_p, first_p = 0.0, -1, 0.0, -1
    s = sims_all[g.rows]
    top_tied = bool(s.size > 1 and np.count_nonzero(s == s.max()) > 1)
    if count_tp and g.count_gt:
        order = np.argsort(sims_all[tp_rows], kind="stable")
        tp_rows = tp_rows[order]
        st = sims_all[tp_rows]  # ascending
        n_ge = _count_at_least(s, st, strict=False)
        n_gt = _count_at_least(s, st, strict=True)
        tp_ge = st.size - np.searchsorted(st, st, side="left")
        ap = float(np.sum(tp_ge / n_ge)) / g.count_gt
        n_eq = n_ge - n_gt
        # the best-ranked TP is one of the most similar TPs; with exact ties, the earliest of them
        # in the concatenated list, after the tied detections that precede it
        first = int(n_gt[-1])
        if n_eq[-1] > 1:
            top = tp_rows[st == st[-1]]
            pos = int(np.flatnonzero(np.isin(g.rows, top))[0])
            first += int(np.count_nonzero(s[:pos] == st[-1]))
        # pessimistic rule: per TP (ascending st), TPs strictly above / tied, FPs tied, index j in its tie
        lo = np.searchsorted(st, st, side="left")
        hi = np.searchsorted(st, st, side="right")
        tp_above, tp_eq = st.size - hi, hi - lo
        fp_eq = n_eq - tp_eq
        j = np.arange(st.size) - lo + 1
        ap_p = float(np.sum((tp_above + j) / (n_gt + fp_eq + j))) / g.count_gt
        first_p = int(n_gt[-1] + fp_eq[-1])
    if ranked:
        order = np.argsort(-s, kind="stable")
        labels = np.isin(g.rows, tp_rows).astype(np.int8)
        return QueryScore(
            ap, count_tp, g.count_gt, first, g.rows[order], s[order], labels[order], ap_p, first_p, top_tied
        )
    return QueryScore(ap, count_tp, g.count_gt, first, None, None, None, ap_p, first_p, top_tied)


def _check_query_feats(query_feats: np.ndarray, n: int, dim: int) -> np.ndarray:
    q = np.asarray(query_feats, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] != n:
        raise ValueError(f"query features: expected shape ({n}, {dim}) (one per protocol query), got {q.shape}")
    if q.shape[1] != dim:
        raise ValueError(f"query features have size {q.shape[1]} but gallery features have size {dim}")
    bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
    if bad.size:
        raise ValueError(f"query features: {bad.size} queries have NaN/inf features (first: query {bad[0]})")
    return _l2n(q)


def evaluate_search(
    protocol: SearchProtocol,
    gallery: Mapping[str, Mapping[str, np.ndarray]],
    query_feats: np.ndarray,
    det_thresh: float = 0.5,
    topk: Sequence[int] = (1, 5, 10),
    chunk_bytes: int = 64 << 20,
    return_per_query: bool = False,
    progress: bool = False,
    tie_rule: str = "standard",
) -> Dict:
    """Score a whole protocol.

    Args:
        protocol: the test protocol (gallery rule, GT, queries in order).
        gallery: ``{image_name: {"boxes": (N, 4), "scores": (N,), "feats": (N, D)}}`` validated by
            :func:`galw_d2.evaluation.results.validate_results`; missing images have no detections.
        query_feats: (Q, D), one row per ``protocol.queries`` entry.
        det_thresh: detections with score >= this are kept.
        topk: the k of the top-k accuracies.
        chunk_bytes: memory budget of one block of the query x detection similarity matrix.
        return_per_query: also return ``"per_query"``: {"ap", "count_tp", "count_gt", "first_tp_rank"} arrays
            (of the chosen tie rule).
        tie_rule: ``"standard"`` (the published protocol: ties in gallery order) or ``"pessimistic"``
            (tied false positives first); decides the headline numbers, both are in ``"ties"``.

    Returns:
        ``{"mAP": float, "top1": ..., "top5": ..., "top10": ..., "num_queries": int,
        "num_queries_without_gt": int, "tie_rule": str, "ties": {"standard": {mAP, top1, ...},
        "pessimistic": {...}, "tied_top1_fraction", "affected_fraction", "feature_spread": float,
        "collapsed": bool, "warning": str or None}}``, fractions in [0, 1].
    """
    if tie_rule not in TIE_RULES:
        raise ValueError(f"tie_rule {tie_rule!r}: expected one of {TIE_RULES}")
    det_thresh = check_det_thresh(det_thresh)
    dim = _feature_dim(gallery, query_feats)
    # gallery images by name: the protocol's and any with results; a name listed in an explicit
    # gallery but in neither has no detections (id -1)
    table = DetectionTable.build(gallery, list(protocol.gallery), det_thresh, dim)
    qf = _check_query_feats(query_feats, len(protocol.queries), dim)
    planner = _GalleryPlanner(protocol, table)
    nq = len(protocol.queries)
    aps, aps_p = np.zeros(nq), np.zeros(nq)
    tps = np.zeros(nq, dtype=np.int64)
    gts = np.zeros(nq, dtype=np.int64)
    first = np.full(nq, -1, dtype=np.int64)
    first_p = np.full(nq, -1, dtype=np.int64)
    top_tied = np.zeros(nq, dtype=bool)
    m = max(table.feats.shape[0], 1)
    step = int(max(1, min(nq, chunk_bytes // (4 * m))))
    it = range(0, nq, step)
    if progress:
        it = tqdm(it, total=(nq + step - 1) // step, desc="search", unit="chunk")
    for s in it:
        sims_block = qf[s : s + step] @ table.feats.T  # (chunk, M)
        for j in range(sims_block.shape[0]):
            qi = s + j
            r = _score(table, planner.plan(protocol.queries[qi]), sims_block[j])
            aps[qi], tps[qi], gts[qi], first[qi] = r.ap, r.count_tp, r.count_gt, r.first_tp_rank
            aps_p[qi], first_p[qi], top_tied[qi] = r.ap_pessimistic, r.first_tp_rank_pessimistic, r.top_tied
    valid = gts > 0
    metrics = {"standard": _means(aps, first, valid, topk), "pessimistic": _means(aps_p, first_p, valid, topk)}
    out = dict(metrics[tie_rule])
    out["num_queries"] = int(valid.sum())
    out["num_queries_without_gt"] = int((~valid).sum())
    out["tie_rule"] = tie_rule
    out["ties"] = _tie_report(metrics, aps, aps_p, first, first_p, top_tied, valid, table.feats)
    if return_per_query:
        a, fr = (aps, first) if tie_rule == "standard" else (aps_p, first_p)
        out["per_query"] = {"ap": a, "count_tp": tps, "count_gt": gts, "first_tp_rank": fr}
    return out


def _means(aps: np.ndarray, first: np.ndarray, valid: np.ndarray, topk: Sequence[int]) -> Dict[str, float]:
    """mAP and top-k over the queries with ground truth (``valid``)."""
    out = {"mAP": float(aps[valid].mean()) if valid.any() else 0.0}
    for k in topk:
        hit = (first >= 0) & (first < k)
        out[f"top{k}"] = float(hit[valid].mean()) if valid.any() else 0.0
    return out


def feature_spread(feats: np.ndarray) -> float:
    """RMS distance of L2-normalised features (M, D) to their mean: ``sqrt(1 - |mean|^2)``, in [0, 1];
    0 when every feature is the same (collapsed embedding), ~1 for features spread over the sphere."""
    if len(feats) < 2:
        return float("nan")
    mu = np.asarray(feats, np.float64).mean(axis=0)
    return float(np.sqrt(max(0.0, 1.0 - float(mu @ mu))))


def _tie_report(metrics, aps, aps_p, first, first_p, top_tied, valid, feats) -> Dict:
    """The ``"ties"`` entry of :func:`evaluate_search`; logs a warning for collapsed / heavily tied embeddings."""
    n = int(valid.sum())
    affected = valid & ((first != first_p) | ~np.isclose(aps, aps_p, rtol=0, atol=1e-12))
    spread = feature_spread(feats)
    rep = {
        "standard": metrics["standard"],
        "pessimistic": metrics["pessimistic"],
        "tied_top1_fraction": float(top_tied[valid].mean()) if n else 0.0,
        "affected_fraction": float(affected.sum() / n) if n else 0.0,
        "feature_spread": spread,
        "collapsed": bool(math.isfinite(spread) and spread < COLLAPSED_SPREAD),
        "warning": None,
    }
    gaps = {k: metrics["standard"][k] - metrics["pessimistic"][k] for k in metrics["standard"]}
    worst = max(gaps, key=gaps.get)
    if rep["collapsed"] or gaps[worst] >= TIE_GAP_WARN:
        what = (
            f"embeddings look collapsed (gallery feature spread {spread:.4f} < {COLLAPSED_SPREAD}); "
            if rep["collapsed"]
            else ""
        )
        rep["warning"] = (
            f"{what}{100 * rep['affected_fraction']:.1f}% of queries depend on how tied similarities are ordered "
            f"({100 * rep['tied_top1_fraction']:.1f}% have a tied best match): standard vs pessimistic "
            + ", ".join(
                f"{k} {100 * metrics['standard'][k]:.2f}% vs {100 * metrics['pessimistic'][k]:.2f}%"
                for k in metrics["standard"]
            )
            + ". The standard numbers rank ties by gallery order; do not report them as a trained result "
            "(tie_rule='pessimistic' / --tie-rule pessimistic gives the worst-case ranking)."
        )
        logger.warning("[search] WARNING: " + rep["warning"])
    return rep


def score_query(
    protocol: SearchProtocol,
    gallery: Mapping[str, Mapping[str, np.ndarray]],
    query_feats: np.ndarray,
    query_index: int,
    det_thresh: float = 0.5,
) -> Tuple[QueryScore, DetectionTable]:
    """Score one query and return its ranked list (for inspection and the top-k figure)."""
    det_thresh = check_det_thresh(det_thresh)
    dim = _feature_dim(gallery, query_feats)
    # gallery images by name: the protocol's and any with results; a name listed in an explicit
    # gallery but in neither has no detections (id -1)
    table = DetectionTable.build(gallery, list(protocol.gallery), det_thresh, dim)
    qf = np.asarray(query_feats, dtype=np.float32)
    q = _check_query_feats(qf[query_index : query_index + 1], 1, dim)
    planner = _GalleryPlanner(protocol, table)
    r = _score(table, planner.plan(protocol.queries[query_index]), (q @ table.feats.T)[0], ranked=True)
    return r, table


def _feature_dim(gallery, query_feats) -> int:
    """Feature size D: from the gallery detections (all must agree), else from the query features."""
    dim = None
    for name, r in gallery.items():
        f = np.asarray(r["feats"])
        if f.ndim == 2 and f.shape[0] > 0:
            if dim is None:
                dim = int(f.shape[1])
            elif f.shape[1] != dim:
                raise ValueError(f"gallery image {name!r}: feature size {f.shape[1]} differs from {dim}")
    if dim is not None:
        return dim
    q = np.asarray(query_feats)
    if q.ndim == 2:
        return int(q.shape[1])
    raise ValueError(f"query features: expected a (Q, D) array, got shape {q.shape}")
