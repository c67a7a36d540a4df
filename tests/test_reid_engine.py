"""Mancs on torchreid end to end (galw_d2.reid): SynthPS export through torchreid's data manager, the
engine's weighted step, a tiny training run against chance, resume, recording and CLI overrides."""

import json
import os
import sys

import numpy as np
import pytest
import torch

from galw_d2.reid.config import REID_TASKS
from galw_d2.reid.data import MarketLayoutDataset, ensure_synthps_reid, register_synthps_reid
from galw_d2.reid.engine import build_reid_weighting
from galw_d2.reid.runner import build_engine, run_training, setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "reid", "mancs_synthps_tiny.yaml")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reid"))
    ensure_synthps_reid(root, "synthps_reid_tiny", seed=0)
    return root


def _cfg(root, out, *opts):
    return setup_cfg(TINY, ["DATA.ROOT", root, *opts], str(out))


def test_export_loads_through_torchreid(data_root):
    from torchreid.reid.data import ImageDataManager

    folder = os.path.join(data_root, "synthps_reid_tiny")
    meta = json.load(open(os.path.join(folder, "export_meta.json")))
    register_synthps_reid("synthps_reid_tiny")
    dm = ImageDataManager(
        root=data_root,
        sources="synthps_reid_tiny",
        height=64,
        width=32,
        transforms=None,
        batch_size_train=8,
        train_sampler="RandomIdentitySampler",
        num_instances=4,
        workers=0,
        use_gpu=False,
    )
    assert dm.num_train_pids == meta["train_ids"] == 8
    assert len(dm.train_loader.dataset) == meta["images"]["train"]
    q = MarketLayoutDataset.parse_dir(os.path.join(folder, "query"))
    g = MarketLayoutDataset.parse_dir(os.path.join(folder, "bounding_box_test"))
    assert len(q) == meta["images"]["query"] == meta["query_ids"]  # one query per test identity
    # every query has a true match in another camera (else torchreid's CMC would drop it)
    for _, pid, cam in q:
        assert any(gp == pid and gc != cam for _, gp, gc in g)
    assert sum(gp == 0 for _, gp, _ in g) == meta["gallery_distractors"] > 0
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape == (8, 3, 64, 32)
    assert sorted(torch.bincount(batch["pid"]).tolist())[-2:] == [4, 4]  # PK sampling
    with pytest.raises(FileExistsError, match="not empty"):
        from galw_d2.reid.data import export_reid_crops

        export_reid_crops(os.path.join(data_root, "synthps_tiny_prw_s0"), folder)


@pytest.mark.parametrize("strategy", ["fixed", "ulwf", "rulwf", "galw"])
def test_engine_returns_three_losses_and_weighted_total(data_root, tmp_path, strategy):
    opts = ["GALW.STRATEGY", strategy]
    if strategy == "galw":
        opts += ["GALW.GROUPS", "[['loss_rank'], ['loss_cls', 'loss_att']]"]
    cfg = _cfg(data_root, tmp_path, *opts)
    engine = build_engine(cfg, progress=False)
    data = next(iter(engine.train_loader))
    model_state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    w_state = {k: v.clone() for k, v in engine.weighting.state_dict().items()}
    torch.manual_seed(5)
    out = engine.forward_backward(data)
    assert list(out) == list(REID_TASKS)
    assert all(np.isfinite(v) and v > 0 for v in out.values())
    # the same step again from the saved state: the weighting's total is the engine's total
    engine.model.load_state_dict(model_state)
    engine.weighting.load_state_dict(w_state)
    torch.manual_seed(5)
    losses = engine.compute_losses(engine.model(data["img"]), data["pid"])
    total, info = engine.weighting(losses)
    assert float(total.detach()) == pytest.approx(engine.last_step["total"], rel=1e-5)
    if strategy == "fixed":
        assert engine.last_step["total"] == pytest.approx(
            out["loss_rank"] + out["loss_cls"] + 0.2 * out["loss_att"], rel=1e-5
        )
    else:
        assert "galw/sigma/loss_att" in engine.last_step
        # log sigma is optimised: it moved after one step
        assert float(engine.weighting.log_sigma.detach().abs().sum()) == 0.0  # (restored state)
        engine.forward_backward(data)
        assert float(engine.weighting.log_sigma.detach().abs().sum()) > 0.0
    if strategy == "galw":
        assert engine.weighting.groups == [["loss_rank"], ["loss_cls", "loss_att"]]
        assert info["galw/sigma/loss_cls"] == info["galw/sigma/loss_att"]  # one sigma per group


