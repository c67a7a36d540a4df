"""CUHK-SYSU (Xiao et al., CVPR 2017) from its official annotation files (SPEC §4).

Splits: ``train`` (every image of Images.mat not in pool.mat, identities from Train.mat),
``gallery`` (the pool.mat images, test identities from the queries of a TestG file) and ``query``
(one record per query of the TestG files, in their Query order). Protocols: TestG{N}.mat ("explicit"
gallery lists), the full test set (``gallery_size=-1``, "all_but_query") and the Occlusion /
Resolution subsets.

The .mat structures (as read by ``scipy.io.loadmat``):
  * Images.mat ``Img``: struct array, fields ``imname`` (str), ``nAppear``, ``box``: struct array of
    ``idlocate`` ([x, y, w, h]) and ``ishard``.
  * pool.mat ``pool``: cell array of test image names.
  * Train.mat ``Train``: cell array of structs ``idname``, ``nAppear``, ``scene``: struct array of
    ``imname``, ``idlocate``, ``ishard``.
  * TestG{N}.mat ``TestG{N}``, Occlusion.mat ``Occlusion1``, Resolution.mat ``Test_Size``: struct
    array of ``Query`` (struct ``imname``, ``idlocate``, ``ishard``, ``idname``) and ``Gallery``
    (struct array ``imname``, ``idlocate`` (empty when the person is not in that image), ``ishard``).
Struct arrays and cell arrays of structs are accepted interchangeably (see :mod:`.common`).

Boxes ``idlocate = [x, y, w, h]`` (Images.mat, Train.mat, TestG queries and galleries) become XYXY
under ``box_convention`` (:func:`.common.convert_boxes`): "standard" (default, the published
protocol) truncates x, y, w, h to integers, then x2 = x + w (no clipping); "geometric" converts in
floats and clips at 0. Identities are matched on the file values (within 0.5 px) whatever the
convention.
"""
import copy
import glob
import logging
import os
import re
from collections.abc import Sequence
from typing import Dict, List, Optional

import numpy as np

from ..protocol import GalleryImage, SearchProtocol, SearchQuery
from .common import (
    DatasetFormatError,
    DatasetNotFoundError,
    cached_parse,
    check_box_convention,
    convert_boxes,
    load_mat,
    mat_box,
    mat_field,
    mat_int,
    mat_str,
    mat_structs,
    read_image_sizes,
    require_file,
    split_records,
)

logger = logging.getLogger(__name__)

__all__ = ["load_cuhk_sysu", "load_cuhk_sysu_protocol", "cuhk_sysu_gallery_sizes", "cuhk_sysu_num_train_pids", "GalleryList", "CUHK_SYSU_LAYOUT", "SUBSETS"]

CUHK_SYSU_LAYOUT = """\
  <root>/Image/SSM/*.jpg                                   the scene images
  <root>/annotation/Images.mat                             Img: imname, nAppear, box(idlocate, ishard)
  <root>/annotation/pool.mat                               pool: the test images
  <root>/annotation/test/train_test/Train.mat              Train: idname, nAppear, scene(imname, idlocate, ishard)
  <root>/annotation/test/train_test/TestG{N}.mat           TestG{N}: Query, Gallery (N = 50 ... 4000)
  <root>/annotation/test/subset/{Occlusion,Resolution}.mat (optional)
(CUHK-SYSU is distributed by its authors; see datasets/README.md.)"""

#: subset name -> (file name under annotation/test/subset, accepted variable names)
SUBSETS = {"Occlusion": ("Occlusion.mat", ("Occlusion1", "Occlusion")), "Resolution": ("Resolution.mat", ("Test_Size", "Resolution"))}

_TOL = 0.5  # boxes are integers stored as doubles: "equal" = within half a pixel


def _ann(root, *parts):
    return os.path.join(root, "annotation", *parts)


def _testg_path(root, n):
    return _ann(root, "test", "train_test", f"TestG{n}.mat")


