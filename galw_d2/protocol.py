"""Person-search test protocols as plain data (no detectron2): what the evaluator scores against.

A protocol is built by a dataset loader (CUHK-SYSU TestG{N}.mat, PRW query_info.txt, SynthPS in
either layout) and consumed by :mod:`galw_d2.evaluation`. Boxes are float32 XYXY in original pixels.

Gallery of a query (``SearchProtocol.rule``):
  * ``"explicit"``: the query's own list ``SearchQuery.gallery`` of (image name, box of the query
    person in that image or None), in file order, duplicates kept (CUHK-SYSU TestG{N}). A duplicated
    image is scored once, but each listed entry containing the person counts towards recall.
  * ``"all_but_query"``: every image of ``SearchProtocol.gallery`` except the query's own image
    (PRW standard, CUHK-SYSU full test set). Ground truth = boxes with ``pid == query.pid``.
  * ``"other_cameras"``: like ``all_but_query`` restricted to ``camera != query.camera`` (PRW
    cross-camera).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["GalleryImage", "SearchQuery", "SearchProtocol", "GALLERY_RULES"]

GALLERY_RULES = ("explicit", "all_but_query", "other_cameras")


@dataclass
class GalleryImage:
    """Ground truth of one gallery image.

    Attributes:
        name: bare file name as in the annotations (``s15048.jpg``, ``c1s1_000151.jpg``).
        boxes: (K, 4) float32 XYXY of every annotated person.
        pids: (K,) int64 person ids; -1 = unlabeled / unknown.
        camera: camera id (PRW, SynthPS-PRW), -1 when the dataset has none.
    """

    name: str
    boxes: np.ndarray
    pids: np.ndarray
    camera: int = -1

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.pids = np.asarray(self.pids, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.pids):
            raise ValueError(f"gallery image {self.name}: {len(self.boxes)} boxes but {len(self.pids)} pids")


@dataclass
class SearchQuery:
    """One query: a person box in one image.

    Attributes:
        image: bare file name of the query image.
        box: (4,) float32 XYXY of the query person.
        pid: identity of the query person (same id space as ``GalleryImage.pids``).
        camera: camera id, -1 when the dataset has none.
        gallery: for rule "explicit" only: [(image name, (4,) box or None), ...].
        info: extra per-query fields (e.g. CUHK-SYSU ``ishard``, subset membership).
    """

    image: str
    box: np.ndarray
    pid: int
    camera: int = -1
    gallery: Optional[List[Tuple[str, Optional[np.ndarray]]]] = None
    info: Dict = field(default_factory=dict)

    def __post_init__(self):
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)


@dataclass
class SearchProtocol:
    """A complete test protocol.

    Attributes:
        dataset: "cuhk_sysu" or "prw" (the layout it came from).
        name: protocol name, e.g. "TestG100", "TestG-1" (full set), "Occlusion", "standard", "cross_camera".
        rule: one of :data:`GALLERY_RULES`.
        gallery: every gallery image by name (order = the dataset's gallery split order).
        queries: in protocol order (TestG*.mat Query order; query_info.txt line order).
    """

    dataset: str
    name: str
    rule: str
    gallery: Dict[str, GalleryImage]
    queries: List[SearchQuery]

    def __post_init__(self):
        if self.rule not in GALLERY_RULES:
            raise ValueError(f"protocol {self.name}: rule {self.rule!r}, expected one of {GALLERY_RULES}")
        if self.rule == "explicit":
            missing = [i for i, q in enumerate(self.queries) if q.gallery is None]
            if missing:
                raise ValueError(f"protocol {self.name}: rule 'explicit' but query {missing[0]} has no gallery list")
