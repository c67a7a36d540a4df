"""OIMNet++ re-id heads (MODEL.NAE.REID_HEAD): ProtoNorm statistics by hand (imbalanced identities),
eval mode on running statistics, LOIM scores / loss weights / LUT keep factors by hand, a training
step of NAE and ROI-AlignPS* per head, checkpoint round trip, and 2-process gloo synchronisation."""

import math
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from galw_d2 import add_galw_config
from galw_d2.modeling import NAEROIHeads, OIMMemory, ProtoNorm1d, build_reid_head
from galw_d2.modeling.protonorm import prototype_groups, prototype_statistics
from galw_d2.modeling.reid_head import ReIDHead, loim_scores
from galw_d2.utils.state import apply_pending_updates

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_models_meta_arch import NAMES, one_step, tiny_cfg, train_batch

HEADS = ["oim", "protonorm", "loim", "oimnet++"]

# Imbalanced batch, C = 2: identity 0 has three proposals, identity 1 one, one unlabeled person, two
# background RoIs.
X = torch.tensor(
    [
        [5.0, 0.0],
        [7.0, 2.0],
        [6.0, 4.0],  # id 0
        [8.0, -2.0],  # id 1
        [-4.0, 6.0],  # unlabeled
        [0.0, 1.0],
        [2.0, 1.0],
    ]
)  # background
PIDS = torch.tensor([0, 0, 0, 1, -1, -2, -2])


def _hand_stats():
    # Prototypes: id 0 (6, 2); id 1 (8, -2); unlabeled (-4, 6); background (1, 1) -> mean over 4 = (2.75, 1.75).
    mean = torch.tensor([(6 + 8 - 4 + 1) / 4, (2 - 2 + 6 + 1) / 4])
    var = ((X - mean) ** 2).mean(0)  # over the 7 samples
    return mean, var


def test_prototype_groups_and_statistics_weigh_identities_evenly():
    g = prototype_groups(PIDS)
    assert g.tolist() == [0, 0, 0, 1, -3, -2, -2]
    assert prototype_groups(torch.tensor([-1, 5, -1])).tolist() == [-3, 5, -4]  # each unlabeled its own
    mean, var = prototype_statistics(X, g)
    want_mean, want_var = _hand_stats()
    assert torch.allclose(mean, torch.tensor([2.75, 1.75])) and torch.allclose(mean, want_mean)
    assert torch.allclose(var, want_var)
    # The sample mean (BatchNorm's) differs: identity 0 counts three times there (24 / 7 = 3.43).
    assert X.mean(0)[0].item() == pytest.approx(24 / 7) and abs(X.mean(0)[0] - mean[0]) > 0.6
    with pytest.raises(ValueError, match="-1 \\(unlabeled\\) or -2"):
        prototype_groups(torch.tensor([0, -5]))


def test_protonorm_train_output_running_stats_and_eval_mode():
    pn = ProtoNorm1d(2, momentum=0.1)
    with torch.no_grad():
        pn.weight.copy_(torch.tensor([2.0, 0.5]))
        pn.bias.copy_(torch.tensor([1.0, -1.0]))
    pn.train()
    y = pn(X, prototype_groups(PIDS))
    mean, var = _hand_stats()
    want = (X - mean) / torch.sqrt(var + 1e-5) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0])
    assert torch.allclose(y, want, atol=1e-5)
    # Deferred: running statistics untouched until apply_pending_updates (after the optimizer step).
    assert torch.equal(pn.running_mean, torch.zeros(2)) and pn.has_pending()
    assert apply_pending_updates(nn.Sequential(pn)) == 1
    rm = 0.1 * mean
    rv = 0.9 * torch.ones(2) + 0.1 * var * 7 / 6  # unbiased variance, like BatchNorm
    assert torch.allclose(pn.running_mean, rm) and torch.allclose(pn.running_var, rv)
    assert int(pn.num_batches_tracked) == 1 and not pn.has_pending()
    # Eval: running statistics, no groups needed, a row's output does not depend on the batch.
    pn.eval()
    out = pn(X)
    assert torch.allclose(
        out, (X - rm) / torch.sqrt(rv + 1e-5) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0]), atol=1e-5
    )
    assert torch.allclose(pn(X[:1]), out[:1])
    pn.train()
    with pytest.raises(ValueError, match="groups"):
        pn(X)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        pn(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))


