"""The other multi-task methods (DWA, RLW, FAMO, GradNorm, torchjd aggregation) against hand computations
on toy two/three-task problems, their checkpoint state, and a short ToyTrainer run of each through the
config alone."""

import math
import os
import sys
from importlib.util import find_spec

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from galw_toy import ExactResumeToyTrainer, ToyTrainer, toy_cfg  # noqa: E402

from galw_d2.engine import unwrap_galw  # noqa: E402
from galw_d2.galw.weighting import (
    DWA,
    FAMO,
    RLW,
    WEIGHTING_REGISTRY,
    AggregationWeighting,  # noqa: E402
    GradNorm,
)

# torchjd (Python >= 3.10) backs the aggregation strategies and the cross-checks
needs_torchjd = pytest.mark.skipif(find_spec("torchjd") is None, reason="torchjd is not installed")
AGG_NAMES = ["upgrad", "pcgrad", "mgda", "imtl_g", "aligned_mtl", "dualproj"]
ALL_NAMES = ["dwa", "rlw", "famo", "gradnorm"] + AGG_NAMES


def L(*values):
    """Leaf losses {"a": .., "b": .., "c": ..} that record their gradient."""
    return {n: torch.tensor(float(v), requires_grad=True) for n, v in zip("abc", values)}


# ---------------------------------------------------------------------------------------------- DWA
def test_dwa_weights_vs_hand_computation():
    T, E = 2.0, 2
    dwa = DWA(["a", "b"], temperature=T, epoch_iters=E)
    seq = [
        (4.0, 2.0),
        (2.0, 2.0),  # epoch 0: averages (3, 2)
        (1.5, 1.5),
        (1.5, 1.5),  # epoch 1: averages (1.5, 1.5)
        (1.0, 1.0),
    ]  # epoch 2: weights from r = (1.5/3, 1.5/2) = (0.5, 0.75)
    seen = []
    for it, (a, b) in enumerate(seq):
        losses = L(a, b)
        total, info = dwa(losses)
        seen.append((info["galw/weight/a"], info["galw/weight/b"]))
        total.backward()
        assert (losses["a"].grad.item(), losses["b"].grad.item()) == pytest.approx(seen[-1])
        dwa.after_step(losses, it)
    assert seen[:4] == [(1.0, 1.0)] * 4  # first two epochs: w = 1
    ea, eb = math.exp(0.5 / T), math.exp(0.75 / T)
    assert seen[4] == pytest.approx((2 * ea / (ea + eb), 2 * eb / (ea + eb)), rel=1e-9)
    assert seen[4][0] + seen[4][1] == pytest.approx(2.0)  # sum = K
    assert dwa.effective_weights(L(1, 1)) == pytest.approx({"a": seen[4][0], "b": seen[4][1]})


@needs_torchjd
def test_dwa_matches_torchjd_scalarizer_and_groups_sum_their_tasks():
    from torchjd.scalarization import DWA as JDDWA

    g = torch.Generator().manual_seed(0)
    ours = DWA(["a", "b", "c"], groups=[["a", "c"], ["b"]], temperature=1.5, epoch_iters=3)
    ref = JDDWA(temperature=1.5)
    for it in range(12):
        v = torch.rand(3, generator=g) + 0.1
        losses = {"a": v[0], "b": v[1], "c": v[2]}
        total, info = ours(losses)
        expect = ref(torch.stack([v[0] + v[2], v[1]]))  # group losses: a + c, b
        assert float(total) == pytest.approx(float(expect), rel=1e-6)
        assert info["galw/weight/a"] == info["galw/weight/c"] == info["galw/group0/weight"]
        ours.after_step(losses, it)
        if (it + 1) % 3 == 0:
            ref.step()


