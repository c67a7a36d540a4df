"""GALW loss weighting: hand-computed totals, closed-form sigma gradients, groups, config building."""

import math

import pytest
import torch
from detectron2.config import get_cfg

from galw_d2 import add_galw_config
from galw_d2.galw.weighting import (
    WEIGHTING_REGISTRY,
    FixedWeighting,
    UncertaintyWeighting,
    build_loss_weighting,
    build_weighting_from_lists,
    parse_name_values,
)
from galw_d2.tasks import FIXED_WEIGHT_PRESETS, TASKS, fixed_weight_preset


def _L(**kw):
    return {k: torch.tensor(float(v), requires_grad=True) for k, v in kw.items()}


def test_fixed_weighting_hand_sum():
    w = FixedWeighting({"a": 10.0})
    total, info = w(_L(a=0.5, b=2.0))
    assert total.item() == pytest.approx(10 * 0.5 + 2.0)
    assert info == {"galw/weight/a": 10.0, "galw/weight/b": 1.0}


def test_rulwf_and_ulwf_equal_hand_computation_k1_k2():
    s = [0.3, -0.7]
    w = UncertaintyWeighting(["cls", "reg"], [1.0, 2.0], lam=1.0)
    with torch.no_grad():
        w.log_sigma.copy_(torch.tensor(s))
    total, info = w(_L(cls=1.5, reg=0.8))
    # L exp(-2s)/k + s + |exp(s) - 1|
    hand = (
        1.5 * math.exp(-0.6) / 1
        + 0.3
        + abs(math.exp(0.3) - 1)
        + 0.8 * math.exp(1.4) / 2
        - 0.7
        + abs(math.exp(-0.7) - 1)
    )
    assert total.item() == pytest.approx(hand, rel=1e-6)
    assert info["galw/weight/reg"] == pytest.approx(math.exp(1.4) / 2)
    assert info["galw/sigma/cls"] == pytest.approx(math.exp(0.3))
    u = build_weighting_from_lists("ulwf", ["cls", "reg"], {"cls": "cls", "reg": "reg"})
    with torch.no_grad():
        u.log_sigma.copy_(torch.tensor(s))
    tu, _ = u(_L(cls=1.5, reg=0.8))
    assert tu.item() == pytest.approx(1.5 * math.exp(-0.6) + 0.3 + 0.8 * math.exp(1.4) / 2 - 0.7, rel=1e-6)


def test_total_can_be_negative():
    w = UncertaintyWeighting(["a"], [1.0], lam=0.0)
    with torch.no_grad():
        w.log_sigma.fill_(-2.0)
    total, _ = w(_L(a=0.001))
    assert total.item() == pytest.approx(0.001 * math.exp(4.0) - 2.0)
    assert total.item() < 0


def test_sigma_gradient_matches_closed_form():
    torch.manual_seed(0)
    lam = 0.7
    w = UncertaintyWeighting(["a", "b", "c"], [1.0, 2.0, 1.0], groups=[["a", "b"], ["c"]], lam=lam)
    s0 = torch.tensor([0.4, -0.3])
    with torch.no_grad():
        w.log_sigma.copy_(s0)
    losses = _L(a=1.2, b=3.0, c=0.2)
    total, _ = w(losses)
    total.backward()
    # d/ds [G exp(-2s) + s + lam |exp(s) - 1|] = -2 G exp(-2s) + 1 + lam sign(exp(s)-1) exp(s)
    G = [1.2 / 1 + 3.0 / 2, 0.2]
    expect = [
        -2 * G[i] * math.exp(-2 * s0[i].item())
        + 1
        + lam * math.copysign(1, math.exp(s0[i].item()) - 1) * math.exp(s0[i].item())
        for i in range(2)
    ]
    assert w.log_sigma.grad.tolist() == pytest.approx(expect, rel=1e-5)
    # dtotal/dL_i = exp(-2 s_g) / k_i
    assert losses["b"].grad.item() == pytest.approx(math.exp(-0.8) / 2)
    assert losses["c"].grad.item() == pytest.approx(math.exp(0.6))


