"""PRW loader, protocols and registration on tiny official-layout fixtures (scipy.io.savemat)."""

import json
import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from scipy.io import savemat

from galw_d2.data import get_search_protocol, load_prw, load_prw_protocol, register_prw, register_synthps
from galw_d2.data.datasets import DatasetFormatError, DatasetNotFoundError, common
from galw_d2.data.datasets import prw as prw_mod

# frame -> (annotation key, rows [id, x, y, w, h]); negative and fractional coordinates (binary-exact
# fractions) where the "standard" and "geometric" box conventions differ
TRAIN = {
    "c1s1_000001": (
        "box_new",
        [[5, 10, 20, 30, 60], [-2, 50, 10, 20, 40], [932, -3, 5, 20, 40], [-2, 30.75, -1.5, 10.5, 20.75]],
    ),
    # w = 0 (dropped in both conventions); w = 0.5 (x2 = 10.75 truncates to x1 = 10: dropped in "standard")
    "c2s1_000002": (
        "anno_file",
        [[5, 0, 0, 40, 80], [7, 60, 20, 30, 50], [-2, 10, 10, 0, 20], [-2, 10.25, 10, 0.5, 20]],
    ),
}
TEST = {
    "c1s2_000010": ("anno_previous", [[100, 10, 10, 30, 60], [-2, 50, 50, 20, 40]]),
    "c3s1_000020": ("box_new", [[100, 5, 5, 20, 40], [200, 40.5, 9.75, 29.75, 60.5]]),
    "c2s2_000030": ("box_new", [[200, 12, 8, 30, 50]]),
    "c6s1_000040": ("box_new", np.zeros((0, 5))),  # a frame without persons
}
QUERY_INFO = b"100 10 10 30 60 c1s2_000010\r\n200 -2.5 7.75 30.25 50.5 c2s2_000030\r\n"

# Hand-computed boxes of the public loader family (clip x, y, w, h at 0, x2 = x + w, truncate; queries:
# x2 = x + w, truncate, clip at 0) and of the geometric option (x2 = x + w in floats, clip at 0).
EXPECTED = {
    "standard": {
        "c1s1_000001": [[10, 20, 40, 80], [50, 10, 70, 50], [0, 5, 20, 45], [30, 0, 41, 20]],
        "c2s1_000002": [[0, 0, 40, 80], [60, 20, 90, 70]],
        "c3s1_000020": [[5, 5, 25, 45], [40, 9, 70, 70]],
        "query": [[10, 10, 40, 70], [0, 7, 27, 58]],
        "dropped": 2,
    },
    "geometric": {
        "c1s1_000001": [[10, 20, 40, 80], [50, 10, 70, 50], [0, 5, 17, 45], [30.75, 0, 41.25, 19.25]],
        "c2s1_000002": [[0, 0, 40, 80], [60, 20, 90, 70], [10.25, 10, 10.75, 30]],
        "c3s1_000020": [[5, 5, 25, 45], [40.5, 9.75, 70.25, 70.25]],
        "query": [[10, 10, 40, 70], [0, 7.75, 27.75, 58.25]],
        "dropped": 1,
    },
}


