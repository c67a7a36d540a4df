"""CUHK-SYSU loader, protocols, cache and registration on tiny official-layout fixtures (scipy.io.savemat)."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from galw_d2.data import (
    get_search_protocol,
    load_cuhk_sysu,
    load_cuhk_sysu_protocol,
    register_cuhk_sysu,
    register_synthps,
)
from galw_d2.data.datasets import DatasetFormatError, DatasetNotFoundError, common
from galw_d2.data.datasets import cuhk_sysu as cuhk_mod

# image -> (width, height, [boxes x, y, w, h])
IMAGES = {
    "s1.jpg": (120, 100, [[10, 20, 30, 60], [50, 10, 20, 40], [5, 5, 0, 30]]),  # last: zero width
    "s2.jpg": (100, 90, [[0, 0, 40, 80], [60, 20, 30, 50]]),
    "s3.jpg": (90, 80, [[10, 10, 30, 60], [50, 50, 20, 40]]),
    "s4.jpg": (80, 80, [[5, 5, 20, 40], [40, 10, 30, 60]]),
    "s5.jpg": (70, 60, [[12, 8, 30, 50]]),
    "s6.jpg": (64, 48, [[1, 1, 10, 20]]),
}
POOL = ["s3.jpg", "s4.jpg", "s5.jpg", "s6.jpg"]
TRAIN = [
    ("p1", [("s1.jpg", [10, 20, 30, 60]), ("s2.jpg", [60, 20, 30, 50])]),
    ("p2", [("s2.jpg", [0, 0, 40, 80]), ("s1.jpg", [5, 5, 0, 30])]),
]  # 2nd: the dropped box
# queries: (idname, image, box, [(gallery image, box or None), ...])
QUERIES = [
    ("p100", "s3.jpg", [10, 10, 30, 60], [("s4.jpg", [5, 5, 20, 40]), ("s5.jpg", None), ("s6.jpg", None)]),
    ("p200", "s5.jpg", [12, 8, 30, 50], [("s4.jpg", [40, 10, 30, 60]), ("s3.jpg", None), ("s4.jpg", [40, 10, 30, 60])]),
]


def _struct(fields, rows, shape=None):
    arr = np.empty((1, len(rows)) if shape is None else shape, dtype=[(f, "O") for f in fields])
    for i, r in enumerate(rows):
        arr.flat[i] = tuple(r)
    return arr


def _cell(items, column=True):
    arr = np.empty((len(items), 1) if column else (1, len(items)), dtype=object)
    for i, x in enumerate(items):
        arr.flat[i] = x
    return arr


def _box(b, alt):
    if b is None:
        return np.zeros((1, 4)) if alt else np.zeros((0, 0))  # both mean "absent"
    return np.array(b, dtype=np.int32 if alt else np.float64).reshape((4, 1) if alt else (1, 4))


def make_cuhk(root, alt=False, images=None, pool=None, train=None, queries=None, img_key="Img"):
    """Write the official CUHK-SYSU files. ``alt`` switches every structure to its other accepted form
    (cells of structs vs struct arrays, int column boxes, zero-box absences, char strings in cells)."""
    images, pool = images or IMAGES, pool or POOL
    train, queries = train or TRAIN, queries or QUERIES
    os.makedirs(os.path.join(root, "Image", "SSM"), exist_ok=True)
    tt = os.path.join(root, "annotation", "test", "train_test")
    os.makedirs(tt, exist_ok=True)
    os.makedirs(os.path.join(root, "annotation", "test", "subset"), exist_ok=True)
    rows = []
    for name, (w, h, boxes) in images.items():
        Image.new("RGB", (w, h), (100, 120, 140)).save(os.path.join(root, "Image", "SSM", name))
        b = _struct(["idlocate", "ishard"], [(_box(x, alt), np.array([[0]])) for x in boxes])
        if alt:
            b = _cell([_struct(["idlocate", "ishard"], [r]) for r in b.ravel()], column=False)
        rows.append((_cell([name]) if alt else np.array([name]), np.array([[len(boxes)]]), b))
    savemat(os.path.join(root, "annotation", "Images.mat"), {img_key: _struct(["imname", "nAppear", "box"], rows)})
    savemat(os.path.join(root, "annotation", "pool.mat"), {"pool": _cell([np.array([n]) for n in pool])})
    ids = [
        _struct(
            ["idname", "nAppear", "scene"],
            [
                (
                    np.array([idn]),
                    np.array([[len(sc)]]),
                    _struct(
                        ["imname", "idlocate", "ishard"],
                        [(np.array([n]), _box(b, alt), np.array([[0]])) for n, b in sc],
                    ),
                )
            ],
        )
        for idn, sc in train
    ]
    if alt:  # a struct array instead of a cell of structs
        ids = _struct(["idname", "nAppear", "scene"], [tuple(x[0, 0]) for x in ids], shape=(len(ids), 1))
    else:
        ids = _cell(ids)
    savemat(os.path.join(tt, "Train.mat"), {"Train": ids})

    def protocol(qs, extra=None):
        out = []
        for k, (idn, im, box, gal) in enumerate(qs):
            q = _struct(
                ["imname", "idlocate", "ishard", "idname"],
                [(np.array([im]), _box(box, alt), np.array([[k % 2]]), np.array([idn]))],
            )
            g = _struct(
                ["imname", "idlocate", "ishard"], [(np.array([n]), _box(b, alt), np.array([[0]])) for n, b in gal]
            )
            out.append((q, g) + ((np.array([[1]]),) if extra else ()))
        return _struct(["Query", "Gallery"] + ([extra] if extra else []), out)

    savemat(os.path.join(tt, "TestG50.mat"), {"TestG50": protocol(queries)})
    longer = [(i, n, b, g + [("s6.jpg", None)]) for i, n, b, g in queries]
    savemat(os.path.join(tt, "TestG100.mat"), {"TestG100": protocol(longer)})
    savemat(
        os.path.join(root, "annotation", "test", "subset", "Occlusion.mat"),
        {"Occlusion1": protocol(queries[1:], extra="occlusion")},
    )
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("GALW_D2_CACHE", str(d))
    return d


def _xyxy(b):
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


@pytest.mark.parametrize("alt", [False, True])
def test_splits_field_by_field(tmp_path, cache, alt, caplog):
    root = make_cuhk(str(tmp_path / "cuhk"), alt=alt)
    with caplog.at_level(logging.WARNING):
        train = load_cuhk_sysu(root, "train")
    assert "dropped 1 box(es)" in caplog.text and "(1 of them labeled" in caplog.text
    assert [r["image_name"] for r in train] == ["s1.jpg", "s2.jpg"]
    r = train[0]
    assert r["file_name"] == os.path.join(root, "Image", "SSM", "s1.jpg")
    assert (r["height"], r["width"], r["camera_id"], r["image_id"]) == (100, 120, -1, 0)
    assert [a["bbox"] for a in r["annotations"]] == [[10, 20, 40, 80], [50, 10, 70, 50]]
    assert [a["person_id"] for a in r["annotations"]] == [0, -1]
    assert all(a["category_id"] == 0 and int(a["bbox_mode"]) == 0 for a in r["annotations"])
    assert [a["person_id"] for a in train[1]["annotations"]] == [1, 0]

    gallery = load_cuhk_sysu(root, "gallery")
    assert [g["image_name"] for g in gallery] == POOL
    assert [[a["person_id"] for a in g["annotations"]] for g in gallery] == [[0, -1], [0, 1], [1], [-1]]
    assert gallery[1]["annotations"][1]["bbox"] == [40, 10, 70, 70]

    query = load_cuhk_sysu(root, "query")
    assert [(q["image_name"], q["query_index"], q["query_pid"], q["is_query"]) for q in query] == [
        ("s3.jpg", 0, 0, True),
        ("s5.jpg", 1, 1, True),
    ]
    assert query[1]["query_boxes"].dtype == np.float32
    np.testing.assert_array_equal(query[1]["query_boxes"], [[12, 8, 42, 58]])
    assert query[0]["annotations"] == gallery[0]["annotations"]  # the whole query image's record

    test = load_cuhk_sysu(root, "test")
    assert [t["image_name"] for t in test] == POOL + ["s3.jpg", "s5.jpg"]
    assert "is_query" not in test[0] and test[-1]["is_query"]


def test_protocols(tmp_path, cache):
    root = make_cuhk(str(tmp_path / "cuhk"))
    assert cuhk_mod.cuhk_sysu_gallery_sizes(root) == [50, 100]
    p = load_cuhk_sysu_protocol(root, 50)
    assert (p.dataset, p.name, p.rule) == ("cuhk_sysu", "TestG50", "explicit")
    assert list(p.gallery) == POOL
    np.testing.assert_array_equal(p.gallery["s4.jpg"].pids, [0, 1])
    q0, q1 = p.queries
    assert (q0.image, q0.pid, q0.info["ishard"], q0.info["idname"]) == ("s3.jpg", 0, 0, "p100")
    np.testing.assert_array_equal(q0.box, [10, 10, 40, 70])
    assert [g[0] for g in q0.gallery] == ["s4.jpg", "s5.jpg", "s6.jpg"]
    np.testing.assert_array_equal(q0.gallery[0][1], [5, 5, 25, 45])
    assert q0.gallery[1][1] is None and q0.gallery[2][1] is None
    assert [g[0] for g in q1.gallery] == ["s4.jpg", "s3.jpg", "s4.jpg"]  # duplicates kept, file order
    assert len(q1.gallery) == 3 and q1.gallery[-1][0] == "s4.jpg" and q1.gallery[1:2] == [("s3.jpg", None)]
    np.testing.assert_array_equal(q1.gallery[2][1], [40, 10, 70, 70])
    assert q1.pid == 1 and q1.info["ishard"] == 1

    assert [len(q.gallery) for q in load_cuhk_sysu_protocol(root, 100).queries] == [4, 4]
    full = load_cuhk_sysu_protocol(root, -1)
    assert (full.name, full.rule, [q.pid for q in full.queries]) == ("TestG-1", "all_but_query", [0, 1])
    assert all(q.gallery is None for q in full.queries)
    occ = load_cuhk_sysu_protocol(root, subset="Occlusion")
    assert (occ.name, occ.rule, [(q.image, q.pid) for q in occ.queries]) == ("Occlusion", "explicit", [("s5.jpg", 1)])
    with pytest.raises(DatasetNotFoundError, match=r"TestG500\.mat does not exist; available: \[50, 100\]"):
        load_cuhk_sysu_protocol(root, 500)
    with pytest.raises(DatasetNotFoundError, match="Resolution.mat"):
        load_cuhk_sysu_protocol(root, subset="Resolution")


def test_alt_absent_zero_boxes_in_protocol(tmp_path, cache):
    p = load_cuhk_sysu_protocol(make_cuhk(str(tmp_path / "c"), alt=True), 50)
    assert p.queries[0].gallery[1] == ("s5.jpg", None)
    np.testing.assert_array_equal(p.queries[1].gallery[0][1], [40, 10, 70, 70])


def test_errors(tmp_path, cache):
    with pytest.raises(DatasetNotFoundError, match="(?s)does not exist.*Image/SSM"):
        load_cuhk_sysu(str(tmp_path / "nope"), "train")
    root = make_cuhk(str(tmp_path / "a"))
    os.remove(os.path.join(root, "annotation", "test", "train_test", "Train.mat"))
    with pytest.raises(DatasetNotFoundError, match=r"missing file .*Train\.mat"):
        load_cuhk_sysu(root, "train")
    with pytest.raises(ValueError, match="split 'val'"):
        load_cuhk_sysu(root, "val")

    root = make_cuhk(str(tmp_path / "b"), img_key="Imgs")
    with pytest.raises(DatasetFormatError, match=r"Images\.mat: expected a variable named 'Img', found \['Imgs'\]"):
        load_cuhk_sysu(root, "train")

    bad_train = [("p1", [("s1.jpg", [11, 20, 30, 60])])]
    root = make_cuhk(str(tmp_path / "c"), train=bad_train)
    with pytest.raises(DatasetFormatError, match=r"identity 1 \(p1\): box \[11.0, 20.0, 30.0, 60.0\].*s1\.jpg"):
        load_cuhk_sysu(root, "train")

    bad_q = [("p100", "s1.jpg", [10, 20, 30, 60], [("s4.jpg", None)])]
    root = make_cuhk(str(tmp_path / "d"), queries=bad_q)
    with pytest.raises(DatasetFormatError, match=r"query image s1\.jpg is not in the gallery split"):
        load_cuhk_sysu(root, "query")

    root = make_cuhk(str(tmp_path / "e"))
    os.remove(os.path.join(root, "Image", "SSM", "s2.jpg"))
    with pytest.raises(DatasetNotFoundError, match=r"1 annotated image\(s\) missing .*s2\.jpg"):
        load_cuhk_sysu(root, "train")


def test_cache_hit_invalidation_and_unwritable(tmp_path, cache, monkeypatch):
    root = make_cuhk(str(tmp_path / "cuhk"))
    first = load_cuhk_sysu(root, "train")
    assert any(f.startswith("cuhk_sysu_index_") for f in os.listdir(cache))
    real = cuhk_mod._build_index
    monkeypatch.setattr(cuhk_mod, "_build_index", lambda *a: pytest.fail("cache miss"))
    assert load_cuhk_sysu(root, "train") == first  # in-process memo
    common._MEMO.clear()
    assert load_cuhk_sysu(root, "train") == first  # disk cache
    # a changed annotation file (new mtime / size) invalidates the entry
    make_cuhk(root, train=[("p1", [("s1.jpg", [10, 20, 30, 60])])])
    os.utime(os.path.join(root, "annotation", "test", "train_test", "Train.mat"), ns=(1, 1))
    monkeypatch.setattr(cuhk_mod, "_build_index", real)
    assert [a["person_id"] for a in load_cuhk_sysu(root, "train")[1]["annotations"]] == [-1, -1]
    # unwritable cache location: still loads
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("GALW_D2_CACHE", str(blocker / "sub"))
    assert len(load_cuhk_sysu(root, "gallery")) == 4


def test_attributes(tmp_path, cache):
    root = make_cuhk(str(tmp_path / "cuhk"))
    persons = [
        {"image": n, "box": [int(v) + (1 if k == 0 else 0) for v in _xyxy(b)], "attributes": [k % 2, 1]}
        for n, (_, _, boxes) in IMAGES.items()
        for k, b in enumerate(boxes)
        if b[2] > 0
    ]
    with open(os.path.join(root, "synthps_attributes.json"), "w") as f:
        json.dump({"attribute_names": ["male", "bag"], "persons": persons}, f)
    train = load_cuhk_sysu(root, "train")
    assert [a["attributes"] for a in train[0]["annotations"]] == [[0, 1], [1, 1]]
    assert load_cuhk_sysu(root, "query")[1]["annotations"][0]["attributes"] == [0, 1]
    persons[1]["box"][0] += 5
    with open(os.path.join(root, "synthps_attributes.json"), "w") as f:
        json.dump({"attribute_names": ["male", "bag"], "persons": persons}, f)
    with pytest.raises(DatasetFormatError, match=r"box \[50.0, 10.0, 70.0, 50.0\] of image s1\.jpg"):
        load_cuhk_sysu(root, "train")


def test_registration_is_lazy_and_dispatches(tmp_path, cache, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = make_cuhk(str(tmp_path / "cuhk"))
    calls = []
    real = cuhk_mod._build_index
    monkeypatch.setattr(cuhk_mod, "_build_index", lambda *a: calls.append(a[0]) or real(*a))
    register_cuhk_sysu(root, prefix="t_cuhk")
    register_cuhk_sysu(root, prefix="t_cuhk")  # re-registration replaces
    assert calls == []
    meta = MetadataCatalog.get("t_cuhk_train")
    assert (meta.dataset_type, meta.evaluator_type, meta.thing_classes, meta.root) == (
        "cuhk_sysu",
        "person_search",
        ["person"],
        root,
    )
    assert meta.num_train_pids == 2 and calls == [root]
    assert meta.gallery_sizes == [50, 100] and meta.get("attribute_names") is None
    assert len(DatasetCatalog.get("t_cuhk_test")) == 6
    p = get_search_protocol("t_cuhk_test", gallery_size=100)
    assert p.name == "TestG100" and len(p.queries) == 2
    assert get_search_protocol("t_cuhk_query", subset="Occlusion").name == "Occlusion"
    with pytest.raises(ValueError, match="PRW layout only"):
        get_search_protocol("t_cuhk_test", cross_camera=True)
    # builtin names exist and point at $DETECTRON2_DATASETS
    for n in ["cuhk_sysu_train", "cuhk_sysu_test", "synthps_tiny_cuhk_query", "synthps_small_prw_gallery"]:
        assert n in DatasetCatalog.list()
    assert MetadataCatalog.get("synthps_tiny_cuhk_train").synthps is True
    register_synthps(str(tmp_path / "syn"), "cuhk_sysu", "t_syn", preset="small")
    assert MetadataCatalog.get("t_syn_gallery").synthps_preset == "small"
    with pytest.raises(DatasetNotFoundError, match="make_synthps.py --output .*syn --format cuhk_sysu --preset small"):
        MetadataCatalog.get("t_syn_train").num_train_pids
    with pytest.raises(DatasetNotFoundError, match="make_synthps.py"):
        DatasetCatalog.get("t_syn_query")


def test_box_claimed_twice_keeps_first_with_warning(tmp_path, cache, caplog):
    train = [("p1", [("s1.jpg", [10, 20, 30, 60])]), ("p2", [("s1.jpg", [10, 20, 30, 60]), ("s2.jpg", [0, 0, 40, 80])])]
    root = make_cuhk(str(tmp_path / "c"), train=train)
    with caplog.at_level(logging.WARNING):
        recs = load_cuhk_sysu(root, "train")
    assert "1 box(es) claimed by two identities" in caplog.text and "identity 2 (p2)" in caplog.text
    assert [a["person_id"] for a in recs[0]["annotations"]] == [0, -1]
    assert [a["person_id"] for a in recs[1]["annotations"]] == [1, -1]


# Fractional and negative boxes (binary-exact fractions): the public loaders truncate x, y, w, h to
# int32 and then add (x2 = trunc(x) + trunc(w), no clipping); "geometric" adds in floats, clips at 0.
FRAC_IMAGES = {
    "s1.jpg": (120, 100, [[10.75, 20.5, 30.5, 59.75], [-1.5, 3, 20, 40], [5, 5, 0.5, 30]]),
    "s2.jpg": (100, 90, [[0, 0, 40, 80], [60, 20, 30, 50]]),
    "s3.jpg": (90, 80, [[10, 10, 30, 60], [50, 50, 20, 40]]),
    "s4.jpg": (80, 80, [[5, 5, 20, 40], [40.5, 10, 30.5, 60]]),
    "s5.jpg": (70, 60, [[12.25, 8.5, 30.75, 50.5]]),
    "s6.jpg": (64, 48, [[1, 1, 10, 20]]),
}
FRAC_TRAIN = [
    ("p1", [("s1.jpg", [10.75, 20.5, 30.5, 59.75]), ("s2.jpg", [60, 20, 30, 50])]),
    ("p2", [("s2.jpg", [0, 0, 40, 80]), ("s1.jpg", [-1.5, 3, 20, 40])]),
]
FRAC_QUERIES = [
    ("p100", "s3.jpg", [10, 10, 30, 60], [("s4.jpg", [5, 5, 20, 40]), ("s5.jpg", None)]),
    ("p200", "s5.jpg", [12.25, 8.5, 30.75, 50.5], [("s4.jpg", [40.5, 10, 30.5, 60]), ("s3.jpg", None)]),
]
FRAC_EXPECTED = {
    # s1's 0.5-wide box truncates to width 0: dropped (the reference loaders would keep a degenerate box)
    "standard": {
        "s1": [[10, 20, 40, 79], [-1, 3, 19, 43]],
        "s1_pids": [0, 1],
        "s4": [[5, 5, 25, 45], [40, 10, 70, 70]],
        "query": [12, 8, 42, 58],
        "dropped": 1,
    },
    "geometric": {
        "s1": [[10.75, 20.5, 41.25, 80.25], [0, 3, 18.5, 43], [5, 5, 5.5, 35]],
        "s1_pids": [0, 1, -1],
        "s4": [[5, 5, 25, 45], [40.5, 10, 71, 70]],
        "query": [12.25, 8.5, 43, 59],
        "dropped": 0,
    },
}


@pytest.mark.parametrize("convention", ["standard", "geometric"])
def test_box_conventions_hand_computed(tmp_path, cache, convention, caplog):
    root = make_cuhk(str(tmp_path / "cuhk"), images=FRAC_IMAGES, train=FRAC_TRAIN, queries=FRAC_QUERIES)
    want = FRAC_EXPECTED[convention]
    with caplog.at_level(logging.WARNING):
        train = load_cuhk_sysu(root, "train", box_convention=convention)
    assert (f"dropped {want['dropped']} box(es)" in caplog.text) == (want["dropped"] > 0)
    assert [a["bbox"] for a in train[0]["annotations"]] == want["s1"]
    assert [a["person_id"] for a in train[0]["annotations"]] == want["s1_pids"]
    gallery = {r["image_name"]: r for r in load_cuhk_sysu(root, "gallery", box_convention=convention)}
    assert [a["bbox"] for a in gallery["s4.jpg"]["annotations"]] == want["s4"]
    assert [a["person_id"] for a in gallery["s4.jpg"]["annotations"]] == [0, 1]
    query = load_cuhk_sysu(root, "query", box_convention=convention)
    np.testing.assert_array_equal(query[1]["query_boxes"], [want["query"]])
    for size in (50, -1):
        p = load_cuhk_sysu_protocol(root, size, box_convention=convention)
        np.testing.assert_array_equal(p.queries[1].box, want["query"])
        assert p.queries[1].pid == 1  # the converted query box is found among its image's boxes
        np.testing.assert_array_equal(p.gallery["s4.jpg"].boxes, want["s4"])
    np.testing.assert_array_equal(
        load_cuhk_sysu_protocol(root, 50, box_convention=convention).queries[1].gallery[0][1], want["s4"][1]
    )


def test_convert_boxes_rules():
    xywh = [[-1.5, 2.75, 10.5, 4.25], [3.5, -0.5, 1.0, 2.0]]
    conv = common.convert_boxes
    np.testing.assert_array_equal(conv(xywh, "standard", "cuhk_sysu"), [[-1, 2, 9, 6], [3, 0, 4, 2]])
    np.testing.assert_array_equal(conv(xywh, "standard", "prw_annotation"), [[0, 2, 10, 7], [3, 0, 4, 2]])
    np.testing.assert_array_equal(conv(xywh, "standard", "prw_query"), [[0, 2, 9, 7], [3, 0, 4, 1]])
    for rule in common.BOX_RULES:
        np.testing.assert_array_equal(conv(xywh, "geometric", rule), [[0, 2.75, 9, 7], [3.5, 0, 4.5, 1.5]])
    assert conv([1.5, 2, 3, 4], "standard", "prw_query").shape == (4,)
    assert not np.signbit(conv([[-0.5, -0.5, 0.25, 0.25]], "standard", "cuhk_sysu")).any()  # no -0.0
    with pytest.raises(ValueError, match="box_convention 'int'"):
        conv(xywh, "int", "cuhk_sysu")


def test_registration_keeps_the_convention(tmp_path, cache):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = make_cuhk(str(tmp_path / "cuhk"), images=FRAC_IMAGES, train=FRAC_TRAIN, queries=FRAC_QUERIES)
    register_cuhk_sysu(root, prefix="t_cuhk_geo", box_convention="geometric")
    register_cuhk_sysu(root, prefix="t_cuhk_std")
    assert MetadataCatalog.get("t_cuhk_geo_gallery").box_convention == "geometric"
    assert MetadataCatalog.get("t_cuhk_std_gallery").box_convention == "standard"
    for prefix, conv in (("t_cuhk_geo", "geometric"), ("t_cuhk_std", "standard")):
        want = FRAC_EXPECTED[conv]
        assert [a["bbox"] for a in DatasetCatalog.get(f"{prefix}_train")[0]["annotations"]] == want["s1"]
        p = get_search_protocol(f"{prefix}_test", gallery_size=100)
        np.testing.assert_array_equal(p.queries[1].box, want["query"])
    with pytest.raises(ValueError, match="box_convention 'float'"):
        register_synthps(root, "cuhk_sysu", "t_bad", box_convention="float")
