"""Attribute pseudo-labels: generation round trip, resume after interruption, validation against the
dataset, merging into dataset dicts, the generator tool."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from galw_d2.attributes.pseudo_labels import (
    generate_pseudo_labels,
    load_pseudo_labels,
    merge_pseudo_labels,
    register_pseudo_labeled_dataset,
)
from galw_d2.attributes.recognizer import AttributeRecognizer, load_recognizer, save_checkpoint

NAMES = ["a0", "a1", "a2"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """5 scene images, 0..2 person boxes each (one image has none), + a tiny recognizer checkpoint."""
    from PIL import Image

    d = tmp_path_factory.mktemp("pl_scene")
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(5):
        p = d / f"s{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(p)
        anns = [
            {
                "bbox": [5.0 + 10 * k, 4.0, 30.0 + 10 * k, 55.0],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 0,
                "person_id": k,
            }
            for k in range(i % 3)
        ]
        dicts.append(
            {"file_name": str(p), "image_name": p.name, "image_id": i, "height": 60, "width": 80, "annotations": anns}
        )
    torch.manual_seed(0)
    model = AttributeRecognizer(3, "osnet_x0_25", ["conv2"], 8, 3, 4, (32, 16))
    ckpt = str(d / "rec.pth")
    save_checkpoint(model, ckpt, NAMES)
    return {"dicts": dicts, "ckpt": ckpt, "dir": d}


def _gen(scene, out, **kw):
    model, names, sha = load_recognizer(scene["ckpt"])
    return generate_pseudo_labels(
        model, scene["dicts"], str(out), names, scene["ckpt"], sha, "toy_train", progress=False, **kw
    ), sha


def test_round_trip_header_and_records(scene, tmp_path):
    stats, sha = _gen(scene, tmp_path / "pl.jsonl", threshold=0.5)
    assert stats == {"processed": 5, "skipped": 0, "total": 5}
    header, recs = load_pseudo_labels(str(tmp_path / "pl.jsonl"), scene["dicts"], NAMES, sha)
    assert header["attribute_names"] == NAMES and header["checkpoint_sha256"] == sha and header["num_images"] == 5
    assert sorted(recs) == [f"s{i}.jpg" for i in range(5)]
    for d in scene["dicts"]:
        r = recs[d["image_name"]]
        assert r["boxes"] == [a["bbox"] for a in d["annotations"]]
        probs = np.asarray(r["probs"]).reshape(-1, 3)
        assert ((probs >= 0) & (probs <= 1)).all()
        assert r["labels"] == [[int(p >= 0.5) for p in row] for row in r["probs"]]
    # the probabilities are the recognizer's on the crops
    from galw_d2.attributes.data import _crop_resize, _read_rgb

    model, _, _ = load_recognizer(scene["ckpt"])
    d = scene["dicts"][2]
    crops = np.stack([_crop_resize(_read_rgb(d["file_name"]), a["bbox"], (32, 16)) for a in d["annotations"]])
    expect = model.predict(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(recs["s2.jpg"]["probs"], expect, atol=1e-4)


def test_resume_skips_finished_and_redoes_cut_line(scene, tmp_path):
    full = tmp_path / "full.jsonl"
    _gen(scene, full)
    part = tmp_path / "part.jsonl"
    s1, _ = _gen(scene, part, max_images=2)
    assert s1 == {"processed": 2, "skipped": 0, "total": 5}
    with pytest.raises(ValueError, match="missing from the pseudo-label file"):
        load_pseudo_labels(str(part), scene["dicts"])
    with open(part, "a") as f:  # an interrupted write
        f.write('{"image": "s2.jpg", "boxes": [[5.0, 4')
    with pytest.raises(ValueError, match="incomplete"):
        load_pseudo_labels(str(part))
    s2, _ = _gen(scene, part)
    assert s2 == {"processed": 3, "skipped": 2, "total": 5}
    assert open(part).read() == open(full).read()
    s3, _ = _gen(scene, part)
    assert s3 == {"processed": 0, "skipped": 5, "total": 5}


def test_validation_errors(scene, tmp_path):
    out = tmp_path / "pl.jsonl"
    _, sha = _gen(scene, out)
    moved = [dict(d) for d in scene["dicts"]]
    moved[1] = dict(moved[1], annotations=[dict(moved[1]["annotations"][0], bbox=[9.0, 4.0, 30.0, 55.0])])
    with pytest.raises(ValueError, match=r"s1.jpg.*dataset box \[9.0, 4.0, 30.0, 55.0\] has no box within"):
        load_pseudo_labels(str(out), moved)
    extra = [dict(d) for d in scene["dicts"]]
    extra[0] = dict(extra[0], annotations=extra[2]["annotations"])
    with pytest.raises(ValueError, match="s0.jpg' has 2 person boxes in the dataset but 0 in the file"):
        load_pseudo_labels(str(out), extra)
    with pytest.raises(ValueError, match="attribute names"):
        load_pseudo_labels(str(out), attribute_names=["x", "y", "z"])
    with pytest.raises(ValueError, match="sha256"):
        load_pseudo_labels(str(out), checkpoint_sha256="0" * 64)
    model, names, _ = load_recognizer(scene["ckpt"])
    with pytest.raises(ValueError, match="checkpoint_sha256="):
        generate_pseudo_labels(
            model, scene["dicts"], str(out), names, scene["ckpt"], "f" * 64, "toy_train", progress=False
        )


def test_merge_and_register(scene, tmp_path):
    out = tmp_path / "pl.jsonl"
    _gen(scene, out)
    _, recs = load_pseudo_labels(str(out))
    rev = [dict(d, annotations=list(reversed(d["annotations"]))) for d in scene["dicts"]]  # order-independent
    merged = merge_pseudo_labels(rev, str(out))
    for d in merged:
        r = recs[d["image_name"]]
        for a in d["annotations"]:
            j = r["boxes"].index(a["bbox"])
            assert a["attributes"] == r["labels"][j]
    assert "attributes" not in rev[1]["annotations"][0]  # inputs untouched
    soft = merge_pseudo_labels(scene["dicts"], str(out), soft=True)
    assert soft[2]["annotations"][1]["attributes"] == recs["s2.jpg"]["probs"][1]
    DatasetCatalog.register("toy_pl_train", lambda: scene["dicts"])
    MetadataCatalog.get("toy_pl_train").set(num_train_pids=2)
    try:
        from detectron2.config import get_cfg

        from galw_d2 import add_galw_config
        from galw_d2.attributes.pseudo_labels import register_pseudo_labels_from_config

        cfg = add_galw_config(get_cfg())
        cfg.MODEL.ATTRIBUTES.PSEUDO_LABELS = [f"toy_pl_train={out}"]
        assert register_pseudo_labels_from_config(cfg) == ["toy_pl_train_attr"]
        cfg.MODEL.ATTRIBUTES.PSEUDO_LABELS = ["toy_pl_train"]
        with pytest.raises(ValueError, match="BASE_DATASET=PATH"):
            register_pseudo_labels_from_config(cfg)
        name = register_pseudo_labeled_dataset("toy_pl_train", str(out))
        assert name == "toy_pl_train_attr"
        assert MetadataCatalog.get(name).attribute_names == NAMES and MetadataCatalog.get(name).num_train_pids == 2
        got = DatasetCatalog.get(name)
        assert got[2]["annotations"][0]["attributes"] == recs["s2.jpg"]["labels"][0]
        # the data mapper turns them into gt_attributes
        from galw_d2.data import PersonSearchDatasetMapper

        cfg = add_galw_config(get_cfg())
        cfg.INPUT.PERSON_SEARCH.TRAIN_LONG_SIDE_RANGE = (80, 80)
        cfg.INPUT.PERSON_SEARCH.FLIP_PROB = 0.0
        inst = PersonSearchDatasetMapper(cfg, is_train=True)(got[2])["instances"]
        assert inst.gt_attributes.tolist() == [[float(v) for v in row] for row in recs["s2.jpg"]["labels"]]
    finally:
        for n in ("toy_pl_train", "toy_pl_train_attr"):
            if n in DatasetCatalog.list():
                DatasetCatalog.remove(n)
                MetadataCatalog.remove(n)


def test_generator_tool_cli(scene, tmp_path, capsys):
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "gen_tool", os.path.join(root, "tools/generate_attribute_pseudo_labels.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    DatasetCatalog.register("toy_cli_train", lambda: scene["dicts"])
    out = tmp_path / "cli.jsonl"
    try:
        s = tool.main(
            ["--checkpoint", scene["ckpt"], "--dataset", "toy_cli_train", "--output", str(out), "--max-images", "3"]
        )
        assert s["processed"] == 3 and "validated" not in s
        s = tool.main(["--checkpoint", scene["ckpt"], "--dataset", "toy_cli_train", "--output", str(out)])
        assert s == {"processed": 2, "skipped": 3, "total": 5, "validated": True}
        assert "pseudo-labels" in capsys.readouterr().err  # the progress bar
    finally:
        DatasetCatalog.remove("toy_cli_train")
    header = json.loads(open(out).readline())
    assert header["dataset"] == "toy_cli_train" and header["checkpoint"] == os.path.abspath(scene["ckpt"])