def test_protonorm_gradient_flows_through_the_prototype_statistics():
    w = torch.tensor([[1.0, -2.0]] * 7) * torch.arange(1.0, 8.0).view(7, 1)  # an arbitrary upstream gradient
    x = X.clone().requires_grad_(True)
    (ProtoNorm1d(2, affine=False).train()(x, prototype_groups(PIDS)) * w).sum().backward()
    # Reference: the hand formula written with plain differentiable ops.
    xr = X.clone().requires_grad_(True)
    protos = torch.stack([xr[:3].mean(0), xr[3], xr[4], xr[5:].mean(0)])
    mean = protos.mean(0)
    ((xr - mean) / torch.sqrt(((xr - mean) ** 2).mean(0) + 1e-5) * w).sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)
    # ... which is not the gradient with detached statistics.
    assert not torch.allclose(x.grad, w / torch.sqrt(_hand_stats()[1] + 1e-5), atol=1e-3)


def test_loim_scores_loss_weights_and_lut_keep_factors_by_hand():
    assert loim_scores(torch.tensor([0.5, 0.75, 0.95, 1.0]), 0.7, 0.1).tolist() == pytest.approx([0.7, 0.75, 0.9, 0.9])
    with pytest.raises(ValueError, match="LOIM_MIN_IOU"):
        loim_scores(torch.zeros(1), 0.95, 0.1)
    mem = OIMMemory(num_pids=2, queue_size=1, feat_dim=2, momentum=0.5)
    mem.lut.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    emb = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]], requires_grad=True)
    pids = torch.tensor([1, 0, -1])
    ious = torch.tensor([0.8, 0.55, 1.0])
    head = ReIDHead("loim", loim=True, loim_min_iou=0.7, loim_eps=0.1, loim_weight_loss=True)
    loss = head.loss_and_queue(emb, pids, ious, mem, scale=10.0)

    # Per-sample OIM: logits 10 * (x . lut rows, x . cq (zero row)); s = (0.8, 0.7) for the labeled two.
    def ce(x, y):
        lg = [10 * x[0], 10 * x[1], 0.0]
        return -(lg[y] - math.log(sum(math.exp(v) for v in lg)))

    l1, l2 = ce([0.6, 0.8], 1), ce([0.8, 0.6], 0)
    assert loss.item() == pytest.approx((0.8 * l1 + 0.7 * l2) / 1.5, rel=1e-5)
    # Without loss weighting (the public code): the plain mean.
    mem2 = OIMMemory(num_pids=2, queue_size=1, feat_dim=2, momentum=0.5)
    mem2.lut.copy_(mem.lut)
    plain = ReIDHead("loim", loim=True, loim_weight_loss=False).loss_and_queue(emb, pids, ious, mem2, 10.0)
    assert plain.item() == pytest.approx((l1 + l2) / 2, rel=1e-5)
    # LUT update with keep factor 1 - s: row 1 <- norm(0.2 * (0, 1) + 0.8 * (0.6, 0.8)), row 0 with 0.3 / 0.7.
    mem.apply_pending_updates()
    r1 = torch.tensor([0.48, 0.84])
    r0 = torch.tensor([0.3 + 0.56, 0.42])
    assert torch.allclose(mem.lut[1], r1 / r1.norm()) and torch.allclose(mem.lut[0], r0 / r0.norm())
    assert torch.equal(mem.cq[0], torch.tensor([0.0, 1.0]))  # unlabeled: queued as before
    with pytest.raises(ValueError, match="IoU"):
        head.loss_and_queue(emb, pids, None, mem, 10.0)


def _heads_cfg(head):
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file("configs/synthps/nae_R18_tiny_synthps.yaml")
    cfg.MODEL.PERSON_SEARCH.NUM_PIDS = 4
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.NAE.REID_HEAD = head
    return cfg


def test_roi_heads_pass_matched_ious_to_loim():
    torch.manual_seed(0)
    heads = NAEROIHeads(_heads_cfg("oimnet++"), {"res4": ShapeSpec(channels=64, stride=16)}).train()
    assert isinstance(heads.embedding.projectors["res4"][1], ProtoNorm1d)
    gt = Instances((160, 160))
    gt.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    gt.gt_classes = torch.zeros(1, dtype=torch.long)
    gt.gt_pids = torch.tensor([2])
    props = Instances((160, 160))
    # IoU with the GT: 0.81, 0.64 (positives), 0 (negative); the GT itself is appended (IoU 1).
    props.proposal_boxes = Boxes(
        torch.tensor([[0.0, 0.0, 90.0, 90.0], [0.0, 0.0, 80.0, 80.0], [120.0, 120.0, 150.0, 150.0]])
    )
    props.objectness_logits = torch.zeros(3)
    with EventStorage(0):
        sampled, losses = heads(None, {"res4": torch.randn(1, 64, 10, 10)}, [props], [gt])
    assert set(losses) == {"loss_roi_box_reg", "loss_nae_det", "loss_nae_oim"}
    s = sampled[0]
    fg = s.gt_classes == 0
    hand = {100.0: 1.0, 90.0: 0.81, 80.0: 0.64}
    want_keep = [1 - min(max(hand[b[2].item()], 0.7), 0.9) for b in s.proposal_boxes.tensor[fg]]
    _, pend_p, pend_keep = heads.memory._pending[0]
    assert pend_p.tolist() == [2, 2, 2] and pend_keep.tolist() == pytest.approx(want_keep)
    # Both ProtoNorm layers and the memory are applied after the step.
    assert apply_pending_updates(heads) == 3


