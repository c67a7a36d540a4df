"""Mancs parts (galw_d2.reid): FAB, curriculum sampling, losses against hand values, the model."""

import math

import pytest
import torch
from torch import nn

from galw_d2.reid.attention import FullyAttentionalBlock
from galw_d2.reid.curriculum import curriculum_mu_sigma, curriculum_rank_probs, scale_schedule
from galw_d2.reid.losses import CurriculumTripletLoss, attention_bce_loss, identity_focal_loss
from galw_d2.reid.model import MANCS_MODEL_NAMES, build_mancs, register_mancs_models

PAPER = dict(t0=30.0, t1=60.0, a=15.0, b=0.001)


def test_fab_output_is_f_times_mask_plus_f():
    torch.manual_seed(0)
    fab = FullyAttentionalBlock(8, reduction=2)
    x = torch.randn(2, 8, 5, 3)
    with torch.no_grad():
        out, attended = fab(x)
        m = fab.mask(x)
        hand = torch.sigmoid(fab.expand(torch.relu(fab.reduce(x))))
    assert m.shape == x.shape  # no pooling: the mask keeps channels and positions
    assert float(m.min()) > 0 and float(m.max()) < 1
    # the mask varies over positions (an SE mask would be constant over H, W)
    assert float(m.std(dim=(2, 3)).max()) > 1e-4
    torch.testing.assert_close(m, hand)
    torch.testing.assert_close(attended, x * hand)
    torch.testing.assert_close(out, x * hand + x)
    with pytest.raises(ValueError, match=r"expected \(N, 8, H, W\)"):
        fab(torch.randn(2, 4, 5, 3))


def test_curriculum_mu_sigma_hand_values():
    n = 20
    assert curriculum_mu_sigma(0, n, **PAPER) == pytest.approx((20.0, 15.0 / 0.001))
    assert curriculum_mu_sigma(15, n, **PAPER) == pytest.approx((10.0, 15.0 * 0.001**-0.5))
    assert curriculum_mu_sigma(30, n, **PAPER) == pytest.approx((0.0, 15.0))
    assert curriculum_mu_sigma(60, n, **PAPER) == pytest.approx((0.0, 0.015))
    assert curriculum_mu_sigma(45, n, **PAPER)[0] == 0.0  # [.]_+ after t0
    assert scale_schedule(30, 60, 160, 24) == pytest.approx((4.5, 9.0))
    with pytest.raises(ValueError, match="0 < T0 < T1"):
        curriculum_mu_sigma(0, n, 60, 30, 15, 0.001)


def _formula_probs(t, n):
    mu, sigma = curriculum_mu_sigma(t, n, **PAPER)
    dens = [math.exp(-((r - mu) ** 2) / (2 * sigma**2)) for r in range(n)]
    return torch.tensor(dens, dtype=torch.float64) / sum(dens)


@pytest.mark.parametrize("t", [0.0, 30.0, 60.0])
def test_curriculum_sampler_frequencies_match_formula(t):
    """Sampled negative ranks of the triplet loss at t = 0, t0, t1 against the Gaussian of Sec. 3.3."""
    P, K = 6, 4
    n_neg = (P - 1) * K  # 20 negatives per anchor
    pids = torch.arange(P).repeat_interleave(K)
    torch.manual_seed(0)
    x = torch.randn(P * K, 3)
    dist = torch.cdist(x, x)
    loss = CurriculumTripletLoss(0.5, positives="all", **PAPER)
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(n_neg, dtype=torch.float64)
    # rank of each negative in its anchor's hardest-first order
    neg_order = {}
    for i in range(P * K):
        negs = [j for j in range(P * K) if pids[j] != pids[i]]
        negs.sort(key=lambda j: float(dist[i, j]))
        neg_order[i] = {j: r for r, j in enumerate(negs)}
    for _ in range(250):
        a, p, n = loss.sample_triplets(dist, pids, t, gen)
        assert bool((pids[a] == pids[p]).all()) and bool((pids[a] != pids[n]).all()) and bool((a != p).all())
        for ai, ni in zip(a.tolist(), n.tolist()):
            counts[neg_order[ai][ni]] += 1
    assert counts.sum() == 250 * P * K * (K - 1)  # every (anchor, positive) pair: P K (K-1) triplets
    freq = counts / counts.sum()
    expected = _formula_probs(t, n_neg)
    torch.testing.assert_close(curriculum_rank_probs(t, n_neg, **PAPER), expected)
    assert float((freq - expected).abs().max()) < 0.012, (freq, expected)
    if t == 60.0:
        assert freq[0] == 1.0  # sigma = a * b = 0.015: always the hardest negative
    if t == 0.0:
        assert float(freq.max() - freq.min()) < 0.03  # sigma = a / b: nearly uniform (random negatives)