def cuhk_sysu_gallery_sizes(root: str) -> List[int]:
    """The N of every ``annotation/test/train_test/TestG{N}.mat`` present, ascending."""
    sizes = []
    for p in glob.glob(_ann(root, "test", "train_test", "TestG*.mat")):
        m = re.fullmatch(r"TestG(\d+)\.mat", os.path.basename(p))
        if m:
            sizes.append(int(m.group(1)))
    return sorted(sizes)


def _base_size(root):
    """The TestG file whose queries label the test identities: TestG50, else the smallest present."""
    avail = cuhk_sysu_gallery_sizes(root)
    if not avail:
        raise DatasetNotFoundError(
            f"CUHK-SYSU: no annotation/test/train_test/TestG{{N}}.mat under {root}.\nExpected layout:\n{CUHK_SYSU_LAYOUT}"
        )
    return 50 if 50 in avail else avail[0]


def _check_root(root):
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"CUHK-SYSU root {root} does not exist.\nExpected layout:\n{CUHK_SYSU_LAYOUT}")


def _xyxy(b, convention):
    """(4,) or (K, 4) file boxes [x, y, w, h] -> float64 XYXY under ``convention``."""
    return convert_boxes(b, convention, "cuhk_sysu")


# ----------------------------------------------------------------------------------------------------
# file parsers (plain data, cached)
# ----------------------------------------------------------------------------------------------------
def _parse_images(root):
    path = require_file(_ann(root, "Images.mat"), "CUHK-SYSU", CUHK_SYSU_LAYOUT)
    value = load_mat(path, ["Img"], CUHK_SYSU_LAYOUT)["value"]
    names, boxes, dropped = [], {}, {}
    for i, s in enumerate(mat_structs(value, f"{path}: Img")):
        where = f"{path}: Img({i + 1})"
        name = mat_str(mat_field(s, ["imname"], where), where + ".imname")
        if name in boxes:
            raise DatasetFormatError(f"{where}: image {name} is listed twice")
        valid, bad = [], []
        for j, b in enumerate(mat_structs(mat_field(s, ["box"], where), where + ".box")):
            box = mat_box(mat_field(b, ["idlocate"], where + f".box({j + 1})"), where + f".box({j + 1}).idlocate")
            if box is None:
                continue
            (valid if box[2] > 0 and box[3] > 0 else bad).append(box)
        names.append(name)
        boxes[name] = np.array(valid, dtype=np.float64).reshape(-1, 4)
        if bad:
            dropped[name] = np.array(bad, dtype=np.float64).reshape(-1, 4)
    return names, boxes, dropped


def _parse_pool(root):
    from .common import mat_str_list

    path = require_file(_ann(root, "pool.mat"), "CUHK-SYSU", CUHK_SYSU_LAYOUT)
    return mat_str_list(load_mat(path, ["pool"], CUHK_SYSU_LAYOUT)["value"], f"{path}: pool")


def _parse_train(root):
    path = require_file(_ann(root, "test", "train_test", "Train.mat"), "CUHK-SYSU", CUHK_SYSU_LAYOUT)
    value = load_mat(path, ["Train"], CUHK_SYSU_LAYOUT)["value"]
    ids = []
    for k, s in enumerate(mat_structs(value, f"{path}: Train")):
        where = f"{path}: Train{{{k + 1}}}"
        idname = mat_str(s["idname"], where + ".idname") if "idname" in s else str(k)
        scenes = []
        for j, sc in enumerate(mat_structs(mat_field(s, ["scene"], where), where + ".scene")):
            w = f"{where}.scene({j + 1})"
            box = mat_box(mat_field(sc, ["idlocate"], w), w + ".idlocate")
            if box is None:
                raise DatasetFormatError(f"{w}: empty idlocate (every training appearance needs a box)")
            scenes.append((mat_str(mat_field(sc, ["imname"], w), w + ".imname"), box))
        ids.append((idname, scenes))
    return ids


def _fast_strs(arr, where):
    out = []
    for i, x in enumerate(arr):
        if isinstance(x, np.ndarray) and x.dtype.kind == "U" and x.size == 1:
            out.append(str(x.ravel()[0]).strip())
        else:
            out.append(mat_str(x, f"{where}[{i}]"))
    return out


