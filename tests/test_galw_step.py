"""The GALW step and its extension points: registered methods and grouping strategies used through the
config alone, the probe-loss setting, AMP, full-model gradient clipping, divergence, the workflow API."""

import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from galw_toy import ToyTrainer, toy_cfg  # noqa: E402

from galw_d2.engine import GALWStep, maybe_add_full_model_gradient_clipping, unwrap_galw  # noqa: E402
from galw_d2.galw.grouping import GROUPING_REGISTRY, GroupingStrategy, load_trends  # noqa: E402
from galw_d2.galw.weighting import WEIGHTING_REGISTRY, LossWeighting  # noqa: E402
from galw_d2.galw.workflow import TwoPhase, phase1_cfg  # noqa: E402


@WEIGHTING_REGISTRY.register("test_scaled_sum")
class ScaledSum(LossWeighting):
    """A method registered from this test file: total = factor * sum L_i; counts its after_step calls."""

    def __init__(self, tasks, factor: float = 0.5):
        super().__init__(tasks)
        self.factor = float(factor)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg, tasks=None):
        return {"tasks": list(tasks or cfg.GALW.TASKS), "factor": cfg.GALW.LAMBDA}

    def effective_weights(self, losses):
        return {k: self.factor for k in losses}

    def forward(self, losses):
        return self.factor * sum(losses.values()), {"galw/test/factor": self.factor}

    def after_step(self, losses, iteration):
        self.steps += 1


@GROUPING_REGISTRY.register("test_first_vs_rest")
class FirstVsRest(GroupingStrategy):
    """A grouping registered from this test file: the first task alone, the rest together."""

    @classmethod
    def from_config(cls, cfg):
        return {}

    def __call__(self, trends, num_groups):
        t = list(trends["tasks"])
        return [t[:1], t[1:]], {"notes": ["first vs rest"]}


def _train(cfg, cls=ToyTrainer):
    torch.manual_seed(0)
    t = cls(cfg)
    t.resume_or_load(resume=False)
    t.train()
    return t


def test_registered_method_is_usable_through_config_alone(tmp_path):
    cfg = toy_cfg(tmp_path, strategy="test_scaled_sum", record=False, max_iter=3)
    cfg.GALW.LAMBDA = 0.25
    t = _train(cfg)
    w = unwrap_galw(t.model).weighting
    assert isinstance(w, ScaledSum) and w.factor == 0.25 and int(w.steps) == 3
    assert isinstance(t._trainer, GALWStep)
    assert t.storage.histories()["galw/test/factor"].latest() == 0.25
    assert t.storage.histories()["galw/weighted_total"].latest() == pytest.approx(
        0.25 * (t.storage.histories()["loss_a"].latest() + t.storage.histories()["loss_b"].latest()), rel=1e-5
    )


def test_registered_grouping_is_usable_through_config_alone(tmp_path):
    cfg = toy_cfg(tmp_path, three=True, record=False, max_iter=4)
    cfg.GALW.RECORD.EPOCH_ITERS = 2
    cfg.GALW.GROUPING.STRATEGY = "test_first_vs_rest"
    wf = TwoPhase(cfg, ToyTrainer, str(tmp_path / "wf"))
    p1 = wf.run_phase1()
    res = wf.group(p1.trends, plots=False)
    assert res["groups"] == [["loss_a"], ["loss_b", "loss_c"]] and "first vs rest" in res["report"]["notes"]
    assert res["settings"]["strategy"] == "test_first_vs_rest"


