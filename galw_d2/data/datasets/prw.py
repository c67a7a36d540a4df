"""PRW (Zheng et al., CVPR 2017) from its official files (SPEC §4).

Splits: ``train`` (frame_train.mat), ``gallery`` (frame_test.mat), ``query`` (query_info.txt, one
record per line, in line order). Protocols: "standard" (every gallery frame but the query's own,
rule "all_but_query") and "cross_camera" (rule "other_cameras").

Files:
  * ``frame_train.mat`` ``img_index_train`` / ``frame_test.mat`` ``img_index_test``: cell arrays of
    frame names without extension (``c1s1_000151``).
  * ``annotations/<frame>.jpg.mat``: ``box_new`` (else ``anno_file``, else ``anno_previous``), one row
    ``[id, x, y, w, h]`` per person; id -2 = unlabeled; a few coordinates are negative.
  * ``query_info.txt``: lines ``pid x y w h imname`` (imname without extension), CRLF line ends.
Camera = the number after the leading ``c`` of the frame name.

Conventions here: boxes become XYXY under ``box_convention`` (:func:`.common.convert_boxes`):
"standard" (default, the published protocol) clips the annotation rows' x, y, w, h at 0 *before*
x2 = x + w (a box with x < 0 is shifted, not cropped) and truncates to integers, and converts the
query boxes first, truncates, then clips at 0; "geometric" converts in floats and clips at 0.
Boxes of non-positive size after the conversion are dropped (counted in a warning); train ids are
remapped to 0..K-1 in ascending order of the original ids (PRW: 482 ids + id 932 -> K = 483);
gallery / query keep the original ids; unlabeled = -1 everywhere.
"""
from tqdm import tqdm
import copy
import hashlib
import logging
import os
import re
from typing import Dict, List

import numpy as np

from ..protocol import GalleryImage, SearchProtocol, SearchQuery
from .common import (
    DatasetFormatError,
    DatasetNotFoundError,
    cached_parse,
    check_box_convention,
    convert_boxes,
    load_mat,
    mat_str_list,
    read_image_sizes,
    require_file,
    split_records,
)

logger = logging.getLogger(__name__)

__all__ = ["load_prw", "load_prw_protocol", "prw_camera", "PRW_LAYOUT"]

PRW_LAYOUT = """\
  <root>/frames/c{cam}s{seq}_{frame}.jpg     the frames
  <root>/annotations/<frame>.jpg.mat         box_new (or anno_file / anno_previous): rows [id, x, y, w, h]
  <root>/frame_train.mat                     img_index_train: training frame names
  <root>/frame_test.mat                      img_index_test: test (gallery) frame names
  <root>/query_info.txt                      lines "pid x y w h imname"
(PRW is distributed by its authors; see datasets/README.md.)"""

_BOX_KEYS = ("box_new", "anno_file", "anno_previous")
_UNLABELED = (-2, -1)


def prw_camera(name: str) -> int:
    """Camera id of a PRW frame name (``c3s2_012345.jpg`` -> 3)."""
    m = re.match(r"c(\d+)", os.path.basename(name))
    if not m:
        raise DatasetFormatError(f"PRW frame name {name!r}: expected 'c<camera>s<sequence>_<frame>'")
    return int(m.group(1))


def _jpg(name: str) -> str:
    return name if name.lower().endswith((".jpg", ".jpeg", ".png")) else name + ".jpg"


def _frames(root, split):
    fname, key = ("frame_train.mat", "img_index_train") if split == "train" else ("frame_test.mat", "img_index_test")
    path = require_file(os.path.join(root, fname), "PRW", PRW_LAYOUT)
    return [_jpg(n) for n in mat_str_list(load_mat(path, [key], PRW_LAYOUT)["value"], f"{path}: {key}")]


