"""Writers of the official CUHK-SYSU and PRW file layouts (SPEC section 4) for SynthPS scenes.

The .mat files are MATLAB 5 files built with the same nesting as the originals, so a loader written
for the real data reads them unchanged (layouts observed in public person-search loaders):

CUHK-SYSU (``root/``)::

    Image/SSM/s{n}.jpg
    annotation/Images.mat   Img: 1xN struct(imname, nAppear, box); box: 1xK struct(idlocate [x y w h], ishard)
    annotation/pool.mat     pool: Mx1 cell of test image names
    annotation/test/train_test/Train.mat   Train: Px1 cell of 1x1 struct(idname, nAppear, scene);
                                           scene: 1xn struct(imname, idlocate, ishard)
    annotation/test/train_test/TestG{G}.mat  TestG{G}: 1xQ struct(Query, Gallery);
        Query: 1x1 struct(imname, idlocate, ishard, idname); Gallery: 1xG struct(imname, idlocate, ishard),
        the images containing the query person first, then the others with an EMPTY idlocate (1x0),
        as in the released files (their loaders stop at the first empty box). G = every official size
        <= (test images - 1); when none fits, TestG50 lists all other test images.
    annotation/test/subset/Occlusion.mat   Occlusion1: struct(Query, Gallery, occlusion)  (when non-empty)
    annotation/test/subset/Resolution.mat  Test_Size: struct(Query, Gallery)  (the 1/4 smallest query boxes)

PRW (``root/``)::

    frames/c{cam}s{seq}_{frame:06d}.jpg
    annotations/<image>.jpg.mat   box_new: Kx5 double rows [id x y w h], id -2 = unlabeled
    frame_train.mat  img_index_train: Nx1 cell of names without ".jpg";  frame_test.mat  img_index_test
    query_info.txt   "pid x y w h name" per line (name without ".jpg"), CRLF line endings

Both: ``synthps_attributes.json`` (attribute ground truth, DESIGN contract) and ``synthps_meta.json``
(the full generator truth: every box, id, camera; not read by the loaders).
MAT headers carry a fixed text instead of scipy's creation time, so a seed gives identical bytes.
"""

import io
import json
import os
from typing import Dict, List

import cv2
import numpy as np
import scipy.io

from .generator import SynthPSTruth

__all__ = [
    "OFFICIAL_GALLERY_SIZES",
    "savemat_deterministic",
    "write_cuhk_sysu",
    "write_prw",
    "write_attributes",
    "write_meta",
    "write_image",
]

OFFICIAL_GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: galw_d2 SynthPS"