def test_dwa_checkpoint_round_trip_mid_epoch():
    a = DWA(["a", "b"], temperature=2.0, epoch_iters=3)
    for it, (x, y) in enumerate([(3, 1), (2, 1), (1, 1), (1, 2), (0.5, 2), (0.5, 1), (0.4, 0.9)]):
        a.after_step(L(x, y), it)
    b = DWA(["a", "b"], temperature=2.0, epoch_iters=3)
    b.load_state_dict(a.state_dict())
    assert int(b.epochs_done) == 2 and int(b.epoch_count[0]) == 1
    assert torch.equal(b.epoch_sum, a.epoch_sum) and torch.allclose(b.slot_weights(), a.slot_weights())
    assert not torch.allclose(b.slot_weights(), torch.ones(2, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- RLW
@needs_torchjd
def test_rlw_weights_vs_hand_computation():
    rlw = RLW(["a", "b", "c"], weight_sum=1.0)
    torch.manual_seed(3)
    p = torch.randn(3).tolist()
    e = [math.exp(x) for x in p]
    expect = [x / sum(e) for x in e]  # softmax of the normal draw (Lin et al. 2022)
    torch.manual_seed(3)
    losses = L(2.0, 3.0, 5.0)
    total, info = rlw(losses)
    assert [info[f"galw/weight/{n}"] for n in "abc"] == pytest.approx(expect, rel=1e-6)
    assert total.item() == pytest.approx(2 * expect[0] + 3 * expect[1] + 5 * expect[2], rel=1e-6)
    assert rlw.effective_weights(losses) == pytest.approx(dict(zip("abc", expect)), rel=1e-6)
    # a fresh draw every step, scaled by WEIGHT_SUM, and the same as torchjd's Random scalarizer for a seed
    from torchjd.scalarization import Random

    rlw3 = RLW(["a", "b", "c"], weight_sum=3.0)
    torch.manual_seed(5)
    t1, i1 = rlw3(L(1, 1, 1))
    t2, i2 = rlw3(L(1, 1, 1))
    assert float(t1) == pytest.approx(3.0) and i1 != i2
    torch.manual_seed(5)
    ours = float(rlw3(L(2, 3, 5))[0])
    torch.manual_seed(5)
    assert ours == pytest.approx(3 * float(Random()(torch.tensor([2.0, 3.0, 5.0]))), rel=1e-6)


# --------------------------------------------------------------------------------------------- FAMO
def test_famo_total_gradient_and_logit_update_vs_hand_computation():
    famo = FAMO(["a", "b"], lr=0.025, gamma=0.0, eps=1e-8)
    losses = L(2.0, 0.5)
    total, info = famo(losses)
    # z = (1/2, 1/2); c = 1 / (0.5/2 + 0.5/0.5) = 0.8; total = c sum z log L = 0.8 * 0.5 * log(2 * 0.5) = 0
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    total.backward()
    # d total / d L_i = c z_i / L_i: (0.2, 0.8), a convex combination of the task gradients
    assert (losses["a"].grad.item(), losses["b"].grad.item()) == pytest.approx((0.2, 0.8), rel=1e-6)
    assert (info["galw/weight/a"], info["galw/weight/b"]) == pytest.approx((0.2, 0.8), rel=1e-6)
    famo.after_step(losses, 0)
    assert torch.equal(famo.logits, torch.zeros(2))  # not moved before the next loss is seen
    famo(L(1.0, 0.45))
    # delta = (log 2 - log 1, log 0.5 - log 0.45); grad = z (delta - z.delta) = +-(delta_a - delta_b)/4;
    # Adam's first step is lr * sign(grad): a fell more -> its logit goes down
    d = (math.log(2.0) - math.log(0.45 / 0.5)) / 4
    assert d > 0
    assert famo.logits.tolist() == pytest.approx([-0.025, 0.025], rel=1e-5)
    assert int(famo.adam_step) == 1


@needs_torchjd
def test_famo_matches_torchjd_and_torch_adam_over_steps():
    from torchjd.scalarization import FAMO as JDFAMO

    g = torch.Generator().manual_seed(1)
    ours = FAMO(["a", "b", "c"], lr=0.025, gamma=0.001)
    ref = JDFAMO(3, lr=0.025, weight_decay=0.001)
    vs = [torch.rand(3, generator=g) + 0.2 for _ in range(8)]
    for it, v in enumerate(vs):
        if it > 0:
            ref.update(v)  # the reference's "after" = the next losses, as ours
        losses = {n: v[i].clone().requires_grad_(True) for i, n in enumerate("abc")}
        total, _ = ours(losses)
        assert float(total) == pytest.approx(float(ref(v)), rel=1e-5, abs=1e-6)
        assert torch.allclose(ours.logits, ref._w.detach(), atol=1e-6)
        ours.after_step(losses, it)
    assert ours.logits.abs().max() > 0.01  # moved (random losses: the logits oscillate)


def test_famo_checkpoint_round_trip_and_errors():
    a = FAMO(["a", "b"])
    for it, v in enumerate([(2.0, 1.0), (1.0, 0.9), (0.8, 0.85)]):
        a(L(*v))
        a.after_step(L(*v), it)
    b = FAMO(["a", "b"])
    b.load_state_dict(a.state_dict())
    for k in ("logits", "adam_m", "adam_v", "adam_step", "prev_log_d", "prev_valid"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    ta, tb = a(L(0.7, 0.8))[0], b(L(0.7, 0.8))[0]
    assert float(ta) == float(tb) and torch.equal(a.logits, b.logits)
    with pytest.raises(ValueError, match=r"not above their lower bound.*MIN_LOSSES"):
        FAMO(["a", "b"])(L(0.0, -1.0))
    assert float(FAMO(["a", "b"], min_losses={"b": -2.0})(L(1.0, -1.0))[0]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="MIN_LOSSES: unknown task"):
        FAMO(["a", "b"], min_losses={"z": 0.0})


# ----------------------------------------------------------------------------------------- GradNorm
class _Linear2(torch.nn.Module):
    """Shared theta (2,), losses L_i = c_i . theta + h_i(head_i): gradients on theta are the rows c_i."""

    def __init__(self, rows, theta=(1.0, 1.0)):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta))
        self.heads = torch.nn.Parameter(torch.tensor([0.5, 2.0, -1.0][: len(rows)]))
        self.rows = torch.tensor(rows)

    def forward(self):
        # head terms: a^2, 3b, c^2 -> their gradients 2a, 3, 2c
        head = [self.heads[0] ** 2, 3 * self.heads[1], self.heads[2] ** 2 if len(self.rows) > 2 else None]
        return {n: self.rows[i] @ self.theta + head[i] for i, n in enumerate("abc"[: len(self.rows)])}


def test_gradnorm_weight_gradient_and_renormalisation_vs_hand_computation():
    net = _Linear2([[3.0, 4.0], [1.0, 0.0]], theta=(1.0, 1.0))  # ||grad L_a|| = 5, ||grad L_b|| = 1
    gn = GradNorm(["a", "b"], alpha=1.5)
    gn.bind_shared_parameters([net.theta])
    losses = net()  # L_a = 7 + 0.25, L_b = 1 + 6
    total, _ = gn(losses)
    gn.backward(total, losses)
    # step 0: r = 1, G = (5, 1), target = mean(G) = 3 -> dL_grad/dw = (sign(2) 5, sign(-2) 1)
    assert gn.weight.grad.tolist() == pytest.approx([5.0, -1.0])
    assert net.theta.grad.tolist() == pytest.approx([4.0, 4.0])  # sum_i w_i c_i with w = 1
    assert net.heads.grad.tolist() == pytest.approx([1.0, 3.0])
    assert gn.initial_loss.tolist() == pytest.approx([7.25, 7.0])
    assert float(gn.last_gradnorm_loss) == pytest.approx(4.0)
    # step 1 with w = (0.5, 1.5) and new losses: Ltilde = L / L(0), r = Ltilde / mean, target = mean(G) r^alpha
    with torch.no_grad():
        gn.weight.copy_(torch.tensor([0.5, 1.5]))
        net.theta.copy_(torch.tensor([0.2, 0.1]))
    net.zero_grad()
    losses = net()  # L_a = 1.0 + 0.25 = 1.25, L_b = 0.2 + 6 = 6.2
    total, info = gn(losses)
    assert info["galw/weight/a"] == 0.5
    gn.backward(total, losses)
    lt = [1.25 / 7.25, 6.2 / 7.0]
    r = [x / (sum(lt) / 2) for x in lt]
    G = [0.5 * 5, 1.5 * 1]
    target = [(sum(G) / 2) * x**1.5 for x in r]
    expect = [math.copysign(5.0, G[0] - target[0]), math.copysign(1.0, G[1] - target[1])]
    assert gn.weight.grad.tolist() == pytest.approx(expect)
    assert net.theta.grad.tolist() == pytest.approx([0.5 * 3 + 1.5 * 1, 0.5 * 4])
    assert float(gn.last_gradnorm_loss) == pytest.approx(abs(G[0] - target[0]) + abs(G[1] - target[1]), rel=1e-5)
    # renormalisation to sum w = T after the step, with the floor at MIN_WEIGHT
    with torch.no_grad():
        gn.weight.copy_(torch.tensor([1.5, 1.0]))
    gn.after_step(losses, 1)
    assert gn.weight.tolist() == pytest.approx([1.2, 0.8])
    with torch.no_grad():
        gn.weight.copy_(torch.tensor([-0.5, 1.0]))
    gn.after_step(losses, 2)
    assert gn.weight.tolist() == pytest.approx([0.0, 2.0])


def test_gradnorm_with_groups_balances_group_gradients():
    # groups [a, b] (rows (1, 0) + (2, 0) -> ||(3, 0)|| = 3) and [c] (||(0, 1)|| = 1): one weight per group
    net = _Linear2([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    gn = GradNorm(["a", "b", "c"], groups=[["a", "b"], ["c"]], alpha=1.5)
    gn.bind_shared_parameters([net.theta])
    losses = net()
    total, info = gn(losses)
    gn.backward(total, losses)
    assert gn.weight.grad.tolist() == pytest.approx([3.0, -1.0])  # G = (3, 1), target = mean = 2 at r = 1
    assert info["galw/weight/a"] == info["galw/weight/b"] == info["galw/group0/weight"] == 1.0
    gn.after_step(losses, 0)
    assert float(gn.weight.sum()) == pytest.approx(2.0)  # T = number of groups


def test_gradnorm_checkpoint_round_trip_and_needs_binding():
    net = _Linear2([[3.0, 4.0], [1.0, 0.0]])
    a = GradNorm(["a", "b"])
    losses = net()
    total, _ = a(losses)
    with pytest.raises(RuntimeError, match="bind_shared_parameters"):
        a.backward(total, losses)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([0.7, 1.3]))
    b = GradNorm(["a", "b"])
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.weight, a.weight) and torch.equal(b.initial_loss, a.initial_loss)
    assert bool(b.has_initial.all())


# -------------------------------------------------------------------------------------- aggregation
S2 = math.sqrt(2.0)
# Rows c_a = (1, 0), c_b = (-1, 1): c_a . c_b = -1 < 0 (a conflict), Gramian [[1, -1], [-1, 2]].
HAND = {
    # PCGrad: c_a - (c_a.c_b / |c_b|^2) c_b = (0.5, 0.5), c_b - (c_a.c_b / |c_a|^2) c_a = (0, 1); summed
    "pcgrad": [0.5, 1.5],
    # UPGrad: with 2 rows the dual-cone projection of a row is its PCGrad projection; averaged
    "upgrad": [0.25, 0.75],
    # MGDA: min-norm point g c_a + (1-g) c_b, g = (c_b - c_a).c_b / |c_a - c_b|^2 = 3/5
    "mgda": [0.2, 0.4],
    # IMTL-G: w = G^-1 d / sum, d = (|c_a|, |c_b|) = (1, sqrt 2); G^-1 = [[2, 1], [1, 1]]
    "imtl_g": [3 - 2 * S2, S2 - 1],
    # DualProj: the mean (0, 0.5) already has non-negative products with both rows
    "dualproj": [0.0, 0.5],
}


def _aligned_mtl_hand():
    # Aligned-MTL: alpha = sqrt(lambda_min) G^{-1/2} w, w = (1/2, 1/2); G's eigenvalues (3 +- sqrt 5) / 2
    lam = [(3 - math.sqrt(5)) / 2, (3 + math.sqrt(5)) / 2]
    # eigenvectors of [[1, -1], [-1, 2]]: v = (1, (1 - lam)) normalised
    vs = []
    for lm in lam:
        v = (1.0, 1.0 - lm)
        n = math.hypot(*v)
        vs.append((v[0] / n, v[1] / n))
    ginv_half = [[sum(vs[k][i] * vs[k][j] / math.sqrt(lam[k]) for k in range(2)) for j in range(2)] for i in range(2)]
    alpha = [math.sqrt(lam[0]) * (ginv_half[i][0] + ginv_half[i][1]) / 2 for i in range(2)]
    return [alpha[0] - alpha[1], alpha[1]], alpha


HAND["aligned_mtl"] = _aligned_mtl_hand()[0]


@needs_torchjd
@pytest.mark.parametrize("name", AGG_NAMES)
def test_aggregation_vs_hand_computation(name):
    net = _Linear2([[1.0, 0.0], [-1.0, 1.0]])
    w = WEIGHTING_REGISTRY.get(name)(["a", "b"], aggregator=name)
    w.bind_shared_parameters([net.theta])
    losses = net()
    total, info = w(losses)
    assert float(total) == pytest.approx(float(losses["a"] + losses["b"]))  # the plain sum, logged
    w.backward(total, losses)
    # shared: the aggregation of the Jacobian rows (torchjd's QP solvers regularise the Gramian: ~1e-4)
    assert net.theta.grad.tolist() == pytest.approx(HAND[name], abs=2e-3)
    # task-specific: the plain gradients 2a, 3
    assert net.heads.grad.tolist() == pytest.approx([1.0, 3.0])
    if name == "aligned_mtl":
        assert [info["galw/weight/a"], info["galw/weight/b"]] == pytest.approx(_aligned_mtl_hand()[1], abs=1e-5)
    if name == "imtl_g":  # equal projections on the unit rows, the defining property
        g = net.theta.grad
        assert float(g @ torch.tensor([1.0, 0.0])) == pytest.approx(float(g @ torch.tensor([-1.0, 1.0])) / S2, abs=1e-5)


@needs_torchjd
def test_aggregation_groups_give_one_row_per_group():
    # rows a = (1, 0), b = (0, 1) summed in one group -> (1, 1); c = (-2, 0) alone: PCGrad on (1, 1), (-2, 0)
    net = _Linear2([[1.0, 0.0], [0.0, 1.0], [-2.0, 0.0]])
    w = WEIGHTING_REGISTRY.get("pcgrad")(["a", "b", "c"], groups=[["a", "b"], ["c"]], aggregator="pcgrad")
    w.bind_shared_parameters([net.theta])
    losses = net()
    total, info = w(losses)
    w.backward(total, losses)
    # (1,1) - (-2/4)(-2,0) = (0, 1); (-2,0) - (-2/2)(1,1) = (-1, 1); sum (-1, 2)
    assert net.theta.grad.tolist() == pytest.approx([-1.0, 2.0], abs=1e-6)
    assert net.heads.grad.tolist() == pytest.approx([1.0, 3.0, -2.0])
    assert "galw/group0/weight" in info and info["galw/weight/a"] == info["galw/weight/b"]


@needs_torchjd
def test_aggregation_row_and_vmap_jacobians_agree():
    grads = []
    for mode in ("rows", "vmap"):  # our row-by-row Jacobian vs torchjd's autojac.backward
        net = _Linear2([[1.0, 0.0], [-1.0, 1.0]])
        w = AggregationWeighting(["a", "b"], aggregator="upgrad", jacobian=mode)
        w.bind_shared_parameters([net.theta])
        losses = net()
        w.backward(w(losses)[0], losses)
        grads.append(net.theta.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@needs_torchjd
def test_cagrad_needs_cvxpy_or_builds():
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="cvxpy"):
            AggregationWeighting(["a", "b"], aggregator="cagrad")
    else:
        AggregationWeighting(["a", "b"], aggregator="cagrad", options={"c": 0.4})
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"):
        AggregationWeighting(["a", "b"], aggregator="nope")
    with pytest.raises(ValueError, match="JACOBIAN: 'chunks'"):
        AggregationWeighting(["a", "b"], aggregator="upgrad", jacobian="chunks")


# ---------------------------------------------------------------------------------- through config
@pytest.mark.parametrize("name", [n if n not in AGG_NAMES else pytest.param(n, marks=needs_torchjd) for n in ALL_NAMES])
def test_every_method_trains_the_toy_model_through_config_alone(tmp_path, name):
    cfg = toy_cfg(tmp_path, strategy=name, record=False, max_iter=6)
    cfg.GALW.DWA.EPOCH_ITERS = 2
    torch.manual_seed(0)
    t = ToyTrainer(cfg)
    t.resume_or_load(resume=False)
    w = unwrap_galw(t.model).weighting
    if w.needs_shared_parameters:  # bound by the trainer: backbone.res2/res3 weight + bias
        assert len(w.shared_parameters) == 4
    t.train()
    h = t.storage.histories()
    assert isinstance(w, WEIGHTING_REGISTRY.get(name))
    for k in ("loss_a", "loss_b", "galw/weighted_total", "galw/weight/loss_a", "galw/weight/loss_b"):
        assert math.isfinite(h[k].latest()), k
    if name == "dwa":
        assert int(w.epochs_done) == 3 and h["galw/weight/loss_a"].latest() != 1.0
    if name == "famo":
        assert int(w.adam_step) == 5
    if name == "gradnorm":
        assert float(w.weight.sum()) == pytest.approx(2.0) and not torch.allclose(w.weight, torch.ones(2))


@needs_torchjd
def test_grouped_method_through_config(tmp_path):
    cfg = toy_cfg(tmp_path, strategy="upgrad", record=False, three=True, max_iter=3)
    cfg.GALW.GROUPS = [["loss_a", "loss_b"], ["loss_c"]]
    torch.manual_seed(0)
    t = ToyTrainer(cfg)
    t.resume_or_load(resume=False)
    t.train()
    w = unwrap_galw(t.model).weighting
    assert w.groups == [["loss_a", "loss_b"], ["loss_c"]]
    assert math.isfinite(t.storage.histories()["galw/group1/weight"].latest())


@pytest.mark.parametrize("name", ["dwa", "famo", "gradnorm"])
def test_stateful_methods_resume_exactly_from_a_checkpoint(tmp_path, name):
    def cfg_of(d):
        c = toy_cfg(tmp_path / d, strategy=name, record=False, max_iter=8)
        c.GALW.DWA.EPOCH_ITERS = 2
        return c

    def run(c):
        torch.manual_seed(0)
        t = ExactResumeToyTrainer(c)
        t.resume_or_load(resume=False)
        t.train()
        return t

    full = run(cfg_of("full"))
    cfg = cfg_of("part")
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    run(cfg)
    (tmp_path / "part" / "last_checkpoint").write_text("model_0000003.pth")  # "interrupted" after 4 steps
    torch.manual_seed(1)  # another initialisation: the state must come from the checkpoint
    resumed = ExactResumeToyTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    pf = unwrap_galw(full.model).state_dict()
    pr = unwrap_galw(resumed.model).state_dict()
    assert any(k.startswith("galw_weighting.") for k in pf)
    assert pf.keys() == pr.keys() and all(torch.equal(pf[k], pr[k]) for k in pf), name