def make_prw(root, train=None, test=None, query_info=QUERY_INFO, column=True):
    train, test = train or TRAIN, test or TEST
    for d in ("frames", "annotations"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i, (name, (key, rows)) in enumerate({**train, **test}.items()):
        Image.new("RGB", (96 + i, 72), (90, 90, 90)).save(os.path.join(root, "frames", name + ".jpg"))
        savemat(os.path.join(root, "annotations", name + ".jpg.mat"), {key: np.asarray(rows, dtype=np.float64)})
    for fname, key, names in (
        ("frame_train.mat", "img_index_train", train),
        ("frame_test.mat", "img_index_test", test),
    ):
        cell = np.empty((len(names), 1) if column else (1, len(names)), dtype=object)
        for i, n in enumerate(names):
            cell.flat[i] = np.array([n])
        savemat(os.path.join(root, fname), {key: cell})
    with open(os.path.join(root, "query_info.txt"), "wb") as f:
        f.write(query_info)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GALW_D2_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("column", [True, False])
def test_splits_field_by_field(tmp_path, cache, column, caplog):
    root = make_prw(str(tmp_path / "prw"), column=column)
    with caplog.at_level(logging.WARNING):
        train = load_prw(root, "train")
    assert "dropped 2 box(es)" in caplog.text
    assert [r["image_name"] for r in train] == ["c1s1_000001.jpg", "c2s1_000002.jpg"]
    r = train[0]
    assert r["file_name"] == os.path.join(root, "frames", "c1s1_000001.jpg")
    assert (r["height"], r["width"], r["camera_id"], r["image_id"]) == (72, 96, 1, 0)
    # standard boxes (see EXPECTED); ids 5, 7, 932 -> 0, 1, 2; -2 -> -1
    assert [a["bbox"] for a in r["annotations"]] == EXPECTED["standard"]["c1s1_000001"]
    assert [a["person_id"] for a in r["annotations"]] == [0, -1, 2, -1]
    assert [a["person_id"] for a in train[1]["annotations"]] == [0, 1]
    assert train[1]["camera_id"] == 2 and all(int(a["bbox_mode"]) == 0 for a in r["annotations"])

    gallery = load_prw(root, "gallery")
    assert [g["image_name"] for g in gallery] == [n + ".jpg" for n in TEST]
    assert [g["camera_id"] for g in gallery] == [1, 3, 2, 6]
    assert [[a["person_id"] for a in g["annotations"]] for g in gallery] == [[100, -1], [100, 200], [200], []]
    assert [g["image_id"] for g in gallery] == [2, 3, 4, 5]

    query = load_prw(root, "query")
    assert [(q["image_name"], q["query_index"], q["query_pid"], q["camera_id"]) for q in query] == [
        ("c1s2_000010.jpg", 0, 100, 1),
        ("c2s2_000030.jpg", 1, 200, 2),
    ]
    np.testing.assert_array_equal(query[1]["query_boxes"], [EXPECTED["standard"]["query"][1]])
    assert query[1]["query_boxes"].dtype == np.float32 and query[0]["is_query"]
    assert len(load_prw(root, "test")) == 6


def test_protocols_and_registration(tmp_path, cache):
    root = make_prw(str(tmp_path / "prw"))
    p = load_prw_protocol(root)
    assert (p.dataset, p.name, p.rule) == ("prw", "standard", "all_but_query")
    assert [(g.name, g.camera) for g in p.gallery.values()] == [
        ("c1s2_000010.jpg", 1),
        ("c3s1_000020.jpg", 3),
        ("c2s2_000030.jpg", 2),
        ("c6s1_000040.jpg", 6),
    ]
    np.testing.assert_array_equal(p.gallery["c3s1_000020.jpg"].boxes, EXPECTED["standard"]["c3s1_000020"])
    assert p.gallery["c6s1_000040.jpg"].boxes.shape == (0, 4)
    assert [(q.image, q.pid, q.camera, q.gallery) for q in p.queries] == [
        ("c1s2_000010.jpg", 100, 1, None),
        ("c2s2_000030.jpg", 200, 2, None),
    ]
    cc = load_prw_protocol(root, cross_camera=True)
    assert (cc.name, cc.rule) == ("cross_camera", "other_cameras")

    register_prw(root, prefix="t_prw")
    meta = MetadataCatalog.get("t_prw_gallery")
    assert (meta.dataset_type, meta.num_train_pids, meta.split) == ("prw", 3, "gallery")
    assert [r["image_name"] for r in DatasetCatalog.get("t_prw_query")] == ["c1s2_000010.jpg", "c2s2_000030.jpg"]
    assert get_search_protocol("t_prw_test", cross_camera=True).rule == "other_cameras"
    with pytest.raises(ValueError, match="CUHK-SYSU layout only"):
        get_search_protocol("t_prw_test", subset="Occlusion")
    with pytest.raises(KeyError, match="not a person-search dataset"):
        get_search_protocol("coco_2017_val")


def test_errors(tmp_path, cache):
    with pytest.raises(DatasetNotFoundError, match="(?s)PRW root .* does not exist.*frame_train.mat"):
        load_prw(str(tmp_path / "none"), "train")
    root = make_prw(str(tmp_path / "a"), query_info=b"100 10 10 30 60 c1s1_000001\r\n")
    with pytest.raises(DatasetFormatError, match=r"query_info.txt:1: query image c1s1_000001.jpg is a training frame"):
        load_prw(root, "query")
    root = make_prw(str(tmp_path / "b"), query_info=b"100 10 10 30 c1s2_000010\r\n")
    with pytest.raises(DatasetFormatError, match=r"query_info.txt:1: expected 'pid x y w h imname'"):
        load_prw(root, "query")
    root = make_prw(str(tmp_path / "c"), test={"c1s2_000010": ("boxes", [[1, 1, 1, 5, 5]])})
    with pytest.raises(
        DatasetFormatError,
        match=r"c1s2_000010.jpg.mat: expected a variable named 'box_new' or 'anno_file' or 'anno_previous', "
        r"found \['boxes'\]",
    ):
        load_prw(root, "gallery")
    root = make_prw(str(tmp_path / "d"), test={"c1s2_000010": ("box_new", [[-5, 1, 1, 5, 5]])})
    with pytest.raises(DatasetFormatError, match="person id -5 out of range"):
        load_prw(root, "gallery")
    root = make_prw(str(tmp_path / "e"), test={"c1s2_000010": ("box_new", [[1, 1, 1, 5]])})
    with pytest.raises(DatasetFormatError, match=r"shape \(1, 4\), expected K x 5"):
        load_prw(root, "gallery")
    root = make_prw(str(tmp_path / "f"))
    os.remove(os.path.join(root, "annotations", "c3s1_000020.jpg.mat"))
    with pytest.raises(DatasetNotFoundError, match=r"missing file .*annotations/c3s1_000020.jpg.mat"):
        load_prw(root, "gallery")


def test_cache_and_attributes(tmp_path, cache, monkeypatch):
    root = make_prw(str(tmp_path / "prw"))
    first = load_prw(root, "gallery")
    monkeypatch.setattr(prw_mod, "_build_index", lambda *a: pytest.fail("cache miss"))
    common._MEMO.clear()
    assert load_prw(root, "gallery") == first  # from the disk cache
    # rewriting one annotation file invalidates the cache (directory digest of mtimes / sizes)
    changed = os.path.join(root, "annotations", "c2s2_000030.jpg.mat")
    savemat(changed, {"box_new": np.array([[201.0, 12, 8, 30, 50]])})
    os.utime(changed, ns=(1, 1))
    with pytest.raises(pytest.fail.Exception, match="cache miss"):
        load_prw(root, "gallery")
    monkeypatch.undo()
    monkeypatch.setenv("GALW_D2_CACHE", "off")
    persons = [
        {"image": n + ".jpg", "box": [x, y, x + w, y + h], "attributes": [int(pid > 0)]}
        for n, (_, rows) in {**TRAIN, **TEST}.items()
        for pid, x, y, w, h in rows
        if w > 0
    ]
    with open(os.path.join(root, "synthps_attributes.json"), "w") as f:
        json.dump({"attribute_names": ["labeled"], "persons": persons}, f)
    train = load_prw(root, "train")
    # the attribute file's [x, y, x + w, y + h] go through the same convention: shifted / truncated boxes match
    assert [a["attributes"] for a in train[0]["annotations"]] == [[1], [0], [1], [0]]
    register_synthps(root, "prw", "t_syn_prw")
    meta = MetadataCatalog.get("t_syn_prw_train")
    assert meta.synthps is True and meta.attribute_names == ["labeled"] and meta.dataset_type == "prw"


@pytest.mark.parametrize("convention", ["standard", "geometric"])
def test_box_conventions_hand_computed(tmp_path, cache, convention, caplog):
    """Standard = exactly the public loaders' integer boxes (gallery, train and query); geometric =
    float boxes clipped after the conversion."""
    root = make_prw(str(tmp_path / "prw"))
    want = EXPECTED[convention]
    with caplog.at_level(logging.WARNING):
        train = load_prw(root, "train", box_convention=convention)
    assert f"dropped {want['dropped']} box(es)" in caplog.text
    for r in train:
        assert [a["bbox"] for a in r["annotations"]] == want[r["image_name"][:-4]], r["image_name"]
    gallery = {r["image_name"][:-4]: r for r in load_prw(root, "gallery", box_convention=convention)}
    assert [a["bbox"] for a in gallery["c3s1_000020"]["annotations"]] == want["c3s1_000020"]
    query = load_prw(root, "query", box_convention=convention)
    np.testing.assert_array_equal(np.concatenate([q["query_boxes"] for q in query]), want["query"])
    proto = load_prw_protocol(root, box_convention=convention)
    np.testing.assert_array_equal([q.box for q in proto.queries], want["query"])
    np.testing.assert_array_equal(proto.gallery["c3s1_000020.jpg"].boxes, want["c3s1_000020"])
    if convention == "standard":  # integers, as the loaders' astype(np.int32)
        boxes = [b for r in train for a in r["annotations"] for b in a["bbox"]]
        assert all(float(b).is_integer() for b in boxes)


def test_convention_is_part_of_the_cache_key_and_registration(tmp_path, cache, monkeypatch):
    root = make_prw(str(tmp_path / "prw"))
    std = load_prw(root, "train")
    geo = load_prw(root, "train", box_convention="geometric")
    assert std[0]["annotations"][2]["bbox"] == [0, 5, 20, 45] and geo[0]["annotations"][2]["bbox"] == [0, 5, 17, 45]
    # both conventions are now on disk: a fresh process (memo cleared) gets each one back unchanged
    monkeypatch.setattr(prw_mod, "_build_index", lambda *a: pytest.fail("cache miss"))
    common._MEMO.clear()
    assert load_prw(root, "train", box_convention="geometric") == geo
    assert load_prw(root, "train") == std
    monkeypatch.undo()

    register_prw(root, prefix="t_prw_geo", box_convention="geometric")
    assert MetadataCatalog.get("t_prw_geo_train").box_convention == "geometric"
    assert DatasetCatalog.get("t_prw_geo_train")[0]["annotations"][2]["bbox"] == [0, 5, 17, 45]
    np.testing.assert_array_equal(
        [q.box for q in get_search_protocol("t_prw_geo_test").queries], EXPECTED["geometric"]["query"]
    )
    register_prw(root, prefix="t_prw_std")
    assert MetadataCatalog.get("t_prw_std_train").box_convention == "standard"
    np.testing.assert_array_equal(
        [q.box for q in get_search_protocol("t_prw_std_test").queries], EXPECTED["standard"]["query"]
    )
    with pytest.raises(ValueError, match=r"box_convention 'int': expected one of \('standard', 'geometric'\)"):
        register_prw(root, prefix="t_prw_bad", box_convention="int")
    with pytest.raises(ValueError, match="box_convention 'clip'"):
        load_prw(root, "train", box_convention="clip")
