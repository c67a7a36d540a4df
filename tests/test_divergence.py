"""Divergence is reported as such: which loss (or weight), at which iteration; no NaN checkpoint.

Old behaviour (ROI-AlignPS* tiny, SynthPS tiny): BASE_LR 1e2 trained to the end with a loss sum of
~1e6 and exited 0; 1e4 failed on an unrelated box assertion or saved a NaN checkpoint that only the
evaluator tripped on."""

import glob
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from galw_toy import ToyTrainer, toy_cfg  # noqa: E402

from galw_d2.engine import unwrap_galw  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _finite_checkpoints(out):
    files = sorted(glob.glob(os.path.join(out, "model_*.pth")))
    for f in files:
        sd = torch.load(f, map_location="cpu", weights_only=False)["model"]
        bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, (f, bad[:3])
    return [os.path.basename(f) for f in files]


@pytest.mark.parametrize("lr", [1e2, 1e4])
def test_real_model_divergence_stops_with_the_loss_and_iteration(lr, tmp_path, synthps_tiny):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.utils.env import seed_all_rng

    from galw_d2 import add_galw_config
    from galw_d2.data import register_synthps
    from galw_d2.engine.person_search import PersonSearchTrainer

    if "reliab_div_tiny_train" not in DatasetCatalog.list():
        register_synthps(synthps_tiny["cuhk_sysu"], "cuhk_sysu", "reliab_div_tiny", preset="tiny")
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", "synthps", "roi_alignps_R18_tiny_synthps.yaml"))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("reliab_div_tiny_train",), ()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = lr, 8, 1
    cfg.SOLVER.STEPS, cfg.SOLVER.CHECKPOINT_PERIOD = (), 1
    cfg.INPUT.PERSON_SEARCH.TRAIN_LONG_SIDE_RANGE = (160, 192)
    cfg.SEED = 0
    seed_all_rng(0)
    t = PersonSearchTrainer(cfg)
    t.resume_or_load(resume=False)
    with pytest.raises(
        FloatingPointError, match=r"training diverged at iteration \d+: .*(loss_\w+ = |model (weight|buffer) ')"
    ):
        t.train()
    saved = _finite_checkpoints(str(tmp_path))
    assert "model_final.pth" not in saved and len(saved) <= 7


def _toy_with_nan_at(tmp_path, it, max_iter, forward_raises):
    cfg = toy_cfg(tmp_path, strategy="fixed", record=False, max_iter=max_iter)
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    torch.manual_seed(0)
    t = ToyTrainer(cfg)
    t.resume_or_load(resume=False)
    net = unwrap_galw(t.model).model
    orig = net.forward

    def forward(batched):
        if forward_raises and not all(torch.isfinite(p).all() for p in net.parameters()):
            raise AssertionError("Box tensor contains infinite or NaN!")  # detectron2 Boxes' assertion
        return orig(batched)

    net.forward = forward

    def poison(tr):
        if tr.iter == it:
            with torch.no_grad():
                next(net.parameters()).view(-1)[0] = float("nan")

    from detectron2.engine import hooks

    t.register_hooks([hooks.CallbackHook(before_step=poison)])
    return t


def test_forward_failure_on_nan_weights_is_reported_as_divergence(tmp_path):
    t = _toy_with_nan_at(tmp_path, 3, 8, forward_raises=True)
    msg = (
        r"diverged at iteration 3: the forward failed \(AssertionError: Box tensor contains infinite or NaN!\); "
        r"model weight '.+' is non-finite"
    )
    with pytest.raises(FloatingPointError, match=msg) as e:
        t.train()
    assert isinstance(e.value.__cause__, AssertionError)
    assert _finite_checkpoints(str(tmp_path)) == [f"model_{i:07d}.pth" for i in range(3)]


def test_divergence_at_the_last_iteration_saves_no_final_checkpoint(tmp_path):
    t = _toy_with_nan_at(tmp_path, 3, 4, forward_raises=False)
    with pytest.raises(FloatingPointError, match=r"diverged at iteration 3: loss_\w+ = nan"):
        t.train()
    assert _finite_checkpoints(str(tmp_path)) == [f"model_{i:07d}.pth" for i in range(3)]


def test_plain_forward_errors_are_not_called_divergence(tmp_path):
    t = _toy_with_nan_at(tmp_path, 99, 4, forward_raises=False)
    net = unwrap_galw(t.model).model

    def broken(batched):
        raise KeyError("gt_pids")

    net.forward = broken
    with pytest.raises(KeyError, match="gt_pids"):
        t.train()


def _gloo_divergence_worker(rank, world, tmp):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        import galw_toy

        class T(galw_toy.ToyTrainer):
            @classmethod
            def build_train_loader(cls, cfg):
                def batches():
                    for i, b in enumerate(galw_toy.toy_batches(100 + rank)):
                        if rank == 1 and i == 2:  # only process 1 sees a poisoned batch, at iteration 2
                            b = [dict(d, x=d["x"] * float("nan")) for d in b]
                        yield b

                return batches()

        cfg = galw_toy.toy_cfg(os.path.join(tmp, "out"), strategy="fixed", record=False, max_iter=6)
        cfg.SOLVER.IMS_PER_BATCH = 8
        t = T(cfg)
        t.resume_or_load(resume=False)
        try:
            t.train()
            msg = "finished"
        except FloatingPointError as e:
            msg = str(e)
        with open(os.path.join(tmp, f"rank{rank}.txt"), "w") as f:
            f.write(msg)
    finally:
        dist.destroy_process_group()


def test_divergence_on_one_process_stops_every_process(tmp_path):
    """Without the agreement, process 0 would wait forever in the next gradient all-reduce."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        _gloo_divergence_worker, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the processes did not stop together after a divergence on process 1")
    r0, r1 = ((tmp_path / f"rank{i}.txt").read_text() for i in range(2))
    assert r1.startswith("training diverged at iteration 2: loss_")
    assert r0 == f"[process 1] {r1}"