@pytest.mark.parametrize("probe", ["raw", "weighted"])
def test_probe_loss_setting_is_honoured_identically_under_every_strategy(tmp_path, probe):
    """Iteration 0 sees identical model outputs under every strategy (same init, same data). With the raw
    probe the trends are then identical whatever the weighting; with the weighted one, fixed's loss_b
    (weight 10) is 10x its raw value: a constant factor leaks into log10|slope| only in that form."""
    trends = {}
    for strategy in ("fixed", "rulwf"):
        cfg = toy_cfg(tmp_path / f"{strategy}_{probe}", strategy=strategy, record=True, max_iter=1)
        cfg.GALW.FIXED_WEIGHTS = ["loss_b=10"]
        cfg.GALW.RECORD.PROBE_LOSS = probe
        _train(cfg)
        trends[strategy] = load_trends(str(tmp_path / f"{strategy}_{probe}" / "gradient_trends.json"))
        assert trends[strategy]["settings"]["probe_loss"] == probe
    fx, ru = trends["fixed"]["gradient_magnitude"], trends["rulwf"]["gradient_magnitude"]
    if probe == "raw":
        assert fx == ru
    else:  # rulwf at sigma = 1: weight 1/k (k = 2 for the regression loss_b)
        assert fx["loss_a"][0] == pytest.approx(ru["loss_a"][0], rel=1e-6)
        assert fx["loss_b"][0] == pytest.approx(10 * 2 * ru["loss_b"][0], rel=1e-6)


def test_amp_bfloat16_trains_a_step_on_cpu(tmp_path):
    cfg = toy_cfg(tmp_path, strategy="rulwf", record=True, max_iter=2)
    cfg.SOLVER.AMP.ENABLED = True
    t = _train(cfg)
    assert t._trainer.amp_dtype == torch.bfloat16 and t._trainer.grad_scaler is None
    s = unwrap_galw(t.model).weighting.log_sigma.detach()
    assert torch.isfinite(s).all() and (s != 0).all()
    assert json.loads((tmp_path / "gradient_trends.json").read_text())["probe_counts"]["loss_a"] == [1]


def test_full_model_gradient_clipping_vs_hand_computation():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 10.0
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    opt = maybe_add_full_model_gradient_clipping(cfg, torch.optim.SGD)([{"params": [a]}, {"params": [b]}], lr=1.0)
    a.grad, b.grad = torch.tensor([6.0, 8.0]), torch.tensor([10.0 * math.sqrt(3)])  # global norm 20
    opt.step()
    # global clipping: every gradient scaled by 10 / 20 (per-tensor clipping would leave a's norm 10 as is)
    assert torch.allclose(a.detach(), torch.tensor([-3.0, -4.0]), atol=1e-5)
    assert torch.allclose(b.detach(), torch.tensor([-5.0 * math.sqrt(3)]), atol=1e-5)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    assert maybe_add_full_model_gradient_clipping(cfg, torch.optim.SGD) is torch.optim.SGD


def test_divergence_names_the_loss_and_iteration(tmp_path):
    cfg = toy_cfg(tmp_path, strategy="fixed", record=False, max_iter=50)
    cfg.SOLVER.BASE_LR = 1e6
    with pytest.raises(
        FloatingPointError,
        match=r"diverged at iteration \d+: (loss_[ab] = (nan|inf)|.*non-finite|"
        r"the sum of the losses is .* largest: loss_[ab] = )",
    ):
        _train(cfg)
    cfg.GALW.DIVERGENCE_RATIO = 0.0  # the ratio test off: the non-finite checks still stop it
    with pytest.raises(FloatingPointError, match=r"diverged at iteration \d+: (loss_[ab] = (nan|inf)|.*non-finite)"):
        _train(cfg)


def test_two_phase_shares_initial_weights_with_seed_unset(tmp_path):
    cfg = toy_cfg(tmp_path, three=True, record=False, max_iter=4)
    cfg.GALW.RECORD.EPOCH_ITERS = 2
    cfg.GALW.GROUPING.NUM_GROUPS = 2
    assert cfg.SEED == -1
    wf = TwoPhase(cfg, ToyTrainer, str(tmp_path / "wf"))
    assert wf.cfg.SEED >= 0  # drawn once, shared by both phases
    p1 = wf.run_phase1()
    assert p1.cfg.GALW.STRATEGY == "fixed" == cfg.GALW.PHASE1.STRATEGY  # the Fig. 3 default
    groups = wf.group(p1.trends, plots=False)["groups"]
    p2 = wf.run_phase2(groups)
    assert p1.initial_digest == p2.initial_digest is not None
    assert p2.cfg.GALW.STRATEGY == "galw" and unwrap_galw(p2.trainer.model).weighting.groups == groups
    with pytest.raises(ValueError, match="needs groups"):
        c = cfg.clone()
        c.GALW.PHASE1.STRATEGY = "galw"
        phase1_cfg(c)
