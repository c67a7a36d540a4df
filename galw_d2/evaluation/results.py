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
* A gallery image absent from ``"gallery"`` has no detections; ``N = 0`` is allowed (feats (0, D) or (0,)).
* ``image_name`` is the bare file name as in the annotations (``s15048.jpg``, ``c1s1_000151.jpg``).
* Detections are stored unthresholded (the score threshold is applied when scoring).

Validation (:func:`validate_results`) raises ``ValueError`` naming the image / query and field for:
wrong shapes, N mismatch between boxes/scores/feats, NaN/inf anywhere, feature sizes that differ
between images or between gallery and queries, and (with a protocol) a query count or query image
that does not match the protocol.
"""
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

__all__ = ["build_results", "save_results", "load_results", "validate_results"]


def _np(x, dtype=np.float32) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def build_results(gallery: Mapping[str, Mapping[str, Any]], queries: List[Mapping[str, Any]],
                  settings: Optional[Mapping[str, Any]] = None) -> Dict:
    """Assemble (and validate) a results dict from per-image detections and per-query features."""
    res = {"gallery": dict(gallery), "queries": list(queries)}
    if settings is not None:
        res["settings"] = dict(settings)
    return validate_results(res)


def validate_results(results: Mapping, protocol=None, source: str = "results") -> Dict:
    """Check a results dict and return a normalised copy (numpy float32, feats (N, D)).

    Args:
        results: see the module docstring.
        protocol: optional :class:`~galw_d2.data.protocol.SearchProtocol` to check the queries against.
        source: name used in error messages (e.g. the file path).
    """
    if not isinstance(results, Mapping) or "gallery" not in results or "queries" not in results:
        raise ValueError(f"{source}: expected a dict with keys 'gallery' and 'queries', got "
                         f"{type(results).__name__} with keys {list(results) if isinstance(results, Mapping) else '-'}")
    gal_in, qs_in = results["gallery"], results["queries"]
    if not isinstance(gal_in, Mapping):
        raise ValueError(f"{source}: 'gallery' must be a dict image_name -> detections, got {type(gal_in).__name__}")
    dim = None
    dim_from = None
    gallery = {}
    for name, r in gal_in.items():
        where = f"{source}: gallery image {name!r}"
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
                    raise ValueError(f"{where}: '{field}' has NaN/inf in {int(bad.sum())} of {n} detections "
                                     f"(first: detection {int(np.flatnonzero(bad)[0])})")
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
        queries.append({"image": str(q["image"]), "box": box, "feat": feat})
    dim = dim or 0
    for r in gallery.values():  # empty images get (0, D)
        if r["feats"].shape[0] == 0:
            r["feats"] = np.zeros((0, dim), np.float32)
    out = {"gallery": gallery, "queries": queries}
    if "settings" in results:
        out["settings"] = dict(results["settings"])
    if protocol is not None:
        check_against_protocol(out, protocol, source)
    return out


def check_against_protocol(results: Mapping, protocol, source: str = "results") -> None:
    """Raise if the queries do not follow ``protocol.queries`` (count and image names)."""
    qs = results["queries"]
    if len(qs) != len(protocol.queries):
        raise ValueError(f"{source}: {len(qs)} queries but protocol {protocol.dataset}/{protocol.name} has "
                         f"{len(protocol.queries)} (queries must be in protocol order)")
    for i, (q, pq) in enumerate(zip(qs, protocol.queries)):
        if q["image"] != pq.image:
            raise ValueError(f"{source}: query {i} is in image {q['image']!r} but protocol query {i} is in "
                             f"{pq.image!r} (queries must be in protocol order)")


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


def load_results(path: str, protocol=None) -> Dict:
    """``torch.load`` a results file and validate it (optionally against a protocol)."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"results file {path} does not exist (write one with PersonSearchEvaluator "
                                f"SAVE_RESULTS or galw_d2.evaluation.save_results)")
    try:
        res = torch.load(path, map_location="cpu", weights_only=False)
    except TypeError:  # torch without weights_only
        res = torch.load(path, map_location="cpu")
    return validate_results(res, protocol=protocol, source=path)