def test_grouped_equals_hand_and_absent_group_is_zero_but_connected():
    w = UncertaintyWeighting(["a", "b", "c"], [1.0, 2.0, 1.0], groups=[["a", "b"], ["c"]], lam=1.0)
    total, info = w(_L(a=1.0, b=4.0))  # c absent: its group gives 0 * s
    assert total.item() == pytest.approx(1.0 + 2.0)  # s = 0: sum L/k, regulariser 0
    total.backward()
    assert w.log_sigma.grad[1].item() == 0.0  # connected (grad not None) but zero
    assert info["galw/group0/sigma"] == 1.0 and "galw/group1/sigma" not in info
    assert w.groups == [["a", "b"], ["c"]]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="in no group"):
        UncertaintyWeighting(["a", "b"], [1, 1], groups=[["a"]])
    with pytest.raises(ValueError, match="group 0 and group 1"):
        UncertaintyWeighting(["a", "b"], [1, 1], groups=[["a"], ["a", "b"]])
    w = UncertaintyWeighting(["a"], [1])
    with pytest.raises(KeyError, match="loss_cls"):
        w(_L(loss_cls=1.0))
    with pytest.raises(ValueError, match="needs GALW.GROUPS"):
        build_weighting_from_lists("galw", ["a"], {"a": "cls"})
    with pytest.raises(ValueError, match="unknown strategy"):
        build_weighting_from_lists("no_such_method", ["a"], {"a": "cls"})


def test_clamp_projects_log_sigma():
    w = UncertaintyWeighting(["a", "b"], [1, 1], clamp=(-1.0, 0.5))
    with torch.no_grad():
        w.log_sigma.copy_(torch.tensor([-3.0, 2.0]))
    w.clamp_()
    assert w.log_sigma.tolist() == [-1.0, 0.5]


def test_build_from_cfg_kinds_and_defaults():
    cfg = add_galw_config(get_cfg())
    assert isinstance(build_loss_weighting(cfg), FixedWeighting)
    cfg.GALW.STRATEGY = "galw"
    cfg.GALW.GROUPS = [["loss_roi_box_reg"], ["loss_rpn_cls", "loss_box_reg"]]
    cfg.GALW.TASK_KINDS = ["loss_box_reg=reg"]
    w = build_loss_weighting(cfg)
    assert w.tasks == ["loss_roi_box_reg", "loss_rpn_cls", "loss_box_reg"]
    assert w.k.tolist() == [2.0, 1.0, 2.0]  # table kind, table kind, override
    assert w.log_sigma.numel() == 2
    cfg.GALW.STRATEGY = "rulwf"
    cfg.GALW.GROUPS = []
    w = build_loss_weighting(cfg)
    assert len(w.tasks) == 11 and w.lam == 1.0  # default: the task table


def test_default_fixed_weights_are_table1_best_row():
    """Table 1's ROI-AlignPS* baseline row (50.30 / 84.30): w = (1, 1, 10, 1, 10, 10, 10, 10, 10, 1)."""
    assert [t.weight for t in TASKS[:10]] == [1, 1, 10, 1, 10, 10, 10, 10, 10, 1]
    cfg = add_galw_config(get_cfg())
    w = build_loss_weighting(cfg)
    assert isinstance(w, FixedWeighting) and cfg.GALW.FIXED.PRESET == "table1"
    assert [w.weight(t.name) for t in TASKS[:10]] == [1, 1, 10, 1, 10, 10, 10, 10, 10, 1]
    assert w.weight("loss_attr") == 1.0 and w.weight("loss_of_another_model") == 1.0
    total, _ = w(_L(loss_rpn_cls=1.0, loss_roi_box_reg=0.5, loss_triplet=2.0, loss_cls=3.0))
    assert total.item() == pytest.approx(1.0 + 10 * 0.5 + 2.0 + 3.0)


