"""AlignPS pure-torch parts against hand computations: triplet, focal-OIM, FCOS targets, DeformConv."""

import math

import pytest
import torch
import torch.nn.functional as F

from galw_d2.modeling.alignps.deform_conv import DeformConv
from galw_d2.modeling.alignps.losses import batch_hard_triplet_loss, triplet_with_table_rows
from galw_d2.modeling.alignps.targets import centerness_targets, fcos_targets, locations
from galw_d2.modeling.oim import OIMMemory, oim_loss

S2, S3_2, S0_8, S0_4 = math.sqrt(2), math.sqrt(3.2), math.sqrt(0.8), math.sqrt(0.4)
# Unit vectors of the triplet batch: a, b id 0; c, d id 1.
A, B, C, D = (1.0, 0.0), (0.6, 0.8), (0.0, 1.0), (-1.0, 0.0)


def test_triplet_hand_computed():
    # Pairwise distances: ab = sqrt(.8), ac = sqrt2, ad = 2, bc = sqrt(.4), bd = sqrt(3.2), cd = sqrt2.
    # Extra samples: e unlabeled (-1, dropped); f = (0, -1) the only one of id 2 -> no positive, so not
    # an anchor, but it is a negative of the others: af = sqrt2, bf = sqrt(3.6), cf = 2, df = sqrt2.
    feats = torch.tensor([A, B, C, D, (0.6, 0.8), (0.0, -1.0)], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, -1, 2])
    m = 0.3
    l_a = max(S0_8 - min(S2, 2.0, S2) + m, 0.0)  # hardest pos b, hardest neg c or f -> 0
    l_b = max(S0_8 - min(S0_4, S3_2, math.sqrt(3.6)) + m, 0.0)  # neg c
    l_c = max(S2 - min(S2, S0_4, 2.0) + m, 0.0)  # pos d, neg b
    l_d = max(S2 - min(2.0, S3_2, S2) + m, 0.0)  # pos c, neg f -> exactly the margin
    expected = (l_a + l_b + l_c + l_d) / 4
    assert l_a == 0.0 and l_d == pytest.approx(0.3)
    loss = batch_hard_triplet_loss(feats, labels, m)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(loss) == pytest.approx(0.4859321, abs=1e-5)
    loss.backward()
    assert torch.all(feats.grad[4] == 0)  # the unlabeled sample takes no part
    assert feats.grad[[1, 2, 3]].abs().sum() > 0


def test_triplet_degenerate_cases_do_not_crash():
    f = torch.randn(3, 4, requires_grad=True)
    for labels in ([5, 5, 5], [-1, -1, -1], [0, 1, 2], [3, -1, -1]):  # no negatives / none labeled / no positives
        loss = batch_hard_triplet_loss(f, torch.tensor(labels), 0.3)
        assert float(loss) == 0.0
        loss.backward()
        assert torch.all(f.grad == 0)
    assert float(batch_hard_triplet_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))) == 0.0


def test_triplet_with_table_rows_hand_computed():
    # Features a (id 0), c (id 1); the table rows of ids 0, 1 are b, d; id 2's row is still zero and is
    # not added. The batch becomes {a, c, b, d} with ids {0, 1, 0, 1}: anchors a 0, b, c, d 0 as above.
    lut = torch.tensor([B, D, (0.0, 0.0)])
    feats = torch.tensor([A, C, (0.0, -1.0)], requires_grad=True)
    pids = torch.tensor([0, 1, -1])
    l_b = S0_8 - S0_4 + 0.3
    l_c = S2 - S0_4 + 0.3
    expected = (0.0 + l_b + l_c + 0.0) / 4
    loss = triplet_with_table_rows(feats, pids, lut, 0.3)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert lut.grad is None
    # A labeled id whose row is zero and who is alone: no positive -> no anchor, loss 0.
    assert float(triplet_with_table_rows(feats[2:], torch.tensor([2]), lut)) == 0.0


def test_focal_oim_hand_computed():
    mem = OIMMemory(num_pids=2, queue_size=1, feat_dim=2)
    mem.lut.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    mem.cq.copy_(torch.tensor([[-1.0, 0.0]]))
    feats = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    pids = torch.tensor([0, -1, 1])
    # x1 = (.6, .8), id 0: logits 10 * [.6, .8, -.6] = [6, 8, -6];  p = e^6 / (e^6 + e^8 + e^-6)
    p1 = math.exp(6) / (math.exp(6) + math.exp(8) + math.exp(-6))
    # x2 unlabeled: not a target.   x3 = (0, 1), id 1: logits [0, 10, 0]; p = e^10 / (e^10 + 2)
    p3 = math.exp(10) / (math.exp(10) + 2.0)
    focal = lambda p: -((1 - p) ** 2) * math.log(p)  # noqa: E731  focal-OIM, gamma 2 (AlignPS)
    expected = (focal(p1) + focal(p3)) / 2
    loss = oim_loss(feats, pids, mem, scale=10.0, focal_gamma=2.0)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    plain = oim_loss(feats, pids, mem, scale=10.0, focal_gamma=0.0)
    assert float(plain) == pytest.approx((-math.log(p1) - math.log(p3)) / 2, rel=1e-5)


