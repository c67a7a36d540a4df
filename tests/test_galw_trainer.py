"""GALWTrainer: weighting parameters trained/logged/checkpointed, probes change nothing, exact resume,
online regrouping, and a 2-process gloo run with synchronised sigma and identical trends."""

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from galw_toy import ExactResumeToyTrainer, ToyTrainer, toy_cfg  # noqa: E402

from galw_d2.engine import GALWModel, unwrap_galw  # noqa: E402
from galw_d2.galw.grouping import cluster_slopes, compute_slopes, transform_slopes  # noqa: E402


def _train(cfg, cls=ToyTrainer, resume=False):
    torch.manual_seed(0)  # same initialisation in every run
    t = cls(cfg)
    t.resume_or_load(resume=resume)
    t.train()
    return t


def _params(t):
    return {k: v.detach().clone() for k, v in unwrap_galw(t.model).state_dict().items()}


def test_trainer_trains_logs_and_writes_trends(tmp_path):
    t = _train(toy_cfg(tmp_path, three=True, max_iter=8))
    galw = unwrap_galw(t.model)
    assert isinstance(galw, GALWModel)
    s = galw.weighting.log_sigma.detach()
    assert s.shape == (3,) and (s != 0).all()  # trained
    # log sigma: its own optimizer group, no weight decay
    grp = [g for g in t.optimizer.param_groups if any(p is galw.weighting.log_sigma for p in g["params"])]
    assert len(grp) == 1 and grp[0]["weight_decay"] == 0.0 and len(grp[0]["params"]) == 1
    # the stateful loss was updated exactly once per step, after the optimizer step
    assert galw.model.state.applied == 8
    hist = t.storage.histories()
    for k in ("galw/sigma/loss_a", "galw/weight/loss_b", "galw/weighted_total", "galw/grad/loss_c", "loss_a"):
        assert k in hist, k
    # logged: the sigma used by each iteration's loss (before that iteration's step), weight = 1/(k sigma^2)
    sig = [v for v, _ in hist["galw/sigma/loss_b"].values()]
    assert len(sig) == 8 and sig[0] == 1.0 and sig[-1] != 1.0
    assert hist["galw/weight/loss_b"].latest() == pytest.approx(1 / (2 * sig[-1] ** 2))
    tr = json.loads((tmp_path / "gradient_trends.json").read_text())
    assert tr["tasks"] == ["loss_a", "loss_b", "loss_c"]
    assert tr["probe_counts"]["loss_a"] == [2, 2]  # period 2, 4 iterations per epoch
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in tr["gradient_magnitude"].values())
    assert tr["settings"]["num_shared_params"] == 4 and tr["settings"]["meta_architecture"] == "GALWToyNet"
    # flat checkpoint keys: the model's own names plus galw_weighting.*
    ck = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert "backbone.res2.weight" in ck["model"] and "galw_weighting.log_sigma" in ck["model"]
    assert "optimizer" in ck["trainer"]["_trainer"] and ck["trainer"]["galw"]["recorder"]["tasks"]


def test_probing_does_not_change_training(tmp_path):
    a = _train(toy_cfg(tmp_path / "a", three=True, record=True))
    b = _train(toy_cfg(tmp_path / "b", three=True, record=False))
    assert a.recorder is not None and b.recorder is None
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)  # bit-identical, incl. the stateful table


def test_checkpoint_resume_is_exact(tmp_path):
    full = _train(toy_cfg(tmp_path / "full", three=True, max_iter=8), ExactResumeToyTrainer)
    cfg = toy_cfg(tmp_path / "part", three=True, max_iter=8)
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    part = _train(cfg, ExactResumeToyTrainer)
    (tmp_path / "part" / "last_checkpoint").write_text("model_0000003.pth")  # "interrupted" after 4 steps
    ck = torch.load(tmp_path / "part" / "model_0000003.pth", weights_only=False)
    torch.manual_seed(1)  # a different initialisation: everything must come from the checkpoint
    resumed = ExactResumeToyTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    w = unwrap_galw(resumed.model).weighting
    assert torch.equal(w.log_sigma.detach(), ck["model"]["galw_weighting.log_sigma"])
    assert resumed.recorder.state_dict() == ck["trainer"]["galw"]["recorder"]
    mom = resumed.optimizer.state[w.log_sigma]["momentum_buffer"]
    assert mom is not None and mom.abs().sum() > 0  # optimizer state restored
    resumed.train()
    pf, pr = _params(full), _params(resumed)
    assert all(torch.equal(pf[k], pr[k]) for k in pf)
    assert resumed.recorder.trends() == full.recorder.trends()
    assert part.iter == resumed.iter == 8  # detectron2 leaves iter = max_iter after training


