"""The saved-results file: what inference writes and ``tools/evaluate_search.py`` re-scores.

Format (a dict written with ``torch.save``, read with ``torch.load(..., weights_only=False)``;
numpy arrays and torch tensors are both accepted on load)::

    {
      "gallery": {image_name: {"boxes":  float32 (N, 4) x1y1x2y2 in original pixels,
                               "scores": float32 (N,),
                               "feats":  float32 (N, D)}},
      "queries": [{"image": image_name, "box": (4,) x1y1x2y2, "feat": float32 (D,)}, ...],
      "settings": {...}   # optional: det_thresh, query_mode, protocol, ... (informational)
    }

* ``queries`` are in protocol order (CUHK-SYSU: the Query order of the TestG*.mat files; PRW: the line
  order of query_info.txt).
* Every gallery image of the protocol has an entry; an image without detections has ``N = 0``
  (feats (0, D) or (0,)). A missing entry is an error (a partial results file would otherwise score a
  believable but wrong mAP) unless ``allow_partial`` is given, which scores missing images as images
  without detections and reports how many were missing.
* ``image_name`` is the bare file name as in the annotations (``s15048.jpg``, ``c1s1_000151.jpg``),
  never a path.
* Detections are stored unthresholded (the score threshold is applied when scoring).

Validation (:func:`validate_results`) raises ``ValueError`` naming the file, the image / query, the
field and the first offending values for: wrong shapes, N mismatch between boxes/scores/feats,
NaN/inf anywhere, scores outside [0, 1], boxes with x2 < x1 or y2 < y1, path-style image keys, feature sizes that differ
between images or between gallery and queries, and (with a protocol, :func:`check_against_protocol`)
an empty gallery, gallery images the protocol does not know, protocol gallery images without an
entry, and a query count or query image that does not match the protocol. :func:`load_results` also
names the path of an empty, truncated or non-``torch.save`` file.
"""

import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ..utils.io import torch_load_file

__all__ = ["build_results", "save_results", "load_results", "validate_results", "check_against_protocol"]

_SHOW = 5  # how many offending names / values an error message lists


def _np(x, dtype=np.float32) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def build_results(
    gallery: Mapping[str, Mapping[str, Any]],
    queries: List[Mapping[str, Any]],
    settings: Optional[Mapping[str, Any]] = None,
) -> Dict:
    """Assemble (and validate) a results dict from per-image detections and per-query features."""
    res = {"gallery": dict(gallery), "queries": list(queries)}
    if settings is not None:
        res["settings"] = dict(settings)
    return validate_results(res)


def _inverted(boxes: np.ndarray) -> np.ndarray:
    """(N,) bool: x2 < x1 or y2 < y1 (zero width or height is allowed: a degenerate but valid box)."""
    return (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])


def _fmt_box(b) -> str:
    return "[" + ", ".join(f"{float(v):.1f}" for v in b) + "]"