def savemat_deterministic(path: str, mdict: dict) -> None:
    """scipy.io.savemat (v5, uncompressed) with a fixed 116-byte header text (no timestamp)."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, mdict, format="5", oned_as="row", do_compression=False)
    data = bytearray(buf.getvalue())
    data[:116] = _HEADER.ljust(116)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(bytes(data))


def write_image(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok, enc = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    with open(path, "wb") as f:
        f.write(enc.tobytes())


def _struct(fields: List[str], rows: List[tuple]) -> np.ndarray:
    """A 1xN MATLAB struct array (numpy structured array of objects)."""
    arr = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for j, row in enumerate(rows):
        for f, v in zip(fields, row):
            arr[f][0, j] = v
    return arr


def _cell_column(items: List) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=object)
    for i, v in enumerate(items):
        out[i, 0] = v
    return out


def _s(text: str) -> np.ndarray:
    return np.array([text])


def _box(b) -> np.ndarray:
    return np.asarray(b, dtype=np.float64).reshape(1, 4)


def _num(v) -> np.ndarray:
    return np.array([[float(v)]])


def _gallery_sizes(n_test: int) -> List[int]:
    """Official sizes that fit (a query's gallery excludes its own image); at least the smallest."""
    fit = [g for g in OFFICIAL_GALLERY_SIZES if g <= n_test - 1]
    return fit or [OFFICIAL_GALLERY_SIZES[0]]


def write_cuhk_sysu(root: str, truth: SynthPSTruth, images: List[np.ndarray], rng: np.random.Generator) -> None:
    """Name the scenes ``s{n}.jpg``, set file ids and write the CUHK-SYSU layout under ``root``."""
    scenes = truth.scenes
    numbers = rng.choice(np.arange(1, 20 * len(scenes) + 1), size=len(scenes), replace=False)
    for s, n in zip(scenes, numbers):
        s.name = f"s{int(n)}.jpg"
    # file ids: train ids 1..K in Train.mat order, test ids K+1.. in query order (idname "p{id}")
    train_ids = [i for i, sp in enumerate(truth.identity_split) if sp == "train"]
    order = [int(i) for i in rng.permutation(train_ids)]
    pid_of = {ident: k + 1 for k, ident in enumerate(order)}
    for q_k, q in enumerate(truth.queries):
        pid_of[q.identity] = len(order) + q_k + 1
    for s in scenes:
        for p in s.persons:
            p.pid = pid_of.get(p.identity, -1) if p.identity >= 0 else -1

    for s, img in zip(scenes, images):
        write_image(os.path.join(root, "Image", "SSM", s.name), img)
    ann = os.path.join(root, "annotation")
    by_number = sorted(scenes, key=lambda s: int(s.name[1:-4]))
    img_rows = []
    for s in by_number:
        boxes = _struct(["idlocate", "ishard"], [(_box(p.box), _num(p.ishard)) for p in s.persons])
        img_rows.append((_s(s.name), _num(len(s.persons)), boxes))
    savemat_deterministic(os.path.join(ann, "Images.mat"), {"Img": _struct(["imname", "nAppear", "box"], img_rows)})
    test_scenes = [s for s in by_number if s.split == "test"]
    savemat_deterministic(os.path.join(ann, "pool.mat"), {"pool": _cell_column([_s(s.name) for s in test_scenes])})

    def appearances(ident, split):
        return [(s, p) for s in by_number if s.split == split for p in s.persons if p.identity == ident]

    train_cells = []
    for ident in order:
        app = appearances(ident, "train")
        scene = _struct(["imname", "idlocate", "ishard"], [(_s(s.name), _box(p.box), _num(p.ishard)) for s, p in app])
        train_cells.append(_struct(["idname", "nAppear", "scene"], [(_s(f"p{pid_of[ident]}"), _num(len(app)), scene)]))
    tt = os.path.join(ann, "test", "train_test")
    savemat_deterministic(os.path.join(tt, "Train.mat"), {"Train": _cell_column(train_cells)})

    # the negatives of each query are drawn once (largest size) and cut for smaller sizes, so the
    # galleries are nested like the released ones
    sizes = _gallery_sizes(len(test_scenes))
    truth.galleries = {g: [] for g in sizes}
    query_rows = {g: [] for g in sizes}
    for q in truth.queries:
        qs, qp = scenes[q.scene], scenes[q.scene].persons[q.person]
        pos = [(s, p) for s, p in appearances(q.identity, "test") if s.name != qs.name]
        neg = [s for s in test_scenes if s.name != qs.name and all(p.identity != q.identity for p in s.persons)]
        neg = [neg[int(i)] for i in rng.permutation(len(neg))]
        query = _struct(
            ["imname", "idlocate", "ishard", "idname"],
            [(_s(qs.name), _box(qp.box), _num(qp.ishard), _s(f"p{pid_of[q.identity]}"))],
        )
        for g in sizes:
            entries = [(s.name, tuple(p.box), p.ishard) for s, p in pos]
            entries += [(s.name, None, 0) for s in neg[: max(0, g - len(entries))]]
            truth.galleries[g].append([(n, b) for n, b, _ in entries])
            gal = _struct(
                ["imname", "idlocate", "ishard"],
                [(_s(n), _box(b) if b is not None else np.zeros((1, 0)), _num(h)) for n, b, h in entries],
            )
            query_rows[g].append((query, gal))
    for g in sizes:
        savemat_deterministic(
            os.path.join(tt, f"TestG{g}.mat"), {f"TestG{g}": _struct(["Query", "Gallery"], query_rows[g])}
        )

    # optional subsets (annotation/test/subset): queries whose person is partly hidden (in the query or
    # a gallery image) and queries of low resolution, with their 100-image (else largest) gallery lists
    sub_g = 100 if 100 in sizes else sizes[-1]
    truth.subsets = {}
    occluded = []
    for k, q in enumerate(truth.queries):
        qp = scenes[q.scene].persons[q.person]
        pos = [p for _, p in appearances(q.identity, "test")]
        if qp.occlusion > 0.1 or any(p.occlusion > 0.3 for p in pos):
            occluded.append(k)
    # low resolution: the quarter of the queries with the smallest boxes (at least one), file order
    by_height = sorted(
        range(len(truth.queries)),
        key=lambda k: (scenes[truth.queries[k].scene].persons[truth.queries[k].person].box[3], k),
    )
    low_res = sorted(by_height[: max(1, len(by_height) // 4)])
    sub = os.path.join(ann, "test", "subset")
    for name, fname, key, ks in (
        ("Occlusion", "Occlusion.mat", "Occlusion1", occluded),
        ("Resolution", "Resolution.mat", "Test_Size", low_res),
    ):
        if not ks:
            continue
        truth.subsets[name] = (ks, sub_g)
        if name == "Occlusion":
            rows = [query_rows[sub_g][k] + (_num(1),) for k in ks]
            mdict = {key: _struct(["Query", "Gallery", "occlusion"], rows)}
        else:
            mdict = {key: _struct(["Query", "Gallery"], [query_rows[sub_g][k] for k in ks])}
        savemat_deterministic(os.path.join(sub, fname), mdict)


def write_prw(root: str, truth: SynthPSTruth, images: List[np.ndarray], rng: np.random.Generator) -> None:
    """Name the scenes ``c{cam}s{seq}_{frame}.jpg``, set file ids and write the PRW layout."""
    scenes = truth.scenes
    counters: Dict[tuple, int] = {}
    for k in rng.permutation(len(scenes)):  # one time line per camera and sequence
        s = scenes[int(k)]
        seq = int(rng.integers(1, 3))
        frame = counters.get((s.camera, seq), int(rng.integers(1, 500))) + int(rng.integers(25, 400))
        counters[(s.camera, seq)] = frame
        s.name = f"c{s.camera}s{seq}_{frame:06d}.jpg"
    # PRW ids are sparse numbers (train and test disjoint), -2 in the files for unlabeled people
    n_ids = len(truth.identity_split)
    numbers = np.sort(rng.choice(np.arange(1, 3 * n_ids + 1), size=n_ids, replace=False))
    perm = rng.permutation(n_ids)
    pid_of = {int(ident): int(numbers[k]) for k, ident in enumerate(perm)}
    for s in scenes:
        for p in s.persons:
            p.pid = pid_of[p.identity] if p.identity >= 0 else -1

    for s, img in zip(scenes, images):
        write_image(os.path.join(root, "frames", s.name), img)
        rows = np.array([[p.pid if p.pid >= 0 else -2, *p.box] for p in s.persons], dtype=np.float64).reshape(-1, 5)
        savemat_deterministic(os.path.join(root, "annotations", s.name + ".mat"), {"box_new": rows})
    for split, fname, key in (
        ("train", "frame_train.mat", "img_index_train"),
        ("test", "frame_test.mat", "img_index_test"),
    ):
        names = sorted(s.name[:-4] for s in scenes if s.split == split)
        savemat_deterministic(os.path.join(root, fname), {key: _cell_column([_s(n) for n in names])})
    lines = []
    for q in truth.queries:
        s = scenes[q.scene]
        p = s.persons[q.person]
        x, y, w, h = p.box
        lines.append(f"{p.pid} {x} {y} {w} {h} {s.name[:-4]}\r\n")
    with open(os.path.join(root, "query_info.txt"), "wb") as f:
        f.write("".join(lines).encode("ascii"))


def write_attributes(root: str, truth: SynthPSTruth) -> None:
    """``synthps_attributes.json``: every annotated box (XYXY ints) with its binary attributes."""
    persons = []
    for s in sorted(truth.scenes, key=lambda s: s.name):
        for p in s.persons:
            x, y, w, h = p.box
            persons.append({"image": s.name, "box": [x, y, x + w, y + h], "attributes": list(p.attributes)})
    with open(os.path.join(root, "synthps_attributes.json"), "w") as f:
        json.dump({"attribute_names": list(truth.attribute_names), "persons": persons}, f, indent=None)
        f.write("\n")


def write_meta(root: str, truth: SynthPSTruth) -> None:
    with open(os.path.join(root, "synthps_meta.json"), "w") as f:
        json.dump(truth.to_json(), f, indent=None, sort_keys=True)
        f.write("\n")
