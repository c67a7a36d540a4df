"""NAE branch units: OIM table/queue update and loss by hand, norm-aware embedding, sampling, weights."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from galw_d2 import add_galw_config
from galw_d2.modeling import NAEROIHeads, NormAwareEmbedding, OIMMemory, oim_loss
from galw_d2.modeling.backbone import build_res5_head, resnet_stage_specs
from galw_d2.utils.state import apply_pending_updates


def test_oim_memory_update_matches_hand_computation():
    mem = OIMMemory(num_pids=3, queue_size=2, feat_dim=2, momentum=0.5)
    # Step 1: id 1 seen with x = (0.6, 0.8) -> row = normalise(0.5 * 0 + 0.5 * x) = x; unlabeled -> queue.
    mem.queue_update(torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, -1, -2]))
    assert torch.equal(mem.lut, torch.zeros(3, 2))  # deferred: nothing changes before apply
    mem.apply_pending_updates()
    assert torch.allclose(mem.lut[1], torch.tensor([0.6, 0.8]))
    assert torch.equal(mem.cq[0], torch.tensor([0.0, 1.0])) and int(mem.cq_ptr) == 1
    # Step 2: id 1 again with (1, 0): 0.5 * (0.6, 0.8) + 0.5 * (1, 0) = (0.8, 0.4) -> / sqrt(0.8) .
    mem.queue_update(torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]), torch.tensor([1, -1, -1]))
    mem.apply_pending_updates()
    n = math.sqrt(0.8**2 + 0.4**2)
    assert torch.allclose(mem.lut[1], torch.tensor([0.8 / n, 0.4 / n]))
    assert torch.equal(mem.lut[0], torch.zeros(2)) and torch.equal(mem.lut[2], torch.zeros(2))
    # Queue of 2 wraps around: slot 1 <- (0.6, 0.8), slot 0 <- (-1, 0), pointer back to 1.
    assert torch.equal(mem.cq, torch.tensor([[-1.0, 0.0], [0.6, 0.8]])) and int(mem.cq_ptr) == 1


def test_oim_loss_matches_hand_computation():
    mem = OIMMemory(num_pids=2, queue_size=1, feat_dim=2)
    mem.lut.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    mem.cq.copy_(torch.tensor([[-1.0, 0.0]]))
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]], requires_grad=True)
    loss = oim_loss(x, torch.tensor([1, -1]), mem, scale=30.0)
    # Only the labeled sample counts: logits 30 * (0.6, 0.8, -0.6), target 1.
    lg = [18.0, 24.0, -18.0]
    want = -(24.0 - math.log(sum(math.exp(v) for v in lg)))
    assert loss.item() == pytest.approx(want, rel=1e-4)  # float32 log-softmax
    loss.backward()
    assert x.grad[1].abs().sum() == 0 and x.grad[0].abs().sum() > 0


def test_norm_aware_embedding_norm_is_the_detection_logit():
    torch.manual_seed(0)
    head = NormAwareEmbedding({"res4": 6, "res5": 10}, embed_dim=7).eval()
    assert [head.projectors[n][0].out_features for n in ("res4", "res5")] == [3, 4]
    f = {"res4": torch.randn(5, 6), "res5": torch.randn(5, 10)}
    emb, logit = head(f)
    assert emb.shape == (5, 7) and logit.shape == (5,)
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-6)
    raw = torch.cat([head.projectors["res4"](f["res4"]), head.projectors["res5"](f["res5"])], dim=1)
    bn = head.rescaler
    want = (raw.norm(dim=1) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    assert torch.allclose(logit, want, atol=1e-6)
    assert torch.allclose(emb, raw / raw.norm(dim=1, keepdim=True), atol=1e-6)


def _tiny_nae_cfg():
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file("configs/synthps/nae_R18_tiny_synthps.yaml")
    cfg.MODEL.PERSON_SEARCH.NUM_PIDS = 4
    return cfg


def test_res5_head_basic_block_halves_and_widens():
    cfg = _tiny_nae_cfg()
    widths, blocks, basic = resnet_stage_specs(cfg)
    assert widths == [16, 32, 64, 128] and blocks == [1, 1, 1, 1] and basic
    res5, c = build_res5_head(cfg, 64)
    assert c == 128 and res5(torch.randn(2, 64, 8, 8)).shape == (2, 128, 4, 4)
    cfg.MODEL.PERSON_SEARCH.RESNET_WIDTHS = [1, 2]
    with pytest.raises(ValueError, match="RESNET_WIDTHS"):
        resnet_stage_specs(cfg)


def test_roi_sampling_thresholds_pids_carried_and_losses():
    torch.manual_seed(0)
    cfg = _tiny_nae_cfg()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.5
    heads = NAEROIHeads(cfg, {"res4": ShapeSpec(channels=64, stride=16)})
    heads.train()
    gt = Instances((160, 160))
    gt.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    gt.gt_classes = torch.zeros(1, dtype=torch.long)
    gt.gt_pids = torch.tensor([2])
    gt.gt_attributes = torch.tensor([[1.0, 0.0]])
    # IoU with the GT: 0.81 (pos), 0.3 (ignored: 0.1..0.5), 0.0 (neg), 0.49 (ignored), 0.64 (pos)
    props = Instances((160, 160))
    props.proposal_boxes = Boxes(
        torch.tensor(
            [
                [0.0, 0.0, 90.0, 90.0],
                [0.0, 0.0, 30.0, 100.0],
                [120.0, 120.0, 150.0, 150.0],
                [0.0, 0.0, 70.0, 70.0],
                [0.0, 0.0, 80.0, 80.0],
            ]
        )
    )
    props.objectness_logits = torch.zeros(5)
    feats = {"res4": torch.randn(1, 64, 10, 10)}
    with EventStorage(0):
        sampled, losses = heads(None, feats, [props], [gt])
    s = sampled[0]
    boxes = {tuple(b.tolist()): int(c) for b, c in zip(s.proposal_boxes.tensor, s.gt_classes)}
    # GT appended (fg), the two >= 0.5 proposals fg, the < 0.1 one bg (class 1), the 0.1..0.5 ones dropped.
    assert boxes == {
        (0.0, 0.0, 100.0, 100.0): 0,
        (0.0, 0.0, 90.0, 90.0): 0,
        (0.0, 0.0, 80.0, 80.0): 0,
        (120.0, 120.0, 150.0, 150.0): 1,
    }
    assert s.has("gt_pids") and s.has("gt_attributes") and s.gt_attributes.shape == (4, 2)
    assert set(losses) == {"loss_roi_box_reg", "loss_nae_det", "loss_nae_oim"}
    assert all(torch.isfinite(v) for v in losses.values())
    # OIM update deferred: 3 fg RoIs of id 2 queued, LUT untouched until apply.
    pend_f, pend_p, _ = heads.memory._pending[0]
    assert pend_p.tolist() == [2, 2, 2] and torch.equal(heads.memory.lut, torch.zeros_like(heads.memory.lut))
    want = torch.zeros(heads.memory.feat_dim)
    for x in pend_f:  # hand computation of three sequential momentum updates
        want = 0.5 * want + 0.5 * x
        want = want / want.norm()
    assert apply_pending_updates(heads) == 1
    assert torch.allclose(heads.memory.lut[2], want, atol=1e-6)