def validate_results(results: Mapping, protocol=None, source: str = "results", allow_partial: bool = False) -> Dict:
    """Check a results dict and return a normalised copy (numpy float32, feats (N, D)).

    Args:
        results: see the module docstring.
        protocol: optional :class:`~galw_d2.data.protocol.SearchProtocol` to check the gallery and the
            queries against (:func:`check_against_protocol`).
        source: name used in error messages (e.g. the file path).
        allow_partial: with a protocol, accept protocol gallery images without an entry (scored as
            images without detections).

    Returns:
        ``{"gallery", "queries"[, "settings"]}``; with a protocol also ``"missing_gallery_images"``
        (int, > 0 only with ``allow_partial``).
    """
    if not isinstance(results, Mapping) or "gallery" not in results or "queries" not in results:
        raise ValueError(
            f"{source}: expected a dict with keys 'gallery' and 'queries', got "
            f"{type(results).__name__} with keys {list(results) if isinstance(results, Mapping) else '-'}"
        )
    gal_in, qs_in = results["gallery"], results["queries"]
    if not isinstance(gal_in, Mapping):
        raise ValueError(f"{source}: 'gallery' must be a dict image_name -> detections, got {type(gal_in).__name__}")
    dim = None
    dim_from = None
    gallery = {}
    for name, r in gal_in.items():
        where = f"{source}: gallery image {name!r}"
        if not isinstance(name, str) or "/" in name or "\\" in name:
            bare = os.path.basename(str(name).replace("\\", "/"))
            raise ValueError(
                f"{where}: image keys must be the bare file name as in the annotations "
                f"({bare!r}), not a path or a {type(name).__name__}"
            )
        if not isinstance(r, Mapping) or not {"boxes", "scores", "feats"} <= set(r):
            raise ValueError(f"{where}: expected keys 'boxes', 'scores', 'feats'")
        boxes, scores, feats = _np(r["boxes"]), _np(r["scores"]), _np(r["feats"])
        n = scores.reshape(-1).size
        if boxes.size == 0 and n == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}: 'boxes' must be (N, 4) x1y1x2y2, got shape {boxes.shape}")
        scores = scores.reshape(-1)
        if boxes.shape[0] != n:
            raise ValueError(f"{where}: {boxes.shape[0]} boxes but {n} scores")
        if n == 0 and feats.size == 0:
            feats = feats.reshape(0, feats.shape[-1] if feats.ndim == 2 else 0)
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ValueError(f"{where}: 'feats' must be (N, D) with N = {n}, got shape {feats.shape}")
        if n:
            if dim is None:
                dim, dim_from = feats.shape[1], where
            elif feats.shape[1] != dim:
                raise ValueError(f"{where}: feature size {feats.shape[1]} differs from {dim} ({dim_from})")
            for field, arr in (("boxes", boxes), ("scores", scores), ("feats", feats)):
                bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
                if bad.any():
                    raise ValueError(
                        f"{where}: '{field}' has NaN/inf in {int(bad.sum())} of {n} detections "
                        f"(first: detection {int(np.flatnonzero(bad)[0])})"
                    )
            # (a float32 softmax may round a hair past 1)
            out_of_range = np.flatnonzero((scores < -1e-6) | (scores > 1 + 1e-6))
            if out_of_range.size:
                i = int(out_of_range[0])
                raise ValueError(
                    f"{where}: 'scores' must be detection probabilities in [0, 1]; {out_of_range.size} "
                    f"of {n} are not (first: detection {i}, {float(scores[i])}); logits?"
                )
            inv = np.flatnonzero(_inverted(boxes))
            if inv.size:
                raise ValueError(
                    f"{where}: 'boxes' has x2 < x1 or y2 < y1 in {inv.size} of {n} detections (first: "
                    f"detection {int(inv[0])}, {_fmt_box(boxes[inv[0]])}); expected x1y1x2y2 pixels"
                )
        gallery[str(name)] = {"boxes": boxes, "scores": scores, "feats": feats}
    if not isinstance(qs_in, (list, tuple)):
        raise ValueError(f"{source}: 'queries' must be a list, got {type(qs_in).__name__}")
    queries = []
    for i, q in enumerate(qs_in):
        where = f"{source}: query {i}"
        if not isinstance(q, Mapping) or not {"image", "box", "feat"} <= set(q):
            raise ValueError(f"{where}: expected keys 'image', 'box', 'feat'")
        box, feat = _np(q["box"]).reshape(-1), _np(q["feat"]).reshape(-1)
        if box.size != 4:
            raise ValueError(f"{where} ({q['image']}): 'box' must have 4 values x1y1x2y2, got {box.size}")
        if dim is None:
            dim, dim_from = feat.size, where
        elif feat.size != dim:
            raise ValueError(f"{where} ({q['image']}): feature size {feat.size} differs from {dim} ({dim_from})")
        if not np.isfinite(feat).all() or not np.isfinite(box).all():
            raise ValueError(f"{where} ({q['image']}): 'feat' or 'box' has NaN/inf")
        if _inverted(box.reshape(1, 4))[0]:
            raise ValueError(
                f"{where} ({q['image']}): 'box' has x2 < x1 or y2 < y1 ({_fmt_box(box)}); expected x1y1x2y2 pixels"
            )
        queries.append({"image": str(q["image"]), "box": box, "feat": feat})
    dim = dim or 0
    for r in gallery.values():  # empty images get (0, D)
        if r["feats"].shape[0] == 0:
            r["feats"] = np.zeros((0, dim), np.float32)
    out = {"gallery": gallery, "queries": queries}
    if "settings" in results:
        out["settings"] = dict(results["settings"])
    if protocol is not None:
        out["missing_gallery_images"] = check_against_protocol(out, protocol, source, allow_partial=allow_partial)
    return out


