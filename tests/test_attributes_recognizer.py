"""The stand-alone attribute recognizer: data loaders, training beats a constant predictor,
checkpoints, backbone weights, the train tool."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from galw_d2 import add_galw_config
from galw_d2.attributes.data import (
    CropDataset,
    load_attribute_list,
    load_pa100k,
    load_synthps_crops,
    write_attribute_list,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["upper_red", "lower_dark", "hat"]


def _person(rng, attrs, h=48, w=24):
    """A hand-made 'person' crop whose three attributes are visible: red vs green upper half, dark vs
    light lower half, white hat block on top; plus noise."""
    img = np.full((h, w, 3), 128, np.float32)
    img[h // 6 : h // 2, 3:-3] = (200, 30, 30) if attrs[0] else (30, 160, 40)
    img[h // 2 :, 4:-4] = (25, 25, 25) if attrs[1] else (220, 220, 210)
    if attrs[2]:
        img[: h // 6, w // 4 : -w // 4] = (250, 250, 250)
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_list_dataset(folder, n, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    samples = []
    for i in range(n):
        a = [int(v) for v in rng.random(3) < (0.5, 0.4, 0.3)]
        p = os.path.join(folder, f"p{i:03d}.png")
        Image.fromarray(_person(rng, a)).save(p)
        samples.append(
            {"file_name": os.path.join(os.path.basename(folder), os.path.basename(p)), "box": None, "attributes": a}
        )
    path = folder + ".txt"
    write_attribute_list(path, samples, NAMES)
    return path


@pytest.fixture(scope="module")
def list_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("attr_lists")
    return {"train": make_list_dataset(str(d / "train"), 96, 0), "test": make_list_dataset(str(d / "test"), 48, 1)}


def _cfg(list_data, out_epochs=5):
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs/attributes/alm_synthps_tiny.yaml"))
    cfg.ATTRIBUTE_NET.DATA.TYPE = "list"
    cfg.ATTRIBUTE_NET.DATA.TRAIN_LIST = list_data["train"]
    cfg.ATTRIBUTE_NET.DATA.TEST_LIST = list_data["test"]
    cfg.ATTRIBUTE_NET.INPUT_SIZE = (48, 24)
    cfg.ATTRIBUTE_NET.IN_FEATURES = ["conv2"]  # stop the backbone early: CPU-cheap
    cfg.ATTRIBUTE_NET.EPOCHS = out_epochs
    cfg.ATTRIBUTE_NET.BATCH_SIZE = 16
    cfg.SOLVER.BASE_LR = 0.005
    return cfg


def test_list_file_round_trip_and_errors(list_data, tmp_path):
    samples, names = load_attribute_list(list_data["train"])
    assert names == NAMES and len(samples) == 96
    assert os.path.isfile(samples[0]["file_name"]) and all(v in (0, 1) for v in samples[0]["attributes"])
    ds = CropDataset(samples[:4], (32, 16))
    x, y = ds[0]
    assert x.shape == (3, 32, 16) and 0 <= x.min() and x.max() <= 1 and y.tolist() == samples[0]["attributes"]
    bad = tmp_path / "bad.txt"
    bad.write_text("# attributes: a b\nimg.png 0 1\nimg2.png 0 1 1\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: 3 attribute values, expected 2"):
        load_attribute_list(str(bad))
    bad.write_text("img.png 0 2\n")
    with pytest.raises(ValueError, match="0, 1 or -1"):
        load_attribute_list(str(bad))


def test_pa100k_annotation_mat(tmp_path):
    from scipy.io import savemat

    names = np.array([["Female"], ["Hat"]], dtype=object)
    ann = {
        "attributes": names,
        "train_images_name": np.array([["000001.jpg"], ["000002.jpg"]], dtype=object),
        "train_label": np.array([[1, 0], [0, 1]], np.uint8),
        "val_images_name": np.array([["000003.jpg"]], dtype=object),
        "val_label": np.array([[1, 1]], np.uint8),
        "test_images_name": np.array([["000004.jpg"]], dtype=object),
        "test_label": np.array([[0, 0]], np.uint8),
    }
    savemat(str(tmp_path / "annotation.mat"), ann)
    (tmp_path / "data").mkdir()
    s, n = load_pa100k(str(tmp_path), "train+val")
    assert n == ["Female", "Hat"]
    assert [os.path.basename(x["file_name"]) for x in s] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert [x["attributes"] for x in s] == [[1, 0], [0, 1], [1, 1]]
    assert os.path.dirname(s[0]["file_name"]) == str(tmp_path / "data")
    ann["test_label"] = np.array([[0, 0, 1]], np.uint8)
    savemat(str(tmp_path / "annotation.mat"), ann)
    with pytest.raises(ValueError, match=r"test_label has shape \(1, 3\), expected \(1, 2\)"):
        load_pa100k(str(tmp_path), "test")


def test_recognizer_trains_beats_constant_and_checkpoint_round_trips(list_data, tmp_path):
    from galw_d2.attributes.data import load_attribute_samples
    from galw_d2.attributes.engine import CropDataset as _CD
    from galw_d2.attributes.engine import evaluate_checkpoint, predict_samples, train_and_evaluate
    from galw_d2.attributes.recognizer import load_recognizer

    cfg = _cfg(list_data)
    out = train_and_evaluate(cfg, str(tmp_path / "run"), progress=False)
    m = json.load(open(tmp_path / "run" / "metrics.json"))
    for k in ("mA", "accuracy", "precision", "recall", "F1"):
        assert 0.0 <= m[k] <= 1.0
    assert m["num_train"] == 96 and m["num_test"] == 48
    # the majority constant scores mA 0.5 on attributes with both classes
    assert m["constant_mA"] == pytest.approx(0.5)
    assert m["mA"] > m["constant_mA"] + 0.15, m
    model, names, sha = load_recognizer(out["checkpoint"])
    assert names == NAMES and sha == m["checkpoint_sha256"] and len(sha) == 64
    test_s, _ = load_attribute_samples(cfg, "test")
    probs = predict_samples(model, _CD(test_s, (48, 24)))
    assert probs.shape == (48, 3)
    again = evaluate_checkpoint(cfg, out["checkpoint"])
    assert again["mA"] == pytest.approx(m["mA"])


def test_backbone_weights_load_and_errors(tmp_path):
    from galw_d2.attributes.recognizer import AttributeRecognizer, load_backbone_weights, load_recognizer

    a = AttributeRecognizer(2, "osnet_x0_25", ["conv2"], 8, 3, 4, (32, 16))
    sd = {"module." + k: v + 1.0 if v.is_floating_point() else v for k, v in a.backbone.state_dict().items()}
    p = tmp_path / "bb.pth"
    torch.save({"state_dict": sd}, p)
    b = AttributeRecognizer(2, "osnet_x0_25", ["conv2"], 8, 3, 4, (32, 16), backbone_weights=str(p))
    k = "conv1.conv.weight"
    torch.testing.assert_close(b.backbone.state_dict()[k], a.backbone.state_dict()[k] + 1.0)
    torch.save({"foo.bar": torch.zeros(3)}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="no parameter matches"):
        load_backbone_weights(b.backbone, str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="not a galw_d2 attribute recognizer"):
        load_recognizer(str(p))
    with pytest.raises(ValueError, match="not children"):
        AttributeRecognizer(2, "osnet_x0_25", ["layer9"])


def test_train_tool_on_synthps_tiny_beats_constant(synthps_tiny, tmp_path):
    """tools/train_attribute_net.py on the SynthPS tiny crops (true attributes): metrics.json of the
    held-out (test-image) crops, mA above the majority-constant predictor."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_attr_tool", os.path.join(ROOT, "tools/train_attribute_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "run"
    tool.main(
        [
            "--no-progress",
            "--config-file",
            os.path.join(ROOT, "configs/attributes/alm_synthps_tiny.yaml"),
            "--output",
            str(out),
            "ATTRIBUTE_NET.DATA.ROOT",
            synthps_tiny["cuhk_sysu"],
            "ATTRIBUTE_NET.IN_FEATURES",
            "['conv2']",
            "ATTRIBUTE_NET.INPUT_SIZE",
            "(48, 24)",
            "ATTRIBUTE_NET.EPOCHS",
            "12",
        ]
    )
    m = json.load(open(out / "metrics.json"))
    assert {"mA", "accuracy", "precision", "recall", "F1"} <= set(m)
    assert all(0.0 <= m[k] <= 1.0 for k in ("mA", "accuracy", "precision", "recall", "F1"))

    test_s, names = load_synthps_crops(synthps_tiny["cuhk_sysu"], "test")
    assert m["num_test"] == len(test_s) and m["attribute_names"] == names
    assert m["mA"] > m["constant_mA"] + 0.05, m