def _parse_protocol_file(path, keys):
    """Queries of a TestG / subset file, galleries stored compactly (TestG4000: 11.6M entries).

    Returns:
        {"names": [gallery image names], "queries": [{"image", "box" (x, y, w, h), "ishard", "idname",
        "gallery_idx" int32 (G,) into names, "gallery_pos" int32 (P,) entries with the person,
        "gallery_xywh" float64 (P, 4) their boxes}]}
    """
    value = load_mat(path, keys, CUHK_SYSU_LAYOUT)["value"]
    entries = mat_structs(value, f"{path}: {keys[0]}")
    table: Dict[str, int] = {}
    queries = []
    for i, e in enumerate(entries):
        where = f"{path}: query {i + 1}"
        qs = mat_structs(mat_field(e, ["Query"], where), where + ".Query")
        if len(qs) != 1:
            raise DatasetFormatError(f"{where}.Query: expected one struct, got {len(qs)}")
        q = qs[0]
        qbox = mat_box(mat_field(q, ["idlocate"], where + ".Query"), where + ".Query.idlocate")
        if qbox is None or qbox[2] <= 0 or qbox[3] <= 0:
            raise DatasetFormatError(f"{where}.Query.idlocate: expected a box of positive size, got {qbox}")
        g = mat_field(e, ["Gallery"], where)
        if isinstance(g, np.ndarray) and g.dtype.names and "imname" in g.dtype.names and "idlocate" in g.dtype.names:
            gnames = _fast_strs(g["imname"].ravel(order="F"), where + ".Gallery.imname")
            graw = g["idlocate"].ravel(order="F")
        else:
            gs = mat_structs(g, where + ".Gallery")
            gnames = [mat_str(mat_field(s, ["imname"], where + ".Gallery"), where + ".Gallery.imname") for s in gs]
            graw = [mat_field(s, ["idlocate"], where + ".Gallery") for s in gs]
        pos, xywh = [], []
        for j, b in enumerate(graw):
            if isinstance(b, np.ndarray) and b.dtype.kind == "f":
                box = b.ravel()
            else:
                box = mat_box(b, f"{where}.Gallery({j + 1}).idlocate")
                box = np.zeros(0) if box is None else box
            if box.size == 4 and box[2] > 0 and box[3] > 0:  # empty or zero-size = person absent
                pos.append(j)
                xywh.append(box)
            elif box.size not in (0, 4):
                raise DatasetFormatError(f"{where}.Gallery({j + 1}).idlocate: expected [x, y, w, h] or empty, got {box.tolist()}")
        queries.append({
            "image": mat_str(mat_field(q, ["imname"], where + ".Query"), where + ".Query.imname"),
            "box": qbox,
            "ishard": mat_int(q["ishard"], where + ".Query.ishard", 0) if "ishard" in q else 0,
            "idname": mat_str(q["idname"], where + ".Query.idname") if "idname" in q else "",
            "gallery_idx": np.array([table.setdefault(n, len(table)) for n in gnames], dtype=np.int32),
            "gallery_pos": np.array(pos, dtype=np.int32),
            "gallery_xywh": np.array(xywh, dtype=np.float64).reshape(-1, 4),
        })
    return {"names": list(table), "queries": queries}


class GalleryList(Sequence):
    """Read-only list of ``(image name, (4,) float32 XYXY box or None)`` of one query, stored compactly."""

    __slots__ = ("_names", "_idx", "_boxes")

    def __init__(self, names: List[str], idx: np.ndarray, boxes: Dict[int, np.ndarray]):
        self._names, self._idx, self._boxes = names, idx, boxes

    def __len__(self):
        return len(self._idx)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        return self._names[self._idx[i]], self._boxes.get(i)

    def __iter__(self):
        names, boxes = self._names, self._boxes
        for j, k in enumerate(self._idx.tolist()):
            yield names[k], boxes.get(j)

    def __repr__(self):
        return f"GalleryList({len(self)} entries, {len(self._boxes)} with the person)"