@pytest.mark.parametrize(
    "preset,row",
    [
        ("table1", (1, 1, 10, 1, 10, 10, 10, 10, 10, 1)),
        ("table1_w3_1", (1, 1, 1, 1, 10, 10, 10, 10, 10, 1)),
        ("roi_alignps_code", (1, 1, 10, 1, 1, 1, 1, 1, 1, 1)),
        ("alignps", (1,) * 10),
        ("nae", (1,) * 10),
        ("ones", (1,) * 10),
    ],
)
def test_fixed_weight_presets(preset, row):
    assert tuple(fixed_weight_preset(preset)[t.name] for t in TASKS[:10]) == row
    cfg = add_galw_config(get_cfg())
    cfg.GALW.FIXED.PRESET = preset
    cfg.GALW.FIXED_WEIGHTS = ["loss_triplet=3"]  # an override on top of the preset
    w = build_loss_weighting(cfg)
    assert tuple(w.weight(t.name) for t in TASKS[:9]) == row[:9] and w.weight("loss_triplet") == 3.0


def test_fixed_preset_and_entry_errors():
    assert set(FIXED_WEIGHT_PRESETS) >= {"table1", "roi_alignps_code", "alignps", "nae"}
    cfg = add_galw_config(get_cfg())
    cfg.GALW.FIXED.PRESET = "table9"
    with pytest.raises(ValueError, match="preset 'table9'.*table1"):
        build_loss_weighting(cfg)
    cfg.GALW.FIXED.PRESET = "table1"
    cfg.GALW.FIXED_WEIGHTS = ["loss_triplet:3"]
    with pytest.raises(ValueError, match="GALW.FIXED_WEIGHTS.*name=value"):
        build_loss_weighting(cfg)
    cfg.GALW.FIXED_WEIGHTS = ["loss_triplet=x"]
    with pytest.raises(ValueError, match="bad value in 'loss_triplet=x'"):
        build_loss_weighting(cfg)


def test_one_name_value_parser():
    assert parse_name_values(["a=1", " b = reg "], "K") == {"a": "1", "b": "reg"}
    assert parse_name_values(["a=1.5"], "K", float) == {"a": 1.5}
    with pytest.raises(ValueError, match="K: entry '=1' has an empty name"):
        parse_name_values(["=1"], "K")


def test_registry_names_and_unknown_strategy():
    assert {"fixed", "ulwf", "rulwf", "galw", "ulwf_grouped"} <= set(WEIGHTING_REGISTRY.names())
    cfg = add_galw_config(get_cfg())
    cfg.GALW.STRATEGY = "RULWF"  # names are case-insensitive
    assert build_loss_weighting(cfg).lam == 1.0
    cfg.GALW.STRATEGY = "nope"
    with pytest.raises(ValueError, match="unknown strategy 'nope'; registered: .*rulwf"):
        build_loss_weighting(cfg)


def test_ulwf_grouped_is_galw_without_regulariser():
    cfg = add_galw_config(get_cfg())
    cfg.GALW.STRATEGY = "ulwf_grouped"
    with pytest.raises(ValueError, match="needs GALW.GROUPS"):
        build_loss_weighting(cfg)
    cfg.GALW.GROUPS = [["loss_rpn_cls", "loss_roi_box_reg"], ["loss_triplet"]]
    w = build_loss_weighting(cfg)
    assert w.lam == 0.0 and w.groups == [["loss_rpn_cls", "loss_roi_box_reg"], ["loss_triplet"]]
    total, _ = w(_L(loss_rpn_cls=1.0, loss_roi_box_reg=4.0, loss_triplet=2.0))
    assert total.item() == pytest.approx(1.0 + 4.0 / 2 + 2.0)  # sigma = 1: L / k, log sigma = 0
