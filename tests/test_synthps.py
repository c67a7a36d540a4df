"""SynthPS: generator invariants, official .mat/.txt structures, determinism, round trip through the
real CUHK-SYSU / PRW loaders, attributes, command line."""

import hashlib
import importlib.util
import json
import os
import time

import numpy as np
import pytest
import scipy.io

from galw_d2.data.synthps import ATTRIBUTE_NAMES, PRESETS, generate_synthps, load_truth, render_preview, summarize
from galw_d2.data.synthps.appearance import Appearance, attributes_of, sample_identities
from galw_d2.data.synthps.render import draw_person

FORMATS = ("cuhk_sysu", "prw")


def _xyxy(b):
    x, y, w, h = b
    return (float(x), float(y), float(x + w), float(y + h))


def _tree_digest(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------- appearance
def test_attributes_of_hand_built_appearance():
    app = Appearance(
        0.25,
        0.07,
        0.3,
        (200, 150, 110),
        (20, 15, 10),
        long_hair=True,
        hat=False,
        hat_colour="red",
        upper="navy",
        upper_pattern="stripes",
        upper2="white",
        lower="beige",
        lower_type="skirt",
        bag="backpack",
        bag_colour="black",
        shoes=(25, 25, 25),
    )
    attrs = dict(zip(ATTRIBUTE_NAMES, attributes_of(app)))
    expected_on = {"long_hair", "backpack", "upper_striped", "upper_blue", "lower_light", "skirt"}
    assert {k for k, v in attrs.items() if v} == expected_on
    assert len(ATTRIBUTE_NAMES) == 16 and len(set(ATTRIBUTE_NAMES)) == 16


def test_identities_distinct_but_share_attributes():
    apps = sample_identities(np.random.default_rng(3), 60, set())
    sigs = [a.signature() for a in apps]
    assert len(set(sigs)) == 60  # distinguishable identities
    attrs = np.array([attributes_of(a) for a in apps])
    # re-id is not attribute lookup: several identities share each full attribute vector or most bits
    assert len({tuple(r) for r in attrs}) < 60
    assert (attrs.sum(0) > 0).all() and (attrs.sum(0) < 60).all()  # every attribute varies


def test_draw_person_height_and_mask():
    app = sample_identities(np.random.default_rng(0), 1, set())[0]
    for h in (40, 90, 160):
        patch, mask = draw_person(app, h, np.random.default_rng(h))
        assert patch.shape[:2] == mask.shape and patch.dtype == np.uint8
        assert 0.85 * h <= mask.shape[0] <= h + 4, (h, mask.shape)
        assert 0.2 * h <= mask.shape[1] <= 0.75 * h
        # cropped tight: every border row/column touches the figure
        on = mask > 127
        assert on[0].any() and on[-1].any() and on[:, 0].any() and on[:, -1].any()


# ------------------------------------------------------------------------------------------- layouts
def test_cuhk_sysu_files_have_the_official_structure(synthps_tiny):
    root = synthps_tiny["cuhk_sysu"]
    truth = load_truth(root)
    ann = os.path.join(root, "annotation")
    img = scipy.io.loadmat(os.path.join(ann, "Images.mat"))["Img"]
    assert img.shape == (1, len(truth.scenes)) and img.dtype.names == ("imname", "nAppear", "box")
    by_name = {s.name: s for s in truth.scenes}
    for e in img.squeeze():
        name = str(e["imname"][0])
        s = by_name[name]
        assert os.path.isfile(os.path.join(root, "Image", "SSM", name)) and name[0] == "s" and name[1:-4].isdigit()
        assert e["box"].dtype.names == ("idlocate", "ishard")
        assert int(e["nAppear"][0, 0]) == len(s.persons) == e["box"].shape[1]
        boxes = np.asarray([b[0] for b in e["box"][0]]).reshape(-1, 4)  # how the public loaders read it
        assert boxes.tolist() == [list(p.box) for p in s.persons]
    pool = [str(a[0]) for a in scipy.io.loadmat(os.path.join(ann, "pool.mat"))["pool"].squeeze()]
    assert sorted(pool) == sorted(s.name for s in truth.scenes if s.split == "test")

    train = scipy.io.loadmat(os.path.join(ann, "test", "train_test", "Train.mat"))["Train"]
    n_train_ids = truth.identity_split.count("train")
    assert train.shape == (n_train_ids, 1) and train.dtype == object
    for cell in train.squeeze():
        assert cell.shape == (1, 1) and cell.dtype.names == ("idname", "nAppear", "scene")
        scene = cell[0, 0]["scene"]
        assert scene.dtype.names == ("imname", "idlocate", "ishard")
        assert scene.shape[1] == int(cell[0, 0]["nAppear"][0, 0]) >= 2
        for im, box, _ in scene.squeeze():
            assert by_name[str(im[0])].split == "train"
            assert tuple(box.squeeze().astype(int)) in {p.box for p in by_name[str(im[0])].persons}

    n_test = len(pool)
    expected_sizes = [g for g in (50, 100, 500, 1000, 2000, 4000) if g <= n_test - 1] or [50]
    files = sorted(os.listdir(os.path.join(ann, "test", "train_test")))
    assert files == sorted(["Train.mat"] + [f"TestG{g}.mat" for g in expected_sizes])
    g = expected_sizes[0]
    protoc = scipy.io.loadmat(os.path.join(ann, "test", "train_test", f"TestG{g}.mat"))[f"TestG{g}"]
    assert protoc.shape == (1, len(truth.queries)) and protoc.dtype.names == ("Query", "Gallery")
    for item, q in zip(protoc.squeeze(), truth.queries):
        qs = truth.scenes[q.scene]
        assert item["Query"].dtype.names == ("imname", "idlocate", "ishard", "idname")
        assert str(item["Query"][0, 0]["imname"][0]) == qs.name
        assert tuple(item["Query"][0, 0]["idlocate"].squeeze().astype(int)) == qs.persons[q.person].box
        gallery = item["Gallery"].squeeze()
        assert len(gallery) == min(g, n_test - 1)
        names = [str(e["imname"][0]) for e in gallery]
        assert qs.name not in names and len(set(names)) == len(names)
        present = [e["idlocate"].size > 0 for e in gallery]
        # the images with the person first, then empty (1x0) idlocate, as in the released files
        assert present == sorted(present, reverse=True) and any(present) and not all(present)
        for e, has in zip(gallery, present):
            if not has:
                assert e["idlocate"].shape == (1, 0)
                assert all(p.identity != q.identity for p in by_name[str(e["imname"][0])].persons)


def test_prw_files_have_the_official_structure(synthps_tiny):
    root = synthps_tiny["prw"]
    truth = load_truth(root)
    by_name = {s.name: s for s in truth.scenes}
    for s in truth.scenes:
        assert os.path.isfile(os.path.join(root, "frames", s.name))
        assert s.name.startswith(f"c{s.camera}s") and len(s.name.split("_")[1]) == len("000123.jpg")
        mat = scipy.io.loadmat(os.path.join(root, "annotations", s.name + ".mat"))
        rows = mat["box_new"]
        assert rows.shape == (len(s.persons), 5) and rows.dtype == np.float64
        for r, p in zip(rows, s.persons):
            assert r[0] == (p.pid if p.pid >= 0 else -2) and tuple(r[1:].astype(int)) == p.box
    for split, f, key in (
        ("train", "frame_train.mat", "img_index_train"),
        ("test", "frame_test.mat", "img_index_test"),
    ):
        arr = scipy.io.loadmat(os.path.join(root, f))[key]
        assert arr.shape[1] == 1 and arr.dtype == object
        names = [str(x[0][0]) for x in arr]
        assert sorted(n + ".jpg" for n in names) == sorted(s.name for s in truth.scenes if s.split == split)
    raw = open(os.path.join(root, "query_info.txt"), "rb").read()
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(truth.queries) and b"\n" not in raw.replace(b"\r\n", b"")
    for line, q in zip(lines, truth.queries):
        pid, x, y, w, h, name = line.decode().split(" ")
        p = truth.scenes[q.scene].persons[q.person]
        assert (int(pid), (int(x), int(y), int(w), int(h)), name + ".jpg") == (p.pid, p.box, truth.scenes[q.scene].name)
        assert by_name[name + ".jpg"].split == "test"
    train_pids = {p.pid for s in truth.scenes if s.split == "train" for p in s.persons if p.pid >= 0}
    test_pids = {p.pid for s in truth.scenes if s.split == "test" for p in s.persons if p.pid >= 0}
    assert train_pids and test_pids and not (train_pids & test_pids)


# ------------------------------------------------------------------------------------------- generator
@pytest.mark.parametrize("fmt", FORMATS)
def test_truth_invariants(synthps_tiny, fmt):
    truth = load_truth(synthps_tiny[fmt])
    preset = PRESETS["tiny"]
    H, W = preset.image_hw
    inst = {}
    for s in truth.scenes:
        assert (s.height, s.width) == (H, W) and s.persons, s.name
        ids = [p.identity for p in s.persons if p.identity >= 0]
        assert len(ids) == len(set(ids)), f"{s.name}: identity twice in one image"
        assert len({p.box for p in s.persons}) == len(s.persons)
        for p in s.persons:
            x, y, w, h = p.box
            assert x >= 0 and y >= 0 and x + w <= W and y + h <= H and w > 0 and h > 0
            assert preset.person_height[0] - 4 <= h <= preset.person_height[1] + 4
            if p.identity >= 0:
                assert truth.identity_split[p.identity] == s.split  # train / test identities disjoint
                inst.setdefault(p.identity, []).append((s, p))
    assert len(inst) == preset.train_ids + preset.test_ids
    for ident, lst in inst.items():
        assert len(lst) >= 2
        assert len({tuple(p.attributes) for _, p in lst}) == 1  # attributes follow the identity
    assert sum(p.identity < 0 for s in truth.scenes for p in s.persons) > 0  # unlabeled distractors
    assert any(p.occlusion > 0.1 for s in truth.scenes for p in s.persons)  # some occlusion
    assert len({s.camera for s in truth.scenes}) == preset.cameras
    for q in truth.queries:  # a query's person is seen in another test image, some from another camera
        assert truth.identity_split[q.identity] == "test"
        others = [s for s, _ in inst[q.identity] if s.index != q.scene]
        assert others
    assert (
        sum(any(s.camera != truth.scenes[q.scene].camera for s, _ in inst[q.identity]) for q in truth.queries)
        >= len(truth.queries) - 1
    )
    summ = summarize(truth)
    assert summ["train"]["images"] == preset.train_images and summ["test"]["images"] == preset.test_images
    assert summ["queries"] == preset.test_ids


def test_deterministic_bytes_and_tiny_speed(tmp_path, synthps_tiny):
    t0 = time.time()
    roots = {fmt: generate_synthps(str(tmp_path / fmt), fmt, "tiny", 0) for fmt in FORMATS}
    elapsed = time.time() - t0
    assert elapsed < 10.0, f"tiny generation of both formats took {elapsed:.1f} s"
    for fmt in FORMATS:
        a, b = _tree_digest(synthps_tiny[fmt]), _tree_digest(roots[fmt])
        a.pop("preview.jpg", None)
        assert a == b, fmt
    # another seed into the existing SynthPS root: different bytes, replaced without stale files
    again = generate_synthps(roots["prw"], "prw", "tiny", 1)
    digest = _tree_digest(again)
    assert digest != _tree_digest(synthps_tiny["prw"])
    names = [s.name for s in load_truth(again).scenes]
    expected = {"frame_train.mat", "frame_test.mat", "query_info.txt", "synthps_attributes.json", "synthps_meta.json"}
    expected |= {os.path.join("frames", n) for n in names} | {os.path.join("annotations", n + ".mat") for n in names}
    assert set(digest) == expected


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="format 'coco'.*cuhk_sysu"):
        generate_synthps(str(tmp_path / "a"), "coco", "tiny", 0)
    with pytest.raises(ValueError, match="preset 'huge'.*small"):
        generate_synthps(str(tmp_path / "a"), "prw", "huge", 0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not a SynthPS root"):
        generate_synthps(str(tmp_path / "mine"), "prw", "tiny", 0)
    assert (tmp_path / "mine" / "thesis.tex").exists()
    with pytest.raises(FileNotFoundError, match="synthps_meta.json"):
        load_truth(str(tmp_path / "mine"))


# ------------------------------------------------------------------------------------------- round trip
def _check_records(records, scenes_by_name, attr_names_ok=True):
    """Every record's boxes/attributes equal the truth; returns {(image, box): person_id}."""
    ids = {}
    for r in records:
        s = scenes_by_name[r["image_name"]]
        assert (r["height"], r["width"]) == (s.height, s.width)
        assert os.path.basename(r["file_name"]) == s.name and os.path.isfile(r["file_name"])
        got = sorted((tuple(a["bbox"]), tuple(a["attributes"])) for a in r["annotations"])
        want = sorted((_xyxy(p.box), tuple(p.attributes)) for p in s.persons)
        assert got == want, s.name
        for a in r["annotations"]:
            assert a["category_id"] == 0
            ids[(s.name, tuple(a["bbox"]))] = a["person_id"]
    return ids


def _check_identities(ids, scenes, split):
    """Loader ids form the same partition as the truth identities; unlabeled -> -1."""
    mapping = {}
    for s in scenes:
        if s.split != split:
            continue
        for p in s.persons:
            got = ids[(s.name, _xyxy(p.box))]
            if p.identity < 0:
                assert got == -1, (s.name, p.box)
            else:
                assert got >= 0
                assert mapping.setdefault(p.identity, got) == got
    assert len(set(mapping.values())) == len(mapping)
    return mapping


def test_round_trip_cuhk_sysu(synthps_tiny):
    from galw_d2.data.datasets.cuhk_sysu import load_cuhk_sysu, load_cuhk_sysu_protocol

    root = synthps_tiny["cuhk_sysu"]
    truth = load_truth(root)
    by_name = {s.name: s for s in truth.scenes}
    train = load_cuhk_sysu(root, "train")
    gallery = load_cuhk_sysu(root, "gallery")
    assert sorted(r["image_name"] for r in train) == sorted(s.name for s in truth.scenes if s.split == "train")
    assert sorted(r["image_name"] for r in gallery) == sorted(s.name for s in truth.scenes if s.split == "test")
    tmap = _check_identities(_check_records(train, by_name), truth.scenes, "train")
    assert sorted(tmap.values()) == list(range(truth.identity_split.count("train")))  # contiguous 0..K-1
    gmap = _check_identities(_check_records(gallery, by_name), truth.scenes, "test")
    queries = load_cuhk_sysu(root, "query")
    assert len(queries) == len(truth.queries)
    for r, q in zip(queries, truth.queries):
        s, p = truth.scenes[q.scene], truth.scenes[q.scene].persons[q.person]
        assert r["image_name"] == s.name and r["query_pid"] == gmap[q.identity]
        assert r["query_boxes"].tolist() == [list(_xyxy(p.box))]
    for g, lists in truth.galleries.items():
        proto = load_cuhk_sysu_protocol(root, gallery_size=g)
        assert proto.rule == "explicit" and len(proto.queries) == len(truth.queries)
        for pq, q, glist in zip(proto.queries, truth.queries, lists):
            assert pq.pid == gmap[q.identity] and pq.image == truth.scenes[q.scene].name
            assert [(n, None if b is None else tuple(b.tolist())) for n, b in pq.gallery] == [
                (n, None if b is None else _xyxy(b)) for n, b in glist
            ]
    assert set(truth.subsets) == {"Occlusion", "Resolution"}  # seed 0 tiny has both
    for name, (ks, g) in truth.subsets.items():
        proto = load_cuhk_sysu_protocol(root, subset=name)
        assert proto.name == name and proto.rule == "explicit"
        assert [(q.image, q.pid) for q in proto.queries] == [
            (truth.scenes[truth.queries[k].scene].name, gmap[truth.queries[k].identity]) for k in ks
        ]
        assert [[(n, None if b is None else tuple(b.tolist())) for n, b in q.gallery] for q in proto.queries] == [
            [(n, None if b is None else _xyxy(b)) for n, b in truth.galleries[g][k]] for k in ks
        ]
    full = load_cuhk_sysu_protocol(root, gallery_size=-1)
    assert full.rule == "all_but_query" and set(full.gallery) == {s.name for s in truth.scenes if s.split == "test"}


def test_round_trip_prw(synthps_tiny):
    from galw_d2.data.datasets.prw import load_prw, load_prw_protocol

    root = synthps_tiny["prw"]
    truth = load_truth(root)
    by_name = {s.name: s for s in truth.scenes}
    train, gallery, queries = (load_prw(root, sp) for sp in ("train", "gallery", "query"))
    for recs, split in ((train, "train"), (gallery, "test")):
        assert sorted(r["image_name"] for r in recs) == sorted(s.name for s in truth.scenes if s.split == split)
        for r in recs:
            assert r["camera_id"] == by_name[r["image_name"]].camera
    tmap = _check_identities(_check_records(train, by_name), truth.scenes, "train")
    # train ids remapped to 0..K-1 in ascending order of the file ids
    file_pid = {p.identity: p.pid for s in truth.scenes for p in s.persons if p.identity >= 0}
    assert [tmap[i] for i in sorted(tmap, key=lambda i: file_pid[i])] == list(range(len(tmap)))
    gmap = _check_identities(_check_records(gallery, by_name), truth.scenes, "test")
    assert all(gmap[i] == file_pid[i] for i in gmap)  # gallery keeps the original ids
    assert len(queries) == len(truth.queries)
    for r, q in zip(queries, truth.queries):
        s, p = truth.scenes[q.scene], truth.scenes[q.scene].persons[q.person]
        assert (r["image_name"], r["query_pid"], r["camera_id"]) == (s.name, p.pid, s.camera)
        assert r["query_boxes"].tolist() == [list(_xyxy(p.box))]
    for cross, rule in ((False, "all_but_query"), (True, "other_cameras")):
        proto = load_prw_protocol(root, cross_camera=cross)
        assert proto.rule == rule and [(q.image, q.pid) for q in proto.queries] == [
            (truth.scenes[q.scene].name, truth.scenes[q.scene].persons[q.person].pid) for q in truth.queries
        ]
        assert {n: g.camera for n, g in proto.gallery.items()} == {
            s.name: s.camera for s in truth.scenes if s.split == "test"
        }


@pytest.mark.parametrize("fmt", FORMATS)
def test_attribute_file_and_registration(synthps_tiny, fmt):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from galw_d2.data import register_synthps

    root = synthps_tiny[fmt]
    truth = load_truth(root)
    with open(os.path.join(root, "synthps_attributes.json")) as f:
        attr = json.load(f)
    assert attr["attribute_names"] == list(ATTRIBUTE_NAMES)
    n_boxes = sum(len(s.persons) for s in truth.scenes)
    assert len(attr["persons"]) == n_boxes  # labeled and unlabeled
    for e in attr["persons"]:
        assert all(isinstance(v, int) for v in e["box"]) and set(e["attributes"]) <= {0, 1}
        assert len(e["attributes"]) == len(ATTRIBUTE_NAMES)
    prefix = f"test_synthps_{fmt}"
    register_synthps(root, fmt, prefix, preset="tiny")
    meta = MetadataCatalog.get(prefix + "_train")
    assert meta.synthps is True and meta.num_train_pids == PRESETS["tiny"].train_ids
    assert list(meta.attribute_names) == list(ATTRIBUTE_NAMES)
    recs = DatasetCatalog.get(prefix + "_train")
    assert sum(len(r["annotations"]) for r in recs) == sum(len(s.persons) for s in truth.scenes if s.split == "train")


@pytest.mark.parametrize("fmt", FORMATS)
def test_both_box_conventions_read_the_same_boxes(synthps_tiny, fmt):
    """SynthPS writes integer boxes inside the image: "standard" (the default, checked against the truth
    above) and "geometric" give the same records and protocols, so the writer round-trips under both."""
    from galw_d2.data.datasets import load_cuhk_sysu, load_cuhk_sysu_protocol, load_prw, load_prw_protocol

    load, proto = (load_cuhk_sysu, load_cuhk_sysu_protocol) if fmt == "cuhk_sysu" else (load_prw, load_prw_protocol)
    root = synthps_tiny[fmt]

    def boxes(recs):
        return [
            ([a["bbox"] for a in r["annotations"]], r["query_boxes"].tolist() if "query_boxes" in r else None)
            for r in recs
        ]

    assert boxes(load(root, "test", box_convention="geometric")) == boxes(load(root, "test"))
    kw = {"gallery_size": 50} if fmt == "cuhk_sysu" else {}  # tiny writes TestG50 only
    a, b = proto(root, **kw), proto(root, box_convention="geometric", **kw)
    assert [q.box.tolist() for q in a.queries] == [q.box.tolist() for q in b.queries]
    assert {n: g.boxes.tolist() for n, g in a.gallery.items()} == {n: g.boxes.tolist() for n, g in b.gallery.items()}


def test_medium_preset_is_as_documented():
    """The sizes docs/synthps.md gives for ``medium`` (generating it takes ~20 s: not done here)."""
    m, s = PRESETS["medium"], PRESETS["small"]
    assert (m.train_images, m.train_ids, m.test_images, m.test_ids) == (1200, 300, 500, 400)
    # same generator settings as small: image size, person heights, cameras, people per image, occluders
    assert (m.image_hw, m.person_height, m.cameras, m.labeled_per_image, m.distractors_per_image, m.occlusion_prob) == (
        s.image_hw,
        s.person_height,
        s.cameras,
        s.labeled_per_image,
        s.distractors_per_image,
        s.occlusion_prob,
    )
    # the generator needs room for 2 instances of every test id: expected capacity 500 x 2 = 1000 >= 800
    # (a 1000-sum of 500 draws of 1..3 has std ~18); 500 test images -> TestG50 and TestG100 (500 needs 501)
    assert m.test_images * sum(m.labeled_per_image) / 2 >= 1.2 * 2 * m.test_ids
    from galw_d2.data.synthps.writers import _gallery_sizes

    assert _gallery_sizes(m.test_images) == [50, 100]
    from galw_d2.data.builtin import SYNTHPS_PRESETS

    assert "medium" in SYNTHPS_PRESETS


# ------------------------------------------------------------------------------------------- command line
def test_make_synthps_command(tmp_path, capsys, repo_root):
    spec = importlib.util.spec_from_file_location("make_synthps", os.path.join(repo_root, "tools", "make_synthps.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cli"
    assert (
        mod.main(
            [
                "--output",
                str(out),
                "--format",
                "cuhk_sysu",
                "--preset",
                "tiny",
                "--seed",
                "2",
                "--preview",
                str(tmp_path / "p.png"),
                "--preview-scenes",
                "6",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    p = PRESETS["tiny"]
    assert f"train: {p.train_images} images, {p.train_ids} ids" in text
    assert f"test:  {p.test_images} images, {p.test_ids} ids" in text and f"{p.test_ids} queries" in text
    import cv2

    prev = cv2.imread(str(tmp_path / "p.png"))
    H, W = p.image_hw
    assert prev.shape == (2 * H, 4 * W, 3)  # 6 scenes in a 4-column grid
    assert render_preview(str(out)) == str(out / "preview.jpg") and (out / "preview.jpg").is_file()
    with pytest.raises(SystemExit):
        mod.main(["--output", str(out), "--format", "voc"])