def test_unknown_head_is_a_clear_error_and_default_is_oim():
    cfg = _heads_cfg("oim")
    assert add_galw_config(get_cfg()).MODEL.NAE.REID_HEAD == "oim"
    heads = NAEROIHeads(cfg, {"res4": ShapeSpec(channels=64, stride=16)})
    assert type(heads.embedding.projectors["res4"][1]) is nn.BatchNorm1d and not heads.reid_head.loim
    cfg.MODEL.NAE.REID_HEAD = "oimnet"
    with pytest.raises(ValueError, match="MODEL.NAE.REID_HEAD='oimnet'.*oimnet\\+\\+"):
        build_reid_head(cfg)


@pytest.mark.parametrize("arch,head", [("NAE", h) for h in HEADS[1:]] + [("ROIAlignPS", "oimnet++")])
def test_train_step_same_task_names_finite(arch, head):
    cfg = tiny_cfg(arch)
    cfg.MODEL.NAE.REID_HEAD = head
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        losses = one_step(model, train_batch(step), opt)
        assert set(losses) == NAMES[arch]
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    pn = model.roi_heads.embedding.projectors["res5"][1]
    if "protonorm" in head or head == "oimnet++":
        assert isinstance(pn, ProtoNorm1d) and int(pn.num_batches_tracked) == 2
        assert pn.running_mean.abs().sum() > 0
    rows = model.roi_heads.memory.lut.norm(dim=1)
    assert torch.allclose(rows[[0, 2, 3]], torch.ones(3), atol=1e-5)


def test_checkpoint_round_trip_restores_protonorm_state(tmp_path):
    cfg = tiny_cfg("NAE")
    cfg.MODEL.NAE.REID_HEAD = "oimnet++"
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        one_step(model, train_batch(step), opt)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("m")
    torch.manual_seed(5)
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(str(tmp_path / "m.pth"))
    for name in ("res4", "res5"):
        a, b = model.roi_heads.embedding.projectors[name][1], fresh.roi_heads.embedding.projectors[name][1]
        assert int(a.num_batches_tracked) == 2
        for k in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
            assert torch.equal(getattr(a, k), getattr(b, k)), (name, k)
    feats = {"res4": torch.randn(3, 64), "res5": torch.randn(3, 128)}
    model.eval()
    fresh.eval()
    with torch.no_grad():
        ea, la = model.roi_heads.embedding(feats)
        eb, lb = fresh.roi_heads.embedding(feats)
    assert torch.equal(ea, eb) and torch.equal(la, lb)


def _gloo_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different data on each rank
        pn = ProtoNorm1d(3, momentum=0.25)
        pn.train()
        x = torch.randn(6, 3) * (rank + 1) + rank
        pids = torch.tensor([0, 0, 0, 1, -1, -2]) if rank == 0 else torch.tensor([2, 3, 3, -2, -2, -2])
        pn(x, prototype_groups(pids))
        mean, var = prototype_statistics(x, prototype_groups(pids))
        pn.apply_pending_updates()
        torch.save(
            {"state": pn.state_dict(), "mean": mean, "var_unbiased": var * 6 / 5},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_protonorm_running_statistics_identical_across_two_gloo_ranks(tmp_path):
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # One EMA step with the average of the two ranks' batch statistics.
    want_m = 0.25 * (r0["mean"] + r1["mean"]) / 2
    want_v = 0.75 + 0.25 * (r0["var_unbiased"] + r1["var_unbiased"]) / 2
    assert torch.allclose(r0["state"]["running_mean"], want_m, atol=1e-6)
    assert torch.allclose(r0["state"]["running_var"], want_v, atol=1e-6)
    assert int(r0["state"]["num_batches_tracked"]) == 1
