"""Gradient-trend recorder: Eq. 6 against hand-computed norms, per-epoch averages, state, no side effects."""

import math
import os

import pytest
import torch

from galw_d2.galw.recorder import GradientTrendRecorder, task_gradient_magnitudes
from galw_d2.utils.state import apply_pending_updates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy():
    w1 = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    w2 = torch.tensor([0.3, 0.4], requires_grad=True)
    x = torch.tensor([2.0, 1.0, -1.0])
    # L_a = (w1 . x)^2 (w2 unused); L_b = |w1|^2 + 3 sum(w2)
    losses = {"a": (w1 * x).sum() ** 2, "b": (w1 * w1).sum() + 3 * w2.sum()}
    return w1, w2, x, losses


def test_gamma_matches_hand_norms_and_keeps_grad_untouched():
    w1, w2, x, losses = _toy()
    g = task_gradient_magnitudes(losses, [w1, w2])
    dot = float((w1 * x).sum().detach())  # 2 - 2 - 0.5 = -0.5
    grad_a = 2 * abs(dot) * math.sqrt(4 + 1 + 1)  # |2 (w1.x) x|, w2: 0
    assert g["a"] == pytest.approx(grad_a / 2)
    assert g["b"] == pytest.approx((2 * math.sqrt(1 + 4 + 0.25) + 3 * math.sqrt(2)) / 2)
    assert w1.grad is None and w2.grad is None
    sum(losses.values()).backward()  # the graph is still alive
    assert w1.grad is not None
    assert task_gradient_magnitudes({"c": torch.tensor(1.0)}, [w1]) == {"c": 0.0}


def test_epoch_averages_period_and_state_round_trip():
    w1, w2, x, _ = _toy()
    rec = GradientTrendRecorder([("w1", w1), ("w2", w2)], period=2, epoch_iters=4)
    expect = {0: [], 1: []}
    for it in range(8):
        scale = float(it + 1)
        losses = {"a": scale * w1.sum(), "b": w2.sum()}
        if rec.should_probe(it):
            out = rec.probe(losses, it)
            expect[it // 4].append(out["a"])
            assert out["a"] == pytest.approx(scale * math.sqrt(3) / 2)  # |scale * 1| over w1, 0 over w2
    tr = rec.trends({"note": "x"})
    assert tr["tasks"] == ["a", "b"] and tr["probe_counts"]["a"] == [2, 2]
    assert tr["gradient_magnitude"]["a"] == pytest.approx([sum(expect[0]) / 2, sum(expect[1]) / 2])
    assert tr["gradient_magnitude"]["b"] == pytest.approx([math.sqrt(2) / 2] * 2)
    assert tr["settings"]["num_shared_params"] == 2 and tr["settings"]["note"] == "x"
    rec2 = GradientTrendRecorder([("w1", w1), ("w2", w2)], period=2, epoch_iters=4)
    rec2.load_state_dict(rec.state_dict())
    assert rec2.trends() == rec.trends()
    with pytest.raises(ValueError, match="epoch_iters"):
        GradientTrendRecorder([("w1", w1), ("w2", w2)], 2, 5).load_state_dict(rec.state_dict())
    with pytest.raises(ValueError, match="no shared parameters"):
        GradientTrendRecorder([], 2, 4)
    with pytest.raises(KeyError, match="loss_new"):
        rec.probe({"a": w1.sum(), "loss_new": w1.sum()}, 100)


def _stock_model_and_batch():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    from galw_d2 import add_galw_config

    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs/stock/faster_rcnn_R18_FPN_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(2):
        inst = Instances((96, 128))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 90.0], [60.0, 5.0, 100.0, 80.0]]))
        inst.gt_classes = torch.zeros(2, dtype=torch.int64)
        batch.append(
            {
                "image": torch.randint(0, 255, (3, 96, 128), generator=g, dtype=torch.uint8),
                "instances": inst,
                "height": 96,
                "width": 128,
            }
        )
    return model, batch


def test_probing_leaves_gradients_and_state_bit_identical():
    """A real detectron2 model (stock tiny Faster R-CNN, BN in train mode) and a stateful toy loss."""
    from detectron2.utils.events import EventStorage

    from galw_d2.engine import select_shared_parameters

    grads = []
    for probe in (False, True):
        model, batch = _stock_model_and_batch()
        model.train()
        torch.manual_seed(5)  # the ROI/anchor samplers draw random numbers
        with EventStorage(0):
            losses = model(batch)
        if probe:
            shared = select_shared_parameters(model, [r"^backbone\.(bottom_up\.)?res[234]\."])
            assert len(shared) > 10
            gam = task_gradient_magnitudes(losses, [p for _, p in shared])
            assert all(v >= 0 for v in gam.values()) and gam["loss_rpn_cls"] > 0
        sum(losses.values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])

    # stateful loss: the table changes only via apply_pending_updates, once per step, probe or not
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from galw_toy import _Stateful

    st = _Stateful()
    st.table.fill_(0.5)
    h = torch.randn(3, 4, requires_grad=True)
    loss = st(h)
    task_gradient_magnitudes({"c": loss}, [h])
    task_gradient_magnitudes({"c": loss}, [h])
    loss.backward()
    assert torch.equal(st.table, torch.full((4,), 0.5))
    assert apply_pending_updates(st) == 1 and st.applied == 1
    assert torch.allclose(st.table, 0.5 + h.detach().mean(0))
