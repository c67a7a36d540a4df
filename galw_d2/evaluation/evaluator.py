"""detectron2 ``DatasetEvaluator`` for person search on a ``<prefix>_test`` dataset.

Inputs are the test mapper's outputs (docs/DESIGN.md): gallery records (``image_name``) and query
records (``is_query``, ``query_index``); outputs are the model's: ``instances`` (pred_boxes in
original pixels, scores, embeddings (N, D)) and, for records with ``embed_boxes``, ``box_embeddings``.

Query feature (``query_mode``):
  * ``"box"``: the embedding of the query box itself (``box_embeddings``; NAE / SeqNet / OIM).
  * ``"best_iou"``: the embedding of the detection in the query image with the highest IoU with the
    query box, over all its detections (no score threshold; the AlignPS way). A query image without
    any overlapping detection falls back to the box embedding (counted in ``query-fallbacks``).

Upper-bound mode: the mapper passes the GT boxes of every gallery image as ``embed_boxes``; their
``box_embeddings`` become the detections (score 1), so the search numbers measure re-id alone.

``evaluate()`` returns (on the main process; ``{}`` elsewhere)::

    {"search": {"mAP", "top1", "top5", "top10", "det-thresh", "gallery-size", "cross-camera",
                "query-mode-best-iou", "upper-bound", "num-queries", "query-fallbacks",
                "tie-rule-pessimistic", "tied-top1-fraction", "tie-affected-fraction", "feature-spread",
                "embeddings-collapsed", "mAP-pessimistic-ties", ... (the other tie rule's metrics)},
     "detection": {"AP", "recall", "det-thresh"}}        # no "detection" in upper-bound mode

Fractions in [0, 1]. Every value is a float (EvalHook requirement); keys containing "-" are the
settings, which ``print_csv_format`` leaves out of its table. The full settings (with the protocol
name) are in ``self.settings``, logged, and written into the saved-results file.
"""

import copy
import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .results import save_results, validate_results
from .scoring import evaluate_results
from .search import TIE_RULES, check_det_thresh, pairwise_iou

__all__ = ["PersonSearchEvaluator", "evaluate_results", "QUERY_MODES"]

QUERY_MODES = ("box", "best_iou")
logger = logging.getLogger(__name__)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