def test_locations_row_major():
    p = locations(2, 3, 8)
    assert p.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_fcos_targets_hand_case():
    # 4 x 6 map, stride 8: points x in {4,12,...,44}, y in {4,12,20,28}; index = row * 6 + col.
    pts = locations(4, 6, 8)
    gt = torch.tensor(
        [
            [0.0, 0.0, 40.0, 32.0],  # GT0, area 1280, centre (20,16): region [8,4,32,28]
            [16.0, 8.0, 32.0, 24.0],
        ]
    )  # GT1, area 256, centre (24,16): region [12,4,36,28]
    #                                               clipped to the box: [16,8,32,24]
    matched, reg = fcos_targets(pts, gt, stride=8, radius=1.5)
    idx = lambda x, y: (y // 8) * 6 + x // 8  # noqa: E731
    # GT0's centre region holds x in {12,20,28}, y in {12,20}; GT1's holds x in {20,28}, y in {12,20}:
    # the 4 shared locations go to GT1 (smaller area).
    expect = torch.full((24,), -1)
    for x in (12,):
        for y in (12, 20):
            expect[idx(x, y)] = 0
    for x in (20, 28):
        for y in (12, 20):
            expect[idx(x, y)] = 1
    assert matched.tolist() == expect.tolist()
    assert reg[idx(12, 12)].tolist() == [12, 12, 28, 20]  # (l, t, r, b) to GT0
    assert reg[idx(20, 12)].tolist() == [4, 4, 12, 12]  # to GT1
    assert reg[idx(28, 20)].tolist() == [12, 12, 4, 4]
    assert torch.all(reg[matched < 0] == 0)
    # (4, 4) is inside GT0 but outside its centre region: background with centre sampling, GT0 without.
    assert int(matched[idx(4, 4)]) == -1
    m0, r0 = fcos_targets(pts, gt, stride=8, radius=0.0)
    assert int(m0[idx(4, 4)]) == 0 and r0[idx(4, 4)].tolist() == [4, 4, 36, 28]
    assert int(m0[idx(44, 4)]) == -1  # outside every box
    ctr = centerness_targets(reg[[idx(12, 12)]])
    assert float(ctr) == pytest.approx(math.sqrt(12 / 28 * 12 / 20), rel=1e-6)
    m_empty, r_empty = fcos_targets(pts, torch.zeros(0, 4), stride=8)
    assert torch.all(m_empty == -1) and r_empty.shape == (24, 4)


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv_zero_offsets_equals_conv(modulated):
    torch.manual_seed(0)
    dc = DeformConv(3, 5, 3, padding=1, modulated=modulated)
    x = torch.randn(2, 3, 7, 9)
    ref = F.conv2d(x, dc.weight, dc.bias, padding=1)
    assert torch.allclose(dc(x), ref, atol=1e-5)


def test_deform_conv_offset_shifts_sampling():
    # dx = +1 for every tap samples in(y, x + 1): equal to a conv of the input shifted left by one column
    # (compared away from the left border, where the shifted input's zero padding differs).
    torch.manual_seed(0)
    dc = DeformConv(2, 4, 3, padding=1)
    with torch.no_grad():
        dc.offset_conv.bias.view(9, 2)[:, 1] = 1.0  # (dy, dx) pairs per kernel tap
    x = torch.randn(1, 2, 6, 8)
    shifted = torch.cat([x[..., 1:], torch.zeros_like(x[..., :1])], dim=3)
    ref = F.conv2d(shifted, dc.weight, dc.bias, padding=1)
    assert torch.allclose(dc(x)[..., 1:], ref[..., 1:], atol=1e-5)
    assert not torch.allclose(dc(x), F.conv2d(x, dc.weight, dc.bias, padding=1), atol=1e-3)


def test_afa_neck_concatenates_top_down():
    # Plain-conv neck: P3 = out(cat(lat3(C3), up(cat(lat4(C4), up(lat5(C5)))))) with nearest upsampling.
    from galw_d2.modeling.alignps.afa_neck import AFANeck

    torch.manual_seed(0)
    neck = AFANeck([4, 6, 8], lateral_channels=3, out_channels=5, deformable=False)
    assert neck.output_conv.in_channels == 9  # 3 levels x 3 channels: concatenation, not a sum
    c3, c4, c5 = torch.randn(1, 4, 8, 12), torch.randn(1, 6, 4, 6), torch.randn(1, 8, 2, 3)
    l3, l4, l5 = (conv(x) for conv, x in zip(neck.lateral_convs, (c3, c4, c5)))
    t4 = torch.cat([l4, l5.repeat_interleave(2, 2).repeat_interleave(2, 3)], dim=1)
    t3 = torch.cat([l3, t4.repeat_interleave(2, 2).repeat_interleave(2, 3)], dim=1)
    assert torch.allclose(neck([c3, c4, c5]), neck.output_conv(t3), atol=1e-6)


def test_fcos_head_centerness_on_regression_tower():
    from galw_d2.modeling.alignps.fcos_head import FCOSHead

    torch.manual_seed(0)
    head = FCOSHead(8, conv_dim=8, num_convs=2, norm_groups=2, stride=8, deformable_last=True)
    x = torch.randn(1, 8, 5, 6)
    cls0, box0, ctr0 = head(x)
    assert cls0.shape == (1, 1, 5, 6) and box0.shape == (1, 4, 5, 6) and ctr0.shape == (1, 1, 5, 6)
    assert torch.all(box0 >= 0)
    assert torch.allclose(torch.sigmoid(head.cls_logits.bias), torch.tensor(0.01))  # focal prior
    with torch.no_grad():
        for p in head.cls_tower.parameters():
            p.add_(torch.randn_like(p))
    cls1, box1, ctr1 = head(x)
    assert torch.equal(ctr0, ctr1) and torch.equal(box0, box1) and not torch.allclose(cls0, cls1)
