"""AlignPSBranch end to end on CPU with a tiny config (narrow channels, 160x224 inputs)."""

import time

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances

from galw_d2.config import add_galw_config
from galw_d2.modeling.alignps import AlignPSBranch
from galw_d2.modeling.alignps.deform_conv import DeformConv

LOSS_NAMES = {"loss_fcos_cls", "loss_fcos_giou", "loss_fcos_ctr", "loss_fcos_oim", "loss_triplet"}
SHAPE = {
    "res3": ShapeSpec(channels=32, stride=8),
    "res4": ShapeSpec(channels=64, stride=16),
    "res5": ShapeSpec(channels=128, stride=32),
}
H, W = 160, 224


def tiny_cfg(num_pids=5, **overrides):
    cfg = add_galw_config(get_cfg())
    cfg.MODEL.PERSON_SEARCH.NUM_PIDS = num_pids
    a = cfg.MODEL.ALIGNPS
    a.AFA_CHANNELS, a.EMBED_DIM, a.HEAD_CONV_DIM, a.NORM_GROUPS, a.OIM_QUEUE_SIZE = 8, 16, 16, 4, 8
    for k, v in overrides.items():
        setattr(a, k, v)
    return cfg


def features(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, s.channels, H // s.stride, W // s.stride, generator=g) for k, s in SHAPE.items()}


def gt(boxes, pids, hw=(H, W)):
    inst = Instances(hw)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.zeros(len(pids), dtype=torch.long)
    inst.gt_pids = torch.tensor(pids, dtype=torch.long)
    return inst


IMAGES = ImageList(torch.zeros(2, 3, H, W), [(H, W), (150, 200)])
# Image 0: a labeled person (id 0) and an unlabeled one; image 1 (smaller, padded): ids 0 and 3.
GTS = [
    gt([[20, 20, 80, 150], [100, 30, 150, 140]], [0, -1]),
    gt([[10, 10, 60, 120], [120, 20, 190, 140]], [0, 3], (150, 200)),
]


@pytest.fixture(scope="module")
def branch():
    torch.manual_seed(0)
    return AlignPSBranch(tiny_cfg(), SHAPE)


def test_train_step_losses_gradients_and_deferred_oim_update(branch):
    branch.train()
    branch.zero_grad()
    assert sum(isinstance(m, DeformConv) for m in branch.modules()) == 6  # 3 laterals, output, 2 tower convs
    feats = features()
    lut_before = branch.memory.lut.clone()
    t0 = time.perf_counter()
    losses = branch(IMAGES, feats, GTS)
    sum(losses.values()).backward()
    elapsed = time.perf_counter() - t0
    assert set(losses) == LOSS_NAMES
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    assert float(losses["loss_fcos_cls"]) > 0 and float(losses["loss_fcos_oim"]) > 0
    # Every trainable parameter of the branch gets a gradient (none is intentionally unused).
    missing = [n for n, p in branch.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []
    # The OIM table is not touched by forward/backward; the update waits for apply_pending_updates.
    assert torch.equal(branch.memory.lut, lut_before) and branch.memory.has_pending()
    branch.memory.apply_pending_updates()
    assert branch.memory.lut[[0, 3]].norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert branch.memory.lut[[1, 2, 4]].abs().sum() == 0
    assert elapsed < 5.0  # well under a second when the machine is idle; lenient for shared CPUs


def test_no_gt_images(branch):
    branch.train()
    one_empty = [GTS[0], gt([], [], (150, 200))]
    losses = branch(IMAGES, features(seed=1), one_empty)
    assert set(losses) == LOSS_NAMES and all(torch.isfinite(v) for v in losses.values())
    none = branch(IMAGES, features(seed=2), [gt([], [], (H, W)), gt([], [], (150, 200))])
    assert set(none) == LOSS_NAMES and float(none["loss_fcos_cls"]) > 0
    for k in LOSS_NAMES - {"loss_fcos_cls"}:
        assert float(none[k]) == 0.0, k
    sum(none.values()).backward()
    branch.memory.apply_pending_updates()


def test_eval_outputs_well_formed():
    torch.manual_seed(0)
    # Threshold 0 so the untrained classifier (p ~ 0.01 everywhere) yields candidates; cap at 7 per image.
    m = AlignPSBranch(tiny_cfg(TEST_SCORE_THRESH=0.0, DETECTIONS_PER_IMAGE=7), SHAPE).eval()
    feats = features(seed=3)
    q = [torch.tensor([[20.0, 20.0, 80.0, 150.0], [0.0, 0.0, 24.0, 8.0]]), torch.zeros(0, 4)]
    results, embs = m(IMAGES, feats, embed_boxes=q)
    assert len(results) == 2
    for r, (h, w) in zip(results, IMAGES.image_sizes):
        n = len(r)
        assert 0 < n <= 7 and r.image_size == (h, w)
        assert r.pred_boxes.tensor.shape == (n, 4) and r.pred_classes.tolist() == [0] * n
        assert torch.all((r.scores >= 0) & (r.scores <= 1))
        b = r.pred_boxes.tensor
        assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 2] <= w) and torch.all(b[:, 3] <= h)
        assert r.reid_feats.shape == (n, 16)
        assert torch.allclose(r.reid_feats.norm(dim=1), torch.ones(n), atol=1e-5)
    assert embs[0].shape == (2, 16) and embs[1].shape == (0, 16)
    assert torch.allclose(embs[0].norm(dim=1), torch.ones(2), atol=1e-5)
    # Box embedding = centred P3 at the box centre: box 2's centre (12, 4) is exactly location (row 0, col 1).
    with torch.no_grad():
        p3 = m.neck([feats[k] for k in ("res3", "res4", "res5")])
        p3 = p3 - p3.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(embs[0][1], F.normalize(p3[0, :, 0, 1], dim=0), atol=1e-5)
    # Default threshold 0.05: the fresh classifier (prior 0.01) detects nothing, outputs stay well-formed.
    m2 = AlignPSBranch(tiny_cfg(), SHAPE).eval()
    r2, e2 = m2(IMAGES, feats)
    assert e2 is None and all(len(r) == 0 and r.reid_feats.shape == (0, 16) for r in r2)