def _names(names) -> str:
    names = list(names)
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return ", ".join(repr(n) for n in names[:_SHOW]) + more


def check_against_protocol(results: Mapping, protocol, source: str = "results", allow_partial: bool = False) -> int:
    """Raise if the results do not cover ``protocol``.

    Checks: the gallery is not empty; every gallery image is known to the protocol (its gallery split,
    or an explicit query list); every protocol gallery image has an entry (unless ``allow_partial``);
    the queries follow ``protocol.queries`` (count and image names).

    Returns:
        the number of protocol gallery images without an entry (0 unless ``allow_partial``).
    """
    gal = results["gallery"]
    pname = f"{protocol.dataset}/{protocol.name}"
    required = dict.fromkeys(protocol.gallery)
    if protocol.rule == "explicit":
        for q in protocol.queries:
            required.update(dict.fromkeys(n for n, _ in q.gallery))
    if not gal:
        raise ValueError(
            f"{source}: 'gallery' is empty, but protocol {pname} has {len(required)} gallery images "
            f"(every gallery image needs an entry; N = 0 for an image without detections)"
        )
    known = set(required) | {q.image for q in protocol.queries}
    unknown = [n for n in gal if n not in known]
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} gallery images are not in protocol {pname} (e.g. "
            f"{_names(unknown)}); results of another dataset or split? (protocol images look like "
            f"{_names(list(required)[:2])})"
        )
    missing = [n for n in required if n not in gal]
    if missing and not allow_partial:
        raise ValueError(
            f"{source}: {len(missing)} of {len(required)} protocol gallery images have no entry "
            f"(e.g. {_names(missing)}); an incomplete results file scores a wrong mAP. Give an image "
            f"without detections an entry with N = 0, or pass allow_partial (--allow-partial) to score "
            f"missing images as images without detections"
        )
    qs = results["queries"]
    if len(qs) != len(protocol.queries):
        raise ValueError(
            f"{source}: {len(qs)} queries but protocol {protocol.dataset}/{protocol.name} has "
            f"{len(protocol.queries)} (queries must be in protocol order)"
        )
    for i, (q, pq) in enumerate(zip(qs, protocol.queries)):
        if q["image"] != pq.image:
            raise ValueError(
                f"{source}: query {i} is in image {q['image']!r} but protocol query {i} is in "
                f"{pq.image!r} (queries must be in protocol order)"
            )
    return len(missing)


def save_results(path: str, results: Mapping) -> str:
    """Validate and ``torch.save`` a results dict (numpy arrays); returns the path."""
    import torch

    res = validate_results(results, source=path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    torch.save(res, tmp)
    os.replace(tmp, path)
    return path


def load_results(path: str, protocol=None, allow_partial: bool = False) -> Dict:
    """``torch.load`` a results file and validate it (optionally against a protocol, see
    :func:`validate_results`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"results file {path} does not exist (write one with PersonSearchEvaluator "
            f"SAVE_RESULTS or galw_d2.evaluation.save_results)"
        )
    res = torch_load_file(path, "results file")
    return validate_results(res, protocol=protocol, source=path, allow_partial=allow_partial)