def _parse_annotation(path, convention):
    """(ids (K,) int64, boxes (K, 4) float64 XYXY under ``convention``, number dropped for size)."""
    mat = load_mat(path, _BOX_KEYS, PRW_LAYOUT)
    arr = mat["value"]
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.size == 1:
        arr = arr.ravel()[0]
    try:
        arr = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{path}: {mat['key']} must be a numeric K x 5 matrix [id, x, y, w, h]") from None
    if arr.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4)), 0
    if arr.ndim != 2 or arr.shape[1] != 5:
        if arr.size == 5:
            arr = arr.reshape(1, 5)
        else:
            raise DatasetFormatError(f"{path}: {mat['key']} has shape {arr.shape}, expected K x 5 rows [id, x, y, w, h]")
    if not np.all(np.isfinite(arr)):
        raise DatasetFormatError(f"{path}: {mat['key']} contains NaN or infinite values")
    ids = arr[:, 0].astype(np.int64)
    bad = (ids < 0) & ~np.isin(ids, _UNLABELED)
    if bad.any():
        raise DatasetFormatError(f"{path}: person id {int(ids[bad][0])} out of range (ids are >= 0, -2 = unlabeled)")
    ids[ids < 0] = -1
    boxes = convert_boxes(arr[:, 1:], convention, "prw_annotation")
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return ids[keep], boxes[keep], int((~keep).sum())


def _parse_queries(root, convention):
    path = require_file(os.path.join(root, "query_info.txt"), "PRW", PRW_LAYOUT)
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8").splitlines()  # CRLF-safe
    out = []
    for ln, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DatasetFormatError(f"{path}:{ln}: expected 'pid x y w h imname', got {line.strip()!r}")
        try:
            pid = int(float(parts[0]))
            x, y, w, h = (float(v) for v in parts[1:5])
        except ValueError:
            raise DatasetFormatError(f"{path}:{ln}: expected numbers in 'pid x y w h imname', got {line.strip()!r}") from None
        if pid < 0:
            raise DatasetFormatError(f"{path}:{ln}: query person id {pid} (queries must be labeled persons)")
        box = convert_boxes([x, y, w, h], convention, "prw_query")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DatasetFormatError(f"{path}:{ln}: query box {[x, y, w, h]} has non-positive size after the "
                                     f"{convention!r} box conversion ({box.tolist()})")
        out.append({"line": ln, "pid": pid, "box": box, "image": _jpg(parts[5])})
    return out


def _build_index(root, convention):
    frames = {s: _frames(root, s) for s in ("train", "gallery")}
    overlap = set(frames["train"]) & set(frames["gallery"])
    if overlap:
        raise DatasetFormatError(f"PRW {root}: {len(overlap)} frame(s) in both frame_train.mat and frame_test.mat, e.g. {sorted(overlap)[:3]}")
    names = frames["train"] + frames["gallery"]
    annos, dropped = {}, 0

    for n in tqdm(names, desc="parsing PRW annotations", disable=len(names) < 2000, unit="file"):
        path = require_file(os.path.join(root, "annotations", n + ".mat"), "PRW annotation", PRW_LAYOUT)
        ids, boxes, nd = _parse_annotation(path, convention)
        annos[n] = (ids, boxes)
        dropped += nd
    sizes = read_image_sizes(os.path.join(root, "frames"), names, PRW_LAYOUT)
    train_ids = sorted({int(i) for n in frames["train"] for i in annos[n][0] if i >= 0})
    remap = {pid: k for k, pid in enumerate(train_ids)}

    def record(i, n, split):
        ids, boxes = annos[n]
        if split == "train":
            ids = [remap[int(p)] if p >= 0 else -1 for p in ids]
        h, w = sizes[n]
        return {
            "file_name": os.path.join(root, "frames", n),
            "image_id": i,
            "image_name": n,
            "height": h,
            "width": w,
            "camera_id": prw_camera(n),
            "annotations": [
                {"bbox": b.tolist(), "bbox_mode": 0, "category_id": 0, "person_id": int(p)}
                for b, p in zip(boxes, ids)
            ],
        }

    train = [record(i, n, "train") for i, n in enumerate(frames["train"])]
    gallery = [record(len(train) + i, n, "gallery") for i, n in enumerate(frames["gallery"])]
    by_name = {r["image_name"]: r for r in gallery}
    query, unmatched = [], 0
    train_set = set(frames["train"])
    qpath = os.path.join(root, "query_info.txt")
    for k, q in enumerate(_parse_queries(root, convention)):
        if q["image"] not in by_name:
            where = "a training frame (frame_train.mat)" if q["image"] in train_set else "not in frame_test.mat"
            raise DatasetFormatError(f"{qpath}:{q['line']}: query image {q['image']} is {where}; queries must be gallery frames")
        r = copy.deepcopy(by_name[q["image"]])
        if q["pid"] not in {a["person_id"] for a in r["annotations"]}:
            unmatched += 1
        r.update(is_query=True, query_index=k, query_pid=q["pid"], query_boxes=q["box"].astype(np.float32)[None])
        query.append(r)
    return {"train": train, "gallery": gallery, "query": query, "num_train_pids": len(train_ids),
            "train_pid_map": train_ids, "num_dropped": dropped, "num_query_unmatched": unmatched}