def test_triplet_loss_hand_value_hardest_negatives():
    # 1-D features: id 0 at 0 and 1, id 1 at 3 and 1.5; at t = t1 the hardest negative is chosen
    f = torch.tensor([[0.0], [1.0], [3.0], [1.5]], requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1])
    loss = CurriculumTripletLoss(0.5, **PAPER)(f, pids, 60.0)
    # anchors: 0 -> [0.5 + 1 - 1.5]+ = 0; 1 -> 0.5 + 1 - 0.5 = 1; 3 -> 0.5 + 1.5 - 2 = 0; 1.5 -> 0.5 + 1.5 - 0.5 = 1.5
    assert float(loss) == pytest.approx((0 + 1 + 0 + 1.5) / 4, abs=1e-6)
    loss.backward()
    assert f.grad is not None and float(f.grad.abs().sum()) > 0
    # a batch without positives has no triplet: loss 0, still differentiable
    single = CurriculumTripletLoss(0.5, **PAPER)(f, torch.tensor([0, 1, 2, 3]), 0.0)
    assert float(single) == 0.0 and single.requires_grad


def test_focal_and_attention_losses_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    pids = torch.tensor([0, 1])
    # p = (0.5, 0.75): true class 0 -> (1-0.5)^2 * -log 0.5; other class -> 0.75^2 * -log 0.25
    per_sample = 0.25 * math.log(2) + 0.5625 * math.log(4)
    # second sample: true class 1 (p 0.5) and other class 0 (p 0.75): the same value
    assert float(identity_focal_loss(logits, pids, gamma=2.0)) == pytest.approx(per_sample, rel=1e-5)
    # gamma = 0 is the per-identity BCE summed over identities
    assert float(identity_focal_loss(logits, pids, gamma=0.0)) == pytest.approx(math.log(2) + math.log(4), rel=1e-5)
    # attention BCE: mean over the B x C entries (the paper's 1/(PKC))
    assert float(attention_bce_loss(logits, pids)) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match=r"identity labels must be in \[0, 2\)"):
        identity_focal_loss(logits, torch.tensor([0, 2]))


def test_mancs_model_outputs_and_torchreid_factory():
    torch.manual_seed(0)
    model = build_mancs(
        5,
        "resnet18",
        widths=[8, 16, 16, 32],
        blocks=[1, 1, 1, 1],
        fab_stages=["layer3", "layer4"],
        fab_reduction=4,
        rank_dim=12,
        cls_dim=10,
    )
    x = torch.randn(3, 3, 64, 32)
    out = model(x)
    assert set(out) == {"rank", "cls_logits", "att_logits"}
    assert out["rank"].shape == (3, 12) and out["cls_logits"].shape == (3, 5) and out["att_logits"].shape == (3, 5)
    assert model.att_head.in_features == 16 + 32  # pooled FAB maps of layer3 and layer4, concatenated
    # sigmoid heads start at the 1/C prior
    torch.testing.assert_close(torch.sigmoid(model.cls_head.bias), torch.full((5,), 0.2))
    assert isinstance(model.backbone["layer4"][-1].prelu, nn.PReLU)
    model.eval()
    assert model(x).shape == (3, 12)  # test time: the rank-branch descriptor

    from torchreid.reid.models import build_model

    assert set(register_mancs_models()) == set(MANCS_MODEL_NAMES)
    m = build_model("mancs_resnet18", num_classes=7, pretrained=False, use_gpu=False)
    assert m.cls_head.out_features == 7 and m.feature_dim == 2048
    with pytest.raises(ValueError, match="FAB_STAGES"):
        build_mancs(5, "resnet18", widths=[8, 16, 16, 32], fab_stages=[])