def test_plain_conv_config_state_round_trip_and_config_errors():
    cfg = tiny_cfg(NECK_DEFORMABLE=False, HEAD_DEFORMABLE_LAST=False, TEST_SCORE_THRESH=0.0)
    torch.manual_seed(1)
    m = AlignPSBranch(cfg, SHAPE)
    assert not any(isinstance(x, DeformConv) for x in m.modules())
    m.train()
    sum(m(IMAGES, features(), GTS).values()).backward()
    m.memory.apply_pending_updates()
    # The OIM table and queue are part of the state dict: a fresh branch loaded from it is identical.
    state = m.state_dict()
    assert {"memory.lut", "memory.cq", "memory.cq_ptr"} <= set(state) and state["memory.lut"].abs().sum() > 0
    torch.manual_seed(2)
    m2 = AlignPSBranch(cfg, SHAPE)
    m2.load_state_dict(state)
    m.eval(), m2.eval()
    q = [torch.tensor([[20.0, 20.0, 80.0, 150.0]]), torch.tensor([[10.0, 10.0, 60.0, 120.0]])]
    (r1, e1), (r2, e2) = m(IMAGES, features(seed=4), embed_boxes=q), m2(IMAGES, features(seed=4), embed_boxes=q)
    for a, b in zip(r1, r2):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.reid_feats, b.reid_feats)
    assert all(torch.equal(x, y) for x, y in zip(e1, e2))
    with pytest.raises(ValueError, match="NUM_PIDS"):
        AlignPSBranch(tiny_cfg(num_pids=0), SHAPE)
    with pytest.raises(ValueError, match="NORM_GROUPS"):
        AlignPSBranch(tiny_cfg(NORM_GROUPS=5), SHAPE)
    with pytest.raises(ValueError, match="res2"):
        AlignPSBranch(tiny_cfg(IN_FEATURES=["res2", "res3"]), SHAPE)