class PersonSearchEvaluator(DatasetEvaluator):
    """Person-search evaluator (gallery detections + query features -> SPEC §5 metrics).

    Args:
        dataset_name: a ``<prefix>_test`` dataset (its protocol comes from
            ``galw_d2.data.get_search_protocol``).
        cfg: optional config; reads ``TEST.PERSON_SEARCH.*`` (keyword arguments override it).
        output_dir: where the saved-results file goes (``search_results.pth``) when ``save_results``.
        distributed: gather the predictions of every rank on the main process.
        det_thresh, query_mode, gallery_size, cross_camera, subset, upper_bound, save_results, tie_rule:
            the settings (see ``add_evaluation_config``); ``det_thresh`` must be finite and in [0, 1).
        protocol: a ready :class:`~galw_d2.data.protocol.SearchProtocol` (skips the dataset lookup).
    """

    def __init__(
        self,
        dataset_name: str,
        cfg=None,
        output_dir: Optional[str] = None,
        *,
        distributed: bool = True,
        det_thresh: Optional[float] = None,
        query_mode: Optional[str] = None,
        gallery_size: Optional[int] = None,
        cross_camera: Optional[bool] = None,
        subset: Optional[str] = None,
        upper_bound: Optional[bool] = None,
        save_results: Optional[bool] = None,
        protocol=None,
        tie_rule: Optional[str] = None,
    ):
        ps = cfg.TEST.PERSON_SEARCH if cfg is not None else None

        def pick(value, key, default):
            if value is not None:
                return value
            return getattr(ps, key) if ps is not None and hasattr(ps, key) else default

        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self.det_thresh = check_det_thresh(pick(det_thresh, "DET_THRESH", 0.5))
        self.query_mode = str(pick(query_mode, "QUERY_MODE", "box"))
        self.gallery_size = int(pick(gallery_size, "GALLERY_SIZE", 100))
        self.cross_camera = bool(pick(cross_camera, "CROSS_CAMERA", False))
        self.subset = pick(subset, "SUBSET", "") or None
        self.upper_bound = bool(pick(upper_bound, "UPPER_BOUND", False))
        self.save = bool(pick(save_results, "SAVE_RESULTS", False))
        self.tie_rule = str(pick(tie_rule, "TIE_RULE", "standard"))
        if self.tie_rule not in TIE_RULES:
            raise ValueError(f"PersonSearchEvaluator: tie_rule {self.tie_rule!r}, expected one of {TIE_RULES}")
        if self.query_mode not in QUERY_MODES:
            raise ValueError(f"PersonSearchEvaluator: query_mode {self.query_mode!r}, expected one of {QUERY_MODES}")
        self._protocol = protocol
        self.settings: Dict = {}
        self.reset()

    # ------------------------------------------------------------------ collection
    def reset(self):
        self._gallery: Dict[str, Dict[str, np.ndarray]] = {}
        self._queries: Dict[int, Dict] = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            name = inp.get("image_name") or os.path.basename(inp["file_name"])
            inst = out["instances"].to("cpu")
            if not inst.has("embeddings") and not self.upper_bound:
                raise KeyError(
                    f"PersonSearchEvaluator: model output for {name} has no 'embeddings' field "
                    f"(got {list(inst.get_fields())})"
                )
            det = {
                "boxes": _np(inst.pred_boxes.tensor).reshape(-1, 4),
                "scores": _np(inst.scores).reshape(-1),
                "feats": _np(inst.embeddings) if inst.has("embeddings") else np.zeros((len(inst), 0), np.float32),
            }
            box_emb = out.get("box_embeddings")
            box_emb = None if box_emb is None else _np(box_emb)
            embed_boxes = inp.get("embed_boxes")
            embed_boxes = None if embed_boxes is None else _np(embed_boxes).reshape(-1, 4)
            if inp.get("is_query", False):
                self._queries[int(inp["query_index"])] = {
                    "image": name,
                    "det": det,
                    "embed_boxes": embed_boxes,
                    "box_embeddings": box_emb,
                }
            else:
                if self.upper_bound:
                    if box_emb is None or embed_boxes is None:
                        raise KeyError(
                            f"PersonSearchEvaluator (upper bound): gallery record {name} needs "
                            f"'embed_boxes' (input) and 'box_embeddings' (output)"
                        )
                    det = {
                        "boxes": embed_boxes,
                        "scores": np.ones(len(embed_boxes), np.float32),
                        "feats": box_emb.reshape(len(embed_boxes), -1),
                    }
                self._gallery[name] = det

    # ------------------------------------------------------------------ scoring
    def _get_protocol(self):
        if self._protocol is None:
            from galw_d2.data import get_search_protocol

            self._protocol = get_search_protocol(
                self._dataset_name, gallery_size=self.gallery_size, subset=self.subset, cross_camera=self.cross_camera
            )
        return self._protocol

    def _query_feature(self, i: int, pq, rec) -> (np.ndarray, bool):
        """(feature, fell_back) of protocol query ``i``."""
        qbox = np.asarray(pq.box, np.float64).reshape(1, 4)
        emb, eb = rec["box_embeddings"], rec["embed_boxes"]
        box_feat = None
        if emb is not None and len(emb):
            emb = emb.reshape(len(emb), -1)
            # the row of embed_boxes that is the query box (the mapper may add other boxes)
            row = 0 if eb is None or len(eb) != len(emb) else int(pairwise_iou(qbox, eb)[0].argmax())
            box_feat = emb[row]
        if self.query_mode == "best_iou":
            d = rec["det"]
            if len(d["boxes"]) and d["feats"].shape[-1] > 0:
                ious = pairwise_iou(qbox, d["boxes"])[0]
                if ious.max() > 0:
                    return d["feats"][int(ious.argmax())], False
            if box_feat is None:
                raise ValueError(
                    f"PersonSearchEvaluator: query {i} ({pq.image}): no detection overlaps the "
                    f"query box and the model returned no 'box_embeddings' to fall back to"
                )
            return box_feat, True
        if box_feat is None:
            raise ValueError(
                f"PersonSearchEvaluator: query {i} ({pq.image}): query_mode 'box' needs "
                f"'box_embeddings' in the model output (the input needs 'embed_boxes')"
            )
        return box_feat, False

    def build_results(self) -> Dict:
        """The saved-results dict from what was collected on this process (after gathering)."""
        protocol = self._get_protocol()
        missing = [i for i in range(len(protocol.queries)) if i not in self._queries]
        if missing:
            raise ValueError(
                f"PersonSearchEvaluator: {len(missing)} of {len(protocol.queries)} protocol queries "
                f"were not processed (first: query {missing[0]}, {protocol.queries[missing[0]].image}); "
                f"evaluate on the '<prefix>_test' dataset"
            )
        queries, fallbacks = [], 0
        for i, pq in enumerate(protocol.queries):
            rec = self._queries[i]
            if rec["image"] != pq.image:
                raise ValueError(
                    f"PersonSearchEvaluator: record with query_index {i} is image {rec['image']} but "
                    f"protocol query {i} is in {pq.image}"
                )
            f, fb = self._query_feature(i, pq, rec)
            fallbacks += int(fb)
            queries.append({"image": pq.image, "box": np.asarray(pq.box, np.float32), "feat": f})
        self._fallbacks = fallbacks
        return validate_results(
            {"gallery": self._gallery, "queries": queries, "settings": self._settings()},
            source=f"PersonSearchEvaluator({self._dataset_name})",
        )

    def _settings(self) -> Dict:
        p = self._protocol
        return {
            "dataset": self._dataset_name,
            "protocol": f"{p.dataset}/{p.name}" if p is not None else None,
            "det_thresh": self.det_thresh,
            "query_mode": self.query_mode,
            "gallery_size": self.gallery_size,
            "cross_camera": self.cross_camera,
            "subset": self.subset,
            "upper_bound": self.upper_bound,
            "tie_rule": self.tie_rule,
        }

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            gal = comm.gather(self._gallery, dst=0)
            qs = comm.gather(self._queries, dst=0)
            if not comm.is_main_process():
                return {}
            self._gallery = dict(itertools.chain.from_iterable(g.items() for g in gal))
            self._queries = dict(itertools.chain.from_iterable(q.items() for q in qs))
        if not self._gallery and not self._queries:
            logger.warning("[PersonSearchEvaluator] did not receive valid predictions.")
            return {}
        protocol = self._get_protocol()
        results = self.build_results()
        self.settings = dict(results["settings"], query_fallbacks=self._fallbacks)
        results["settings"] = self.settings
        if self.save and self._output_dir:
            path = os.path.join(self._output_dir, "search_results.pth")
            save_results(path, results)
            logger.info(f"[PersonSearchEvaluator] saved results to {path}")
        scores = evaluate_results(
            protocol,
            results,
            det_thresh=self.det_thresh,
            detection=not self.upper_bound,
            tie_rule=self.tie_rule,
            source=f"PersonSearchEvaluator({self._dataset_name})",
        )
        s = scores["search"]
        ties = s["ties"]
        search = OrderedDict((k, float(s[k])) for k in ("mAP", "top1", "top5", "top10"))
        search.update(
            {
                "det-thresh": self.det_thresh,
                "gallery-size": float(self.gallery_size),
                "cross-camera": float(self.cross_camera),
                "query-mode-best-iou": float(self.query_mode == "best_iou"),
                "upper-bound": float(self.upper_bound),
                "num-queries": float(s["num_queries"]),
                "query-fallbacks": float(self._fallbacks),
                # tie / collapse diagnostics (docs/evaluation.md): 1.0 = collapsed embeddings
                "tie-rule-pessimistic": float(self.tie_rule == "pessimistic"),
                "tied-top1-fraction": float(ties["tied_top1_fraction"]),
                "tie-affected-fraction": float(ties["affected_fraction"]),
                "feature-spread": float(ties["feature_spread"]),
                "embeddings-collapsed": float(ties["collapsed"]),
            }
        )
        other = "pessimistic" if self.tie_rule == "standard" else "standard"
        for k in ("mAP", "top1", "top5", "top10"):
            search[f"{k}-{other}-ties"] = float(ties[other][k])
        out = OrderedDict(search=search)
        if "detection" in scores:
            d = scores["detection"]
            out["detection"] = OrderedDict(AP=float(d["AP"]), recall=float(d["recall"]))
            out["detection"]["det-thresh"] = self.det_thresh
        logger.info(f"[PersonSearchEvaluator] settings: {self.settings}")
        if ties["warning"]:
            logger.warning(f"[PersonSearchEvaluator] {self._dataset_name}: {ties['warning']}")
        if s["num_queries_without_gt"]:
            logger.warning(
                f"[PersonSearchEvaluator] {s['num_queries_without_gt']} queries have no gallery image "
                f"containing their person and were left out"
            )
        return copy.deepcopy(out)