def test_build_reid_weighting_errors():
    from galw_d2.reid.config import get_reid_cfg

    cfg = get_reid_cfg()
    cfg.GALW.FIXED_WEIGHTS = ["loss_rank=1", "loss_box=2"]
    with pytest.raises(ValueError, match=r"loss_box"):
        build_reid_weighting(cfg)
    cfg = get_reid_cfg()
    cfg.GALW.STRATEGY = "galw"
    with pytest.raises(ValueError, match="GALW.GROUPS"):
        build_reid_weighting(cfg)


def _chance(folder, draws=200):
    from torchreid.reid.metrics import evaluate_rank

    q = MarketLayoutDataset.parse_dir(os.path.join(folder, "query"))
    g = MarketLayoutDataset.parse_dir(os.path.join(folder, "bounding_box_test"))
    arr = lambda items, i: np.array([x[i] for x in items])  # noqa: E731
    rng = np.random.default_rng(0)
    res = [
        evaluate_rank(rng.random((len(q), len(g))), arr(q, 1), arr(g, 1), arr(q, 2), arr(g, 2), max_rank=10)
        for _ in range(draws)
    ]
    return 100 * float(np.mean([m for _, m in res])), 100 * float(np.mean([c[0] for c, _ in res]))


def test_tiny_run_beats_chance_records_and_resumes(data_root, tmp_path):
    """The shipped tiny config (20 epochs) on SynthPS tiny crops vs random rankings of the same split."""
    chance_map, chance_r1 = _chance(os.path.join(data_root, "synthps_reid_tiny"))
    out = tmp_path / "run"
    m = run_training(_cfg(data_root, out, "GALW.RECORD.ENABLED", "True"), progress=False)
    assert m["tasks"] == list(REID_TASKS) and m["weighting"]["strategy"] == "fixed"
    assert m["mAP"] > chance_map + 25 and m["rank1"] > chance_r1 + 30, (m, chance_map, chance_r1)
    assert set(m) >= {"mAP", "rank1", "rank5", "rank10"}
    assert json.load(open(out / "metrics.json"))["mAP"] == m["mAP"]
    trends = json.load(open(out / "gradient_trends.json"))
    assert trends["tasks"] == list(REID_TASKS)
    for t in REID_TASKS:  # one probe per iteration (tiny config): every epoch has a mean
        assert all(v is not None for v in trends["gradient_magnitude"][t]) and sum(trends["gradient_magnitude"][t]) > 0
    assert len(trends["gradient_magnitude"]["loss_rank"]) == 20  # one mean per epoch
    assert (out / "model_final.pth").exists() and any(p.name.startswith("events.out") for p in out.iterdir())

    # resume: 2 epochs, then continue to 3 from last_checkpoint.pth
    out2 = tmp_path / "resume"
    run_training(_cfg(data_root, out2, "SOLVER.MAX_EPOCH", "2", "GALW.STRATEGY", "rulwf"), progress=False)
    ck = torch.load(out2 / "last_checkpoint.pth", weights_only=False)
    assert ck["epoch"] == 2 and "log_sigma" in ck["weighting"]
    m3 = run_training(
        _cfg(data_root, out2, "SOLVER.MAX_EPOCH", "3", "GALW.STRATEGY", "rulwf"), resume=True, progress=False
    )
    assert m3["start_epoch"] == 2 and torch.load(out2 / "last_checkpoint.pth", weights_only=False)["epoch"] == 3