def _gallery_pairs(q, names):
    """(name, xywh box or None) of every gallery entry of a parsed query."""
    boxes = dict(zip(q["gallery_pos"].tolist(), q["gallery_xywh"]))
    return [(names[k], boxes.get(j)) for j, k in enumerate(q["gallery_idx"].tolist())]


def _protocol_queries(path, keys):
    return cached_parse("cuhk_sysu_protocol", [path], lambda: _parse_protocol_file(path, keys), extra=list(keys))


# ----------------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------------
def _match(boxes, box, tol=_TOL):
    if len(boxes) == 0:
        return -1
    d = np.abs(boxes - box[None]).max(axis=1)
    j = int(np.argmin(d))
    return j if d[j] <= tol else -1


def _label(name, box, pid, boxes, pids, dropped, where, counters):
    """Give the box of ``name`` equal to ``box`` the id ``pid``; skip (counted) boxes dropped for size."""
    j = _match(boxes[name], box)
    if j < 0:
        if name in dropped and _match(dropped[name], box) >= 0:
            counters["dropped_labeled"] += 1
            return
        raise DatasetFormatError(
            f"{where}: box {box.tolist()} (x, y, w, h) of image {name} is not among that image's boxes in "
            f"Images.mat {boxes[name].tolist()}"
        )
    if pids[name][j] not in (-1, pid):
        # the reference loaders silently overwrite; keep the first identity and report it
        counters["conflicts"].append(f"{where}: box {box.tolist()} of image {name} already belongs to identity {pids[name][j]}")
        return
    pids[name][j] = pid


def _build_index(root, convention):
    names, boxes, dropped = _parse_images(root)
    known = set(names)
    pool = _parse_pool(root)
    unknown = [n for n in pool if n not in known]
    if unknown:
        raise DatasetFormatError(f"{_ann(root, 'pool.mat')}: {len(unknown)} image(s) not in Images.mat, e.g. {unknown[:3]}")
    pool_set = set(pool)
    train_names = [n for n in names if n not in pool_set]
    counters = {"dropped_labeled": 0, "conflicts": []}
    train_pids = {n: np.full(len(boxes[n]), -1, dtype=np.int64) for n in train_names}
    train_file = _ann(root, "test", "train_test", "Train.mat")
    identities = _parse_train(root)
    for k, (idname, scenes) in enumerate(identities):
        for imname, box in scenes:
            where = f"{train_file}: identity {k + 1} ({idname})"
            if imname not in train_pids:
                why = "a test image (listed in pool.mat)" if imname in pool_set else "not in Images.mat"
                raise DatasetFormatError(f"{where}: image {imname} is {why}; training identities must be in training images")
            _label(imname, box, k, boxes, train_pids, dropped, where, counters)

    sizes = cached_parse("cuhk_sysu_sizes", [os.path.join(root, "Image", "SSM")],
                         lambda: read_image_sizes(os.path.join(root, "Image", "SSM"), names, CUHK_SYSU_LAYOUT),
                         extra=[len(names), names[:1], names[-1:]])

    # test identities: labeled from the queries of one TestG file (all TestG files share the queries
    # and their positive gallery boxes); equal idname = same person
    base = _base_size(root)
    base_path = _testg_path(root, base)
    parsed = _protocol_queries(base_path, [f"TestG{base}"])  # shared with load_cuhk_sysu_protocol
    base_queries, base_names = parsed["queries"], parsed["names"]
    test_pids = {n: np.full(len(boxes[n]), -1, dtype=np.int64) for n in pool}
    id_of: Dict[str, int] = {}
    query_pids = []
    for i, q in enumerate(base_queries):
        where = f"{base_path}: query {i + 1}"
        key = q["idname"] or f"#query{i}"
        pid = id_of.setdefault(key, len(id_of))
        query_pids.append(pid)
        if q["image"] not in test_pids:
            raise DatasetFormatError(
                f"{where}: query image {q['image']} is not in the gallery split (pool.mat)"
            )
        _label(q["image"], q["box"], pid, boxes, test_pids, dropped, where + " (Query)", counters)
        for gname, gbox in _gallery_pairs(q, base_names):
            if gname not in test_pids:
                raise DatasetFormatError(f"{where}: gallery image {gname} is not in the gallery split (pool.mat)")
            if gbox is not None:
                _label(gname, gbox, pid, boxes, test_pids, dropped, where + " (Gallery)", counters)

    n_dropped = sum(len(v) for v in dropped.values())
    image_id = {n: i for i, n in enumerate(names)}
    # the conversion can leave a box without area (standard: 0 < w < 1 truncates to 0): dropped too
    degenerate = [0]

    def record(n, pids):
        h, w = sizes[n]
        xyxy = _xyxy(boxes[n], convention)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        degenerate[0] += int((~keep).sum())
        return {
            "file_name": os.path.join(root, "Image", "SSM", n),
            "image_id": image_id[n],
            "image_name": n,
            "height": h,
            "width": w,
            "camera_id": -1,
            "annotations": [
                {"bbox": b.tolist(), "bbox_mode": 0, "category_id": 0, "person_id": int(p)}
                for b, p in zip(xyxy[keep], np.asarray(pids)[keep])
            ],
        }

    train = [record(n, train_pids[n]) for n in train_names]
    gallery = [record(n, test_pids[n]) for n in pool]
    by_name = {r["image_name"]: r for r in gallery}
    query = []
    for i, (q, pid) in enumerate(zip(base_queries, query_pids)):
        r = copy.deepcopy(by_name[q["image"]])
        r.update(is_query=True, query_index=i, query_pid=pid,
                 query_boxes=_xyxy(q["box"], convention).astype(np.float32)[None])
        query.append(r)
    return {
        "train": train,
        "gallery": gallery,
        "query": query,
        "num_train_pids": len(identities),
        "num_dropped": n_dropped + degenerate[0],
        "num_dropped_labeled": counters["dropped_labeled"],
        "conflicts": counters["conflicts"],
        "base_gallery_size": base,
    }