def test_online_regroup_after_warmup(tmp_path):
    cfg = toy_cfg(tmp_path, three=True, record=False, max_iter=7)
    cfg.GALW.RECORD.PERIOD = 1
    cfg.GALW.RECORD.EPOCH_ITERS = 2
    cfg.GALW.ONLINE_REGROUP.ENABLED = True
    cfg.GALW.ONLINE_REGROUP.WARMUP_EPOCHS = 2
    cfg.GALW.GROUPING.NUM_GROUPS = 2
    t = _train(cfg)
    assert t.galw_state["regrouped_at"] == 3
    gm = t.recorder.gradient_magnitude(max_epoch=2)
    assert t.recorder.state_dict()["counts"]["loss_a"] == [2, 2]  # recording stopped after the warm-up
    expect, _ = cluster_slopes(transform_slopes(compute_slopes(gm), 10.0), 2, order=t.recorder.tasks)
    w = unwrap_galw(t.model).weighting
    assert w.groups == expect == t.galw_state["groups"] and 1 <= len(expect) <= 2
    assert int(w.assignment.max()) == len(expect) - 1
    ck = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert ck["trainer"]["galw"]["online"]["regrouped_at"] == 3
    assert torch.equal(ck["model"]["galw_weighting.assignment"], w.assignment)


def test_plain_checkpoint_loads_into_wrapper_and_back(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = toy_cfg(tmp_path, max_iter=1)
    plain = build_model(cfg)
    DetectionCheckpointer(plain, str(tmp_path)).save("plain")
    wrapped = ToyTrainer.build_model(cfg)
    DetectionCheckpointer(wrapped).load(str(tmp_path / "plain.pth"))
    assert torch.equal(wrapped.model.backbone.res2.weight, plain.backbone.res2.weight)
    with torch.no_grad():
        wrapped.weighting.log_sigma.fill_(0.25)
        wrapped.model.head_a.bias.fill_(3.0)
    DetectionCheckpointer(wrapped, str(tmp_path)).save("wrapped")
    plain2 = build_model(cfg)
    DetectionCheckpointer(plain2).load(str(tmp_path / "wrapped.pth"))
    assert float(plain2.head_a.bias.detach()) == 3.0


def _gloo_worker(rank, world, tmp):
    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        import galw_toy

        galw_toy.ToyTrainer.data_seed = 100 + rank  # different data on each rank
        cfg = galw_toy.toy_cfg(os.path.join(tmp, "out"), three=True, max_iter=6)
        cfg.SOLVER.IMS_PER_BATCH = 8
        t = galw_toy.ToyTrainer(cfg)
        assert isinstance(t.model, torch.nn.parallel.DistributedDataParallel)
        t.resume_or_load(resume=False)
        first = t.model.module(next(galw_toy.toy_batches(100 + rank)))["losses"]["loss_a"].item()
        t.train()
        w = unwrap_galw(t.model).weighting
        torch.save(
            {
                "log_sigma": w.log_sigma.detach().clone(),
                "trends": t.recorder.trends(),
                "params": {k: v.clone() for k, v in unwrap_galw(t.model).state_dict().items()},
                "first_loss": first,
            },
            os.path.join(tmp, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_sigma_and_trends_synchronised(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children inherit the imported modules (spawn re-imports detectron2: ~1 min on 2 cores)
    mp.start_processes(_gloo_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in range(2))
    assert r0["first_loss"] != r1["first_loss"]  # the ranks saw different data
    assert (r0["log_sigma"] != 0).all()
    assert torch.equal(r0["log_sigma"], r1["log_sigma"])
    # every parameter is identical (DDP); the toy stateful buffer is rank-local by design (not compared)
    keys = [k for k in r0["params"] if k != "state.table"]
    assert len(keys) == 10 and all(torch.equal(r0["params"][k], r1["params"][k]) for k in keys)
    assert r0["trends"] == r1["trends"] and r0["trends"]["settings"]["world_size"] == 2
    assert r0["trends"]["probe_counts"]["loss_a"] == [2, 1]  # probes at 0, 2 | 4 (6 iterations)
    assert json.loads((tmp_path / "out" / "gradient_trends.json").read_text())["tasks"] == r0["trends"]["tasks"]


def test_two_phase_workflow_api(tmp_path):
    from galw_d2.galw.workflow import make_groups, phase2_cfg, run_phase1

    cfg = toy_cfg(tmp_path / "p1", three=True, record=False, max_iter=8)
    cfg.GALW.RECORD.EPOCH_ITERS = 2
    torch.manual_seed(0)
    trends = run_phase1(cfg, trainer_cls=ToyTrainer)
    assert trends == str(tmp_path / "p1" / "gradient_trends.json") and os.path.exists(trends)
    res = make_groups(trends, 2, str(tmp_path / "groups"), plots=False)  # plots: test_galw_grouping
    assert sorted(t for g in res["groups"] for t in g) == ["loss_a", "loss_b", "loss_c"]
    assert os.path.exists(res["paths"]["groups"]) and os.path.exists(res["paths"]["config"])
    cfg2 = phase2_cfg(cfg, res["groups"], output_dir=str(tmp_path / "p2"))
    assert cfg2.GALW.STRATEGY == "galw" and not cfg2.GALW.RECORD.ENABLED
    t2 = _train(cfg2)
    w = unwrap_galw(t2.model).weighting
    assert w.groups == res["groups"] and w.log_sigma.numel() == len(res["groups"])
    assert t2.recorder is None