def test_train_reid_cli_overrides(data_root, tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import train_reid
    finally:
        sys.path.pop(0)
    out = tmp_path / "cli"
    rc = train_reid.main(
        [
            "--config-file",
            TINY,
            "--output",
            str(out),
            "--no-progress",
            "DATA.ROOT",
            data_root,
            "SOLVER.MAX_EPOCH",
            "1",
            "GALW.STRATEGY",
            "ulwf",
        ]
    )
    assert rc == 0
    m = json.load(open(out / "metrics.json"))
    assert m["weighting"]["strategy"] == "ulwf" and set(m["weighting"]["sigma"]) == set(REID_TASKS)
    # --eval-only on the final checkpoint gives the same numbers
    out2 = tmp_path / "eval"
    assert (
        train_reid.main(
            [
                "--config-file",
                TINY,
                "--output",
                str(out2),
                "--no-progress",
                "--eval-only",
                str(out / "model_final.pth"),
                "DATA.ROOT",
                data_root,
                "GALW.STRATEGY",
                "ulwf",
            ]
        )
        == 0
    )
    m2 = json.load(open(out2 / "metrics.json"))
    assert (m2["mAP"], m2["rank1"]) == (m["mAP"], m["rank1"])
    assert m2["weighting"]["sigma"] == m["weighting"]["sigma"]  # the weighting state is in the checkpoint
    with pytest.raises(SystemExit):
        train_reid.main(["--config-file", TINY, "--output", str(out), "GALW.STRATEGY"])


def test_market1501_official_layout_through_build_datamanager(tmp_path):
    """torchreid's own Market-1501 reader on a minimal official layout (names <pid>_c<cam>s1_<frame>_<k>.jpg)."""
    from PIL import Image

    from galw_d2.reid.data import build_datamanager

    base = tmp_path / "market1501" / "Market-1501-v15.09.15"
    rng = np.random.default_rng(0)
    layout = {
        "bounding_box_train": [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (3, 4)],
        "query": [(7, 1), (8, 2)],
        "bounding_box_test": [(7, 2), (8, 3), (0, 1), (-1, 1)],
    }
    for folder, items in layout.items():
        (base / folder).mkdir(parents=True)
        for k, (pid, cam) in enumerate(items):
            img = Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8))
            img.save(
                base / folder / f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg"
                if pid >= 0
                else base / folder / f"-1_c{cam}s1_{k:06d}_00.jpg"
            )
    cfg = setup_cfg(TINY, ["DATA.ROOT", str(tmp_path), "DATA.SOURCES", "['market1501']", "DATA.P", "2", "DATA.K", "2"])
    dm = build_datamanager(cfg)
    assert dm.num_train_pids == 3
    assert len(dm.test_loader["market1501"]["gallery"].dataset) == 3  # the junk (-1) crop is dropped
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape == (4, 3, 64, 32)


@pytest.mark.parametrize("strategy", ["dwa", "famo", "gradnorm", "upgrad"])
def test_other_registered_methods_train_mancs_through_config_alone(data_root, tmp_path, strategy):
    """Any method of galw_d2's weighting registry weights the three Mancs losses (its own backward and
    after_step hooks run; GradNorm / aggregation get the trunk as their shared parameters)."""
    if strategy == "upgrad":
        pytest.importorskip("torchjd")
    engine = build_engine(
        _cfg(data_root, tmp_path, "GALW.STRATEGY", strategy, "GALW.DWA.EPOCH_ITERS", "1"), progress=False
    )
    data = next(iter(engine.train_loader))
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    for _ in range(2):
        out = engine.forward_backward(data)
        assert list(out) == list(REID_TASKS) and all(np.isfinite(v) for v in out.values())
    assert type(engine.weighting).__name__.lower().startswith(strategy[:3]) or strategy == "upgrad"
    assert any(not torch.equal(before[k], v) for k, v in engine.model.state_dict().items())
    from galw_d2.reid.runner import _weighting_summary

    summary = _weighting_summary(_cfg(data_root, tmp_path, "GALW.STRATEGY", strategy), engine)
    assert summary["strategy"] == strategy and set(summary["weights"]) == set(REID_TASKS)