def _index(root, convention):
    check_box_convention(convention)
    _check_root(root)
    require_file(_ann(root, "Images.mat"), "CUHK-SYSU", CUHK_SYSU_LAYOUT)
    files = [_ann(root, "Images.mat"), _ann(root, "pool.mat"), _ann(root, "test", "train_test", "Train.mat")]
    files += [_testg_path(root, _base_size(root)), os.path.join(root, "Image", "SSM")]
    # the convention changes the boxes: part of the cache key
    index = cached_parse("cuhk_sysu_index", files, lambda: _build_index(root, convention), extra=convention)
    if index["num_dropped"]:
        logger.warning(
            "CUHK-SYSU %s: dropped %d box(es) with non-positive width or height in the file or after the %r "
            "box conversion (%d of them labeled in Train/TestG)",
            root, index["num_dropped"], convention, index["num_dropped_labeled"],
        )
    if index["conflicts"]:
        logger.warning("CUHK-SYSU %s: %d box(es) claimed by two identities (the first one kept), e.g. %s",
                       root, len(index["conflicts"]), index["conflicts"][0])
    return index


def load_cuhk_sysu(root: str, split: str, box_convention: str = "standard") -> List[Dict]:
    """Detectron2 dataset dicts of one CUHK-SYSU split (see docs/DESIGN.md "Datasets").

    Args:
        root: dataset root (layout: :data:`CUHK_SYSU_LAYOUT`).
        split: "train", "gallery", "query" or "test" (= gallery followed by query).
        box_convention: "standard" (the published protocol's integer boxes) or "geometric" (float,
            clipped at 0); see :func:`.common.convert_boxes`.
    Returns:
        list of image records; train ``person_id`` in 0..K-1 (K = Train.mat identities), -1 unlabeled.
    """
    if split not in ("train", "gallery", "query", "test"):  # before parsing anything
        raise ValueError(f"CUHK-SYSU split {split!r}: expected 'train', 'gallery', 'query' or 'test'")
    check_box_convention(box_convention)

    def attribute_boxes(xyxy):  # the attribute file lists [x, y, x + w, y + h] of Images.mat boxes
        return _xyxy(np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1), box_convention)

    return split_records(_index(root, box_convention), split, "CUHK-SYSU", root, box_convert=attribute_boxes)


