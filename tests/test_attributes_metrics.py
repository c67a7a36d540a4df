"""Attribute metrics, losses and the ALM module against hand-computed values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from galw_d2.attributes.alm import ALM, MultiLevelALM, combine_levels
from galw_d2.attributes.losses import alm_bce_weights, attribute_bce, multi_level_bce, positive_ratio
from galw_d2.attributes.metrics import attribute_metrics, instance_based_metrics, label_based_metrics

GT = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
PRED = np.array([[1, 0, 0, 1], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


def test_label_based_mA_hand_computed():
    m = label_based_metrics(PRED, GT)
    # attr0: TPR 2/2, TNR 2/2 -> 1; attr1: TPR 1/1, TNR 2/3 -> 5/6; attr2: TPR 1/2, TNR 1/2 -> 1/2;
    # attr3: no positive -> TNR only = 3/4.
    expected = [1.0, 5 / 6, 0.5, 0.75]
    np.testing.assert_allclose(m["per_attribute_mA"], expected)
    assert m["mA"] == pytest.approx(np.mean(expected))
    assert np.isnan(m["TPR"][3]) and m["TNR"][3] == pytest.approx(0.75)


def test_label_based_ignores_unlabeled_and_all_positive():
    gt = np.array([[1, -1], [1, 0], [1, 1]])
    pred = np.array([[0, 1], [1, 1], [1, 1]])
    m = label_based_metrics(pred, gt)
    # attr0: all positive -> TPR only = 2/3; attr1 (row 0 ignored): TPR 1/1, TNR 0/1 -> 0.5
    np.testing.assert_allclose(m["per_attribute_mA"], [2 / 3, 0.5])
    with pytest.raises(ValueError, match="no attribute"):
        label_based_metrics(np.zeros((2, 1), int), -np.ones((2, 1), int))


def test_instance_based_hand_computed_with_empty_sets():
    m = instance_based_metrics(PRED, GT)
    # sample0: P={0,3}, G={0,2}: inter 1, union 3 -> acc 1/3, prec 1/2, rec 1/2
    # sample1: P={0,1,2}, G={0,1}: acc 2/3, prec 2/3, rec 1
    # sample2: P={1,2}, G={2}: acc 1/2, prec 1/2, rec 1
    # sample3: both empty -> 1, 1, 1
    acc = (1 / 3 + 2 / 3 + 1 / 2 + 1) / 4
    prec = (1 / 2 + 2 / 3 + 1 / 2 + 1) / 4
    rec = (1 / 2 + 1 + 1 + 1) / 4
    assert m["accuracy"] == pytest.approx(acc)
    assert m["precision"] == pytest.approx(prec)
    assert m["recall"] == pytest.approx(rec)
    assert m["F1"] == pytest.approx(2 * prec * rec / (prec + rec))
    # empty prediction with non-empty GT: precision 0, recall 0; non-empty P with empty G: both 0
    m2 = instance_based_metrics(np.array([[0, 0], [1, 0]]), np.array([[1, 0], [0, 0]]))
    assert m2 == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "F1": 0.0}


def test_attribute_metrics_thresholds_and_validates():
    probs = np.where(PRED == 1, 0.7, 0.2)
    m = attribute_metrics(probs, GT, 0.5)
    assert set(m) == {"mA", "accuracy", "precision", "recall", "F1"}
    assert m["mA"] == pytest.approx(label_based_metrics(PRED, GT)["mA"])
    with pytest.raises(ValueError, match="same shape"):
        attribute_metrics(probs[:, :2], GT)
    with pytest.raises(ValueError, match="0/1"):
        label_based_metrics(probs, GT)


def test_weighted_bce_hand_computed():
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, -1.0]])
    p = positive_ratio(t)
    assert torch.allclose(p, torch.tensor([2 / 3, 0.0]))
    w = alm_bce_weights(t.clamp(0), p)
    assert w[0, 0].item() == pytest.approx(math.exp(1 / 3))
    assert w[1, 0].item() == pytest.approx(math.exp(2 / 3))
    assert w[1, 1].item() == pytest.approx(1.0)
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-1.0, 5.0]], requires_grad=True)
    loss = attribute_bce(logits, t, p)
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731  softplus
    terms = [
        math.exp(1 / 3) * sp(-0.0),
        1.0 * sp(1.0),
        math.exp(2 / 3) * sp(2.0),
        1.0 * sp(-1.0),
        math.exp(1 / 3) * sp(1.0),
    ]  # the -1 target is ignored
    assert loss.item() == pytest.approx(sum(terms) / 5, rel=1e-5)
    plain = attribute_bce(logits, t)
    assert plain.item() == pytest.approx((sp(0) + sp(1) + sp(2) + sp(-1) + sp(1)) / 5, rel=1e-5)
    ml = multi_level_bce([logits, logits * 0], t)
    assert ml.item() == pytest.approx((plain.item() + math.log(2)) / 2, rel=1e-5)
    z = attribute_bce(logits, -torch.ones_like(t))
    z.backward()
    assert z.item() == 0.0 and logits.grad is not None


def _naive_alm(alm, x, a):
    """Attribute ``a`` of ``alm`` computed the direct way: attend the map, sample it, pool."""
    s = x.mean((2, 3))
    g = 1 + torch.sigmoid(F.relu(s @ alm.se_w1[a] + alm.se_b1[a]) @ alm.se_w2[a] + alm.se_b2[a])
    xa = x * g[:, :, None, None]
    raw = xa.amax((2, 3)) @ alm.loc_w[a] + alm.loc_b[a]
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = torch.sigmoid(raw[:, 0]), torch.sigmoid(raw[:, 1])
    theta[:, 0, 2], theta[:, 1, 2] = torch.tanh(raw[:, 2]), torch.tanh(raw[:, 3])
    S = alm.sample_size
    sub = F.grid_sample(xa, F.affine_grid(theta, [len(x), x.shape[1], S, S], align_corners=False), align_corners=False)
    return sub.amax((2, 3)) @ alm.cls_w[a] + alm.cls_b[a]


def test_alm_batched_equals_per_attribute_modules_and_boxes_learn():
    torch.manual_seed(0)
    alm = ALM(8, 3, reduction=2, sample_size=5)
    with torch.no_grad():
        alm.loc_w.normal_(0, 0.3)  # non-trivial boxes
    x = torch.randn(4, 8, 12, 10, requires_grad=True)
    logits, boxes = alm(x)
    assert logits.shape == (4, 3) and boxes.shape == (4, 3, 4)
    assert ((boxes[..., :2] > 0) & (boxes[..., :2] < 1)).all() and (boxes[..., 2:].abs() < 1).all()
    for a in range(3):
        torch.testing.assert_close(logits[:, a], _naive_alm(alm, x, a), atol=1e-5, rtol=1e-5)
    logits.sum().backward()
    assert alm.loc_w.grad.abs().sum() > 0 and alm.se_w1.grad.abs().sum() > 0
    # initial box: centred, scale 0.8
    fresh = ALM(8, 2)
    torch.testing.assert_close(fresh(torch.randn(2, 8, 6, 6))[1][0, 0], torch.tensor([0.8, 0.8, 0.0, 0.0]))
    e_logits, e_boxes = alm(torch.zeros(0, 8, 12, 10))
    assert e_logits.shape == (0, 3)
    with pytest.raises(ValueError, match="expects"):
        alm(torch.zeros(1, 7, 4, 4))


def test_multilevel_max_over_levels():
    torch.manual_seed(1)
    m = MultiLevelALM([4, 6], 2, reduction=2, sample_size=3)
    feats = [torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4)]
    lv = m(feats)
    assert len(lv) == 2 and all(l.shape == (3, 2) for l in lv)
    torch.testing.assert_close(m.predict(feats), torch.sigmoid(torch.maximum(lv[0], lv[1])))
    torch.testing.assert_close(
        combine_levels([torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 3.0]])]), torch.tensor([[1.0, 3.0]])
    )
    with pytest.raises(ValueError, match="levels"):
        m(feats[:1])
