"""The ALM attribute branch (t11) of the person-search model: which RoIs it uses, its loss, and a
training step of ROI-AlignPS* with t11 (11 named tasks)."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from galw_d2 import add_galw_config
from galw_d2.attributes.losses import multi_level_bce
from galw_d2.modeling.attribute_branch import AttributeBranch
from galw_d2.tasks import TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"res3": ShapeSpec(channels=8, stride=8), "res4": ShapeSpec(channels=12, stride=16)}


def _branch(**kw):
    torch.manual_seed(0)
    args = dict(pooler_resolution=8, channels=6, sample_size=3, se_reduction=2, max_per_image=0)
    args.update(kw)
    return AttributeBranch(SHAPES, ["res3", "res4"], 3, **args)


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "res3": torch.randn(2, 8, 12, 16, generator=g, requires_grad=True),
        "res4": torch.randn(2, 12, 6, 8, generator=g, requires_grad=True),
    }


def _proposals(with_attr=(True, True)):
    out = []
    for i in range(2):
        p = Instances((96, 128))
        p.proposal_boxes = Boxes(
            torch.tensor(
                [[10.0, 5.0, 40.0, 90.0], [50.0, 10.0, 90.0, 80.0], [0.0, 0.0, 20.0, 20.0], [60.0, 20.0, 120.0, 95.0]]
            )
        )
        p.gt_classes = torch.tensor([0, 0, 1, 0])  # third = background
        if with_attr[i]:
            p.gt_attributes = torch.tensor(
                [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]
            )  # last: matched GT without labels
        out.append(p)
    return out


def test_loss_uses_only_labeled_foreground_rois():
    br = _branch()
    feats, props = _features(), _proposals()
    loss = br(feats, props)["loss_attr"]
    fg = [p.proposal_boxes.tensor[:2] for p in props]
    y = torch.cat([p.gt_attributes[:2] for p in props])
    expect = multi_level_bce(br.level_logits(feats, fg), y)
    torch.testing.assert_close(loss, expect)
    # changing the background / unlabeled rows' targets or boxes changes nothing
    for p in props:
        p.gt_attributes[2] = 0.0
        p.proposal_boxes.tensor[2] += 3.0
    torch.testing.assert_close(br(feats, props)["loss_attr"], expect)
    loss.backward()
    assert feats["res3"].grad.abs().sum() > 0 and feats["res4"].grad.abs().sum() > 0
    assert all(p.grad is not None for p in br.parameters())


def test_images_without_attributes_and_no_valid_roi():
    br = _branch()
    feats = _features()
    half = br(feats, _proposals((True, False)))["loss_attr"]
    props = _proposals((True, False))
    expect = multi_level_bce(
        br.level_logits(feats, [props[0].proposal_boxes.tensor[:2], torch.zeros(0, 4)]), props[0].gt_attributes[:2]
    )
    torch.testing.assert_close(half, expect)
    bg = _proposals()
    for p in bg:
        p.gt_classes[:] = 1
    z = br(feats, bg)["loss_attr"]
    assert z.item() == 0.0 and z.requires_grad
    z.backward()  # graph-connected: every branch parameter and the features get a (zero) gradient
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in br.parameters())
    assert feats["res3"].grad is not None
    with pytest.raises(ValueError, match="no training image has gt_attributes"):
        br(_features(), _proposals((False, False)))


def test_max_per_image_predict_and_errors():
    br = _branch(max_per_image=1)
    br.train()
    feats, props = _features(), _proposals()
    assert torch.isfinite(br(feats, props)["loss_attr"])
    probs = br.predict(feats, [p.proposal_boxes.tensor for p in props])
    assert [q.shape for q in probs] == [(4, 3), (4, 3)] and ((probs[0] > 0) & (probs[0] < 1)).all()
    with pytest.raises(ValueError, match=r"\['res5'\] not among the backbone outputs"):
        AttributeBranch(SHAPES, ["res3", "res5"], 3)
    bad = _proposals()
    bad[0].gt_attributes = bad[0].gt_attributes[:, :2]
    with pytest.raises(ValueError, match=r"expected \(R, 3\)"):
        br(feats, bad)


def test_roi_alignps_with_t11_trains_a_step_with_11_named_tasks():
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs/synthps/roi_alignps_R18_tiny_synthps.yaml"))
    cfg.MODEL.PERSON_SEARCH.NUM_PIDS = 6
    cfg.MODEL.ATTRIBUTES.ENABLED = True
    cfg.MODEL.ATTRIBUTES.NUM_ATTRIBUTES = 4
    cfg.MODEL.ATTRIBUTES.CHANNELS = 16
    cfg.MODEL.ATTRIBUTES.SAMPLE_SIZE = 4
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.attribute_branch is not None and model.attribute_branch.in_features == ["res3", "res4", "res5"]
    H, W = 224, 320
    g = torch.Generator().manual_seed(0)
    batch = []
    for i in range(2):
        inst = Instances((H, W))
        inst.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 80.0, 200.0], [150.0, 20.0, 210.0, 180.0]]))
        inst.gt_classes = torch.zeros(2, dtype=torch.long)
        inst.gt_pids = torch.tensor([0, 2 + i])
        inst.gt_attributes = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
        batch.append(
            {
                "image": torch.randint(0, 255, (3, H, W), generator=g, dtype=torch.uint8),
                "instances": inst,
                "height": H,
                "width": W,
            }
        )
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {t.name for t in TASKS} and len(losses) == 11
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_attr"].item() > 0
    losses["loss_attr"].backward()
    assert all(p.grad is not None for p in model.attribute_branch.parameters())
    shared = [p for n, p in model.named_parameters() if n.startswith("backbone.res3")]
    assert shared and any(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)