def cuhk_sysu_num_train_pids(root: str, box_convention: str = "standard") -> int:
    """Number of training identities (Train.mat entries)."""
    return _index(root, box_convention)["num_train_pids"]


def load_cuhk_sysu_protocol(root: str, gallery_size: int = 100, subset: Optional[str] = None,
                            box_convention: str = "standard") -> SearchProtocol:
    """The CUHK-SYSU search protocol.

    Args:
        gallery_size: N of TestG{N}.mat (rule "explicit"); -1 = full test set (rule "all_but_query").
        subset: "Occlusion" or "Resolution": that subset's queries and gallery lists (gallery_size unused).
        box_convention: as in :func:`load_cuhk_sysu` (gallery, query and gallery-list boxes).
    """
    index = _index(root, box_convention)
    gallery = {
        r["image_name"]: GalleryImage(
            r["image_name"], [a["bbox"] for a in r["annotations"]], [a["person_id"] for a in r["annotations"]]
        )
        for r in index["gallery"]
    }
    if subset is not None:
        if subset not in SUBSETS:
            raise ValueError(f"CUHK-SYSU subset {subset!r}: expected one of {sorted(SUBSETS)}")
        fname, keys = SUBSETS[subset]
        path = require_file(_ann(root, "test", "subset", fname), f"CUHK-SYSU subset {subset}", CUHK_SYSU_LAYOUT)
        name, rule = subset, "explicit"
    elif gallery_size == -1:
        path = _testg_path(root, index["base_gallery_size"])
        keys, name, rule = [f"TestG{index['base_gallery_size']}"], "TestG-1", "all_but_query"
    else:
        avail = cuhk_sysu_gallery_sizes(root)
        if gallery_size not in avail:
            raise DatasetNotFoundError(
                f"CUHK-SYSU gallery size {gallery_size}: {_testg_path(root, gallery_size)} does not exist; "
                f"available: {avail} (or -1 for the full test set)"
            )
        path, keys, name, rule = _testg_path(root, gallery_size), [f"TestG{gallery_size}"], f"TestG{gallery_size}", "explicit"

    parsed = _protocol_queries(path, keys)
    missing = [n for n in parsed["names"] if n not in gallery]
    if missing:
        raise DatasetFormatError(f"{path}: {len(missing)} gallery image(s) not in the gallery split (pool.mat), e.g. {missing[:3]}")
    names = [gallery[n].name for n in parsed["names"]]  # shared strings
    queries = []
    for i, q in enumerate(parsed["queries"]):
        where = f"{path}: query {i + 1}"
        gi = gallery.get(q["image"])
        if gi is None:
            raise DatasetFormatError(f"{where}: query image {q['image']} is not in the gallery split (pool.mat)")
        box = _xyxy(q["box"], box_convention).astype(np.float32)
        j = _match(gi.boxes.astype(np.float64), box.astype(np.float64))
        if j < 0 or gi.pids[j] < 0:
            raise DatasetFormatError(f"{where}: query box {q['box'].tolist()} is not a labeled person of {q['image']}")
        glist = None
        if rule == "explicit":
            gboxes = {int(j): b.astype(np.float32) for j, b in
                      zip(q["gallery_pos"], _xyxy(q["gallery_xywh"], box_convention))}
            glist = GalleryList(names, q["gallery_idx"], gboxes)
        queries.append(SearchQuery(q["image"], box, int(gi.pids[j]), -1, glist,
                                   {"ishard": q["ishard"], "idname": q["idname"]}))
    return SearchProtocol("cuhk_sysu", name, rule, gallery, queries)