def _dir_digest(d):
    h = hashlib.sha1()
    try:
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            st = e.stat()
            h.update(f"{e.name}:{st.st_mtime_ns}:{st.st_size};".encode())
    except OSError:
        return None
    return h.hexdigest()


def _index(root, convention):
    check_box_convention(convention)
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"PRW root {root} does not exist.\nExpected layout:\n{PRW_LAYOUT}")
    files = [os.path.join(root, f) for f in ("frame_train.mat", "frame_test.mat", "query_info.txt")]
    for f in files:
        require_file(f, "PRW", PRW_LAYOUT)
    files.append(os.path.join(root, "frames"))
    # the convention changes the boxes: part of the cache key
    index = cached_parse("prw_index", files, lambda: _build_index(root, convention),
                         extra=[_dir_digest(os.path.join(root, "annotations")), convention])
    if index["num_dropped"]:
        logger.warning("PRW %s: dropped %d box(es) of non-positive size (after the %r box conversion)",
                       root, index["num_dropped"], convention)
    if index["num_query_unmatched"]:
        logger.warning("PRW %s: %d query id(s) of query_info.txt not annotated in their frame",
                       root, index["num_query_unmatched"])
    return index


def load_prw(root: str, split: str, box_convention: str = "standard") -> List[Dict]:
    """Detectron2 dataset dicts of one PRW split.

    Args:
        root: dataset root (layout: :data:`PRW_LAYOUT`).
        split: "train", "gallery", "query" or "test" (= gallery followed by query).
        box_convention: "standard" (the published protocol's integer boxes) or "geometric"
            (float, clipped at 0 after the conversion); see :func:`.common.convert_boxes`.
    """
    if split not in ("train", "gallery", "query", "test"):  # before parsing anything
        raise ValueError(f"PRW split {split!r}: expected 'train', 'gallery', 'query' or 'test'")
    check_box_convention(box_convention)

    def attribute_boxes(xyxy):  # the attribute file lists [x, y, x + w, y + h] of the annotation rows
        return convert_boxes(np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1),
                             box_convention, "prw_annotation")

    return split_records(_index(root, box_convention), split, "PRW", root, box_convert=attribute_boxes)


def prw_num_train_pids(root: str, box_convention: str = "standard") -> int:
    """Number of distinct labeled training identities (K; ids are remapped to 0..K-1)."""
    return _index(root, box_convention)["num_train_pids"]


def load_prw_protocol(root: str, cross_camera: bool = False, box_convention: str = "standard") -> SearchProtocol:
    """The PRW search protocol: "standard" (all gallery frames but the query's) or "cross_camera".

    ``box_convention`` as in :func:`load_prw` (gallery and query boxes).
    """
    index = _index(root, box_convention)
    gallery = {
        r["image_name"]: GalleryImage(r["image_name"], [a["bbox"] for a in r["annotations"]],
                                      [a["person_id"] for a in r["annotations"]], r["camera_id"])
        for r in index["gallery"]
    }
    queries = [
        SearchQuery(r["image_name"], r["query_boxes"][0], r["query_pid"], r["camera_id"])
        for r in index["query"]
    ]
    if cross_camera:
        return SearchProtocol("prw", "cross_camera", "other_cameras", gallery, queries)
    return SearchProtocol("prw", "standard", "all_but_query", gallery, queries)
