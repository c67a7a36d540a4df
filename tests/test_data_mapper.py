"""PersonSearchDatasetMapper: resize + flip against hand-computed boxes, test-time fitting, embed_boxes."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from PIL import Image

from galw_d2 import add_galw_config
from galw_d2.data import PersonSearchDatasetMapper
from galw_d2.data.mapper import RandomLongSideResize


def _cfg(**ps):
    cfg = add_galw_config(get_cfg())
    for k, v in ps.items():
        setattr(cfg.INPUT.PERSON_SEARCH, k, v)
    return cfg


@pytest.fixture
def record(tmp_path):
    img = np.zeros((50, 100, 3), dtype=np.uint8)  # H = 50, W = 100
    img[:, :10] = 255  # a white band on the left, to see the flip
    path = str(tmp_path / "s1.jpg")
    Image.fromarray(img).save(path, quality=100)
    ann = lambda b, pid, attr: {
        "bbox": b,
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 0,
        "person_id": pid,
        "attributes": attr,
    }
    return {
        "file_name": path,
        "image_id": 7,
        "image_name": "s1.jpg",
        "height": 50,
        "width": 100,
        "camera_id": 3,
        "annotations": [
            ann([10, 20, 40, 50], 4, [1, 0]),
            ann([150, 10, 170, 20], 5, [0, 0]),  # 2nd: outside
            ann([60, 5, 90, 45], -1, [0, 1]),
        ],
    }


def test_train_resize_and_flip_hand_computed(record):
    mapper = PersonSearchDatasetMapper(_cfg(TRAIN_LONG_SIDE_RANGE=(200, 200), FLIP_PROB=1.0), is_train=True)
    out = mapper(record)
    # long side 100 -> 200: scale 2, image 200 x 100; boxes x2, then x -> 200 - x
    assert out["image"].shape == (3, 100, 200) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"], out["image_name"], out["image_id"], out["camera_id"]) == (
        50,
        100,
        "s1.jpg",
        7,
        3,
    )
    assert out["is_query"] is False and out["query_index"] == -1
    assert out["image"][:, :, -20:].float().mean() > 200 and out["image"][:, :, :20].float().mean() < 50  # flipped
    inst = out["instances"]
    assert inst.image_size == (100, 200)
    # [10,20,40,50] -> [20,40,80,100] -> [120,40,180,100]; [60,5,90,45] -> [120,10,180,90] -> [20,10,80,90];
    # the box outside the image is clipped to zero width and removed, with its pid and attributes
    np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), [[120, 40, 180, 100], [20, 10, 80, 90]])
    assert inst.gt_pids.dtype == torch.int64 and inst.gt_pids.tolist() == [4, -1]
    assert inst.gt_classes.tolist() == [0, 0]
    assert inst.gt_attributes.dtype == torch.float32 and inst.gt_attributes.tolist() == [[1, 0], [0, 1]]
    assert record["annotations"][0]["bbox"] == [10, 20, 40, 50]  # the record is not modified


def test_train_no_flip_no_attributes(record):
    for a in record["annotations"]:
        del a["attributes"]
    out = PersonSearchDatasetMapper(_cfg(TRAIN_LONG_SIDE_RANGE=(50, 50), FLIP_PROB=0.0), True)(record)
    assert out["image"].shape == (3, 25, 50)
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(), [[5, 10, 20, 25], [30, 2.5, 45, 22.5]])
    assert not out["instances"].has("gt_attributes")
    record["annotations"][0]["attributes"] = [1]
    with pytest.raises(ValueError, match="some persons have 'attributes'"):
        PersonSearchDatasetMapper(_cfg(TRAIN_LONG_SIDE_RANGE=(50, 50), FLIP_PROB=0.0), True)(record)


def test_long_side_sampling():
    np.random.seed(0)
    aug = RandomLongSideResize((60, 80))
    img = np.zeros((30, 40, 3), np.uint8)
    sizes = set()
    for _ in range(40):
        t = aug.get_transform(img)
        assert 60 <= max(t.new_h, t.new_w) <= 80 and t.new_w == max(t.new_h, t.new_w)
        assert abs(t.new_h / t.new_w - 0.75) < 0.02
        sizes.add(t.new_w)
    assert len(sizes) > 5
    t = RandomLongSideResize([90], sample_style="choice").get_transform(img)
    assert (t.new_h, t.new_w) == (68, 90)  # 30 * 2.25 = 67.5 -> 68
    with pytest.raises(ValueError, match="long-side range"):
        RandomLongSideResize((80, 60))


def test_test_mapping_query_and_upper_bound(record):
    cfg = _cfg(TEST_SIZE=(60, 40))
    mapper = PersonSearchDatasetMapper(cfg, is_train=False)
    out = mapper(record)
    # fit 100 x 50 into long 60 / short 40: scale = min(40 / 50, 60 / 100) = 0.6 -> 60 x 30
    assert out["image"].shape == (3, 30, 60)
    assert "instances" not in out and "embed_boxes" not in out and not out["is_query"]
    q = dict(record, is_query=True, query_index=3, query_pid=4, query_boxes=np.array([[10, 20, 40, 50]], np.float32))
    out = mapper(q)
    assert out["is_query"] and out["query_index"] == 3 and out["query_pid"] == 4
    assert out["embed_boxes"].dtype == torch.float32 and out["embed_boxes"].tolist() == [
        [10, 20, 40, 50]
    ]  # original px
    cfg.TEST.PERSON_SEARCH.UPPER_BOUND = True
    out = PersonSearchDatasetMapper(cfg, is_train=False)(record)
    assert out["embed_boxes"].tolist() == [[10, 20, 40, 50], [150, 10, 170, 20], [60, 5, 90, 45]]
