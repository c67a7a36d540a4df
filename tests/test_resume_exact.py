"""Exact resume with the real trainer and data loader: the resumable sampler reproduces detectron2's
index stream and grouping, and a ``tools/train_net.py`` run killed with SIGKILL mid-run and resumed
ends with the same weights as the uninterrupted run (ROI-AlignPS* tiny on SynthPS tiny)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from galw_d2.data.samplers import ResumableBatchSampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthps", "roi_alignps_R18_tiny_synthps.yaml")


# ---------------------------------------------------------------------- the sampler alone
def test_index_stream_is_training_samplers():
    from detectron2.data.samplers import TrainingSampler

    ref = TrainingSampler(7, shuffle=True, seed=11)
    it = iter(ref)
    want = [next(it) for _ in range(30)]
    s = ResumableBatchSampler(None, 1, seed=11, size=7, rank=0, world_size=1)
    got = [b[0][1] for b, _ in zip(iter(s), range(30))]
    assert got == want
    assert [b[0][0] for b, _ in zip(iter(s), range(5))] == [0, 1, 2, 3, 4]  # stream positions


def test_grouping_matches_aspect_ratio_grouped_dataset():
    """Same batches as detectron2's AspectRatioGroupedDataset over TrainingSampler's stream."""
    from detectron2.data.common import AspectRatioGroupedDataset
    from detectron2.data.samplers import TrainingSampler

    shapes = [(100, 50), (50, 100), (60, 60), (120, 40), (30, 90), (80, 70), (40, 41)]  # (w, h)
    buckets = [0 if w > h else 1 for w, h in shapes]
    for rank in (0, 1):
        ts = TrainingSampler(len(shapes), seed=5)
        ts._rank, ts._world_size = rank, 2
        stream = ({"idx": i, "width": shapes[i][0], "height": shapes[i][1]} for i in ts)
        ref = iter(AspectRatioGroupedDataset(stream, 3))
        want = [[d["idx"] for d in next(ref)] for _ in range(12)]
        s = ResumableBatchSampler(buckets, 3, seed=5, rank=rank, world_size=2)
        got = [[i for _, i in b] for b, _ in zip(iter(s), range(12))]
        assert got == want, rank
        # skipping: batch 7 onwards equals the tail of the full stream, positions included
        full = [b for b, _ in zip(iter(s), range(12))]
        s.set_start(7)
        assert [b for b, _ in zip(iter(s), range(5))] == full[7:]
        assert all(p % 2 == rank for b in full for p, _ in b)


def test_skipping_is_cheap():
    s = ResumableBatchSampler([i % 2 for i in range(11000)], 2, seed=0, rank=0, world_size=1)
    s.set_start(100_000)  # 100k iterations of CUHK-SYSU (11k images, batch 2): ~18 epochs of randperm
    t = time.perf_counter()
    next(iter(s))
    assert time.perf_counter() - t < 10.0


def test_augmentation_depends_on_the_stream_position_only(synthps_tiny):
    """The mapper's random resize and flip are a function of (seed, position): identical whatever ran
    before, and the caller's RNG is untouched."""
    import numpy as np
    from detectron2.config import get_cfg

    from galw_d2 import add_galw_config
    from galw_d2.data import PersonSearchDatasetMapper
    from galw_d2.data.samplers import PositionSeededDataset

    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(CONFIG)
    cfg.INPUT.PERSON_SEARCH.FLIP_PROB = 0.5
    root = synthps_tiny["cuhk_sysu"]
    import glob

    img = sorted(glob.glob(os.path.join(root, "**", "*.jpg"), recursive=True))[0]
    from PIL import Image

    w, h = Image.open(img).size
    rec = {
        "file_name": img,
        "width": w,
        "height": h,
        "image_id": 0,
        "annotations": [{"bbox": [1, 1, 20, 40], "bbox_mode": 0, "category_id": 0, "person_id": 0}],
    }
    ds = PositionSeededDataset([rec], PersonSearchDatasetMapper(cfg, is_train=True), seed=3)
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    a = [ds[(p, 0)]["image"] for p in range(6)]
    assert (np.random.get_state()[1] == before).all()
    np.random.rand(5)
    b = [ds[(p, 0)]["image"] for p in reversed(range(6))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len({tuple(x.shape) for x in a}) > 1  # the long side is drawn per position


# ---------------------------------------------------------------------- kill -9 and resume
def _train_net(out_dir, datasets, max_iter, resume=False):
    cmd = (
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", CONFIG]
        + (["--resume"] if resume else [])
        + [
            "OUTPUT_DIR",
            str(out_dir),
            "DATASETS.TRAIN",
            "('synthps_tiny_cuhk_train',)",
            "DATASETS.TEST",
            "()",
            "SOLVER.MAX_ITER",
            str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD",
            "3",
            "SOLVER.WARMUP_ITERS",
            "2",
            "SOLVER.STEPS",
            "(8,)",
            "SEED",
            "5",
            "TEST.EVAL_PERIOD",
            "0",
            # aspect grouping and flips on: both must be reproduced across the kill
            "DATALOADER.ASPECT_RATIO_GROUPING",
            "True",
            "INPUT.PERSON_SEARCH.FLIP_PROB",
            "0.5",
            "INPUT.PERSON_SEARCH.TRAIN_LONG_SIDE_RANGE",
            "(160, 224)",
        ]
    )
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=str(datasets),
        OMP_NUM_THREADS="1",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def tiny_datasets(synthps_tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("datasets")
    os.symlink(synthps_tiny["cuhk_sysu"], d / "synthps_tiny_cuhk")
    return d


def _final_model(out_dir):
    return torch.load(os.path.join(out_dir, "model_final.pth"), map_location="cpu", weights_only=False)


def test_kill9_and_resume_is_exact(tmp_path, tiny_datasets):
    n = 10
    full = _train_net(tmp_path / "full", tiny_datasets, n)
    log = full.communicate(timeout=300)[0]
    assert full.returncode == 0, log[-3000:]

    # the same run, killed with SIGKILL as soon as its iteration-5 checkpoint exists
    run = _train_net(tmp_path / "killed", tiny_datasets, n)
    ck = tmp_path / "killed" / "model_0000005.pth"
    t0 = time.time()
    while not ck.exists() and run.poll() is None and time.time() - t0 < 300:
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    log = run.communicate(timeout=60)[0]
    assert run.returncode == -signal.SIGKILL, log[-3000:]
    assert not (tmp_path / "killed" / "model_final.pth").exists(), "killed too late: the run had finished"

    res = _train_net(tmp_path / "killed", tiny_datasets, n, resume=True)
    log = res.communicate(timeout=300)[0]
    assert res.returncode == 0, log[-3000:]
    a, b = _final_model(tmp_path / "full"), _final_model(tmp_path / "killed")
    assert a["iteration"] == b["iteration"] == n - 1
    ma, mb = a["model"], b["model"]
    assert ma.keys() == mb.keys()
    differ = [k for k in ma if not torch.equal(ma[k], mb[k])]
    assert not differ, f"{len(differ)} of {len(ma)} tensors differ after kill -9 + resume: {differ[:5]}"
    oa, ob = a["trainer"]["_trainer"]["optimizer"]["state"], b["trainer"]["_trainer"]["optimizer"]["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"]) for k in oa)


def test_evaluation_leaves_the_training_rng_untouched(synthps_tiny, tmp_path):
    """A periodic evaluation between a checkpoint and the next step must not shift the RNG the next
    steps draw from (the resumed run does not evaluate there)."""
    import numpy as np
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from galw_d2 import add_galw_config
    from galw_d2.data import register_synthps
    from galw_d2.engine.person_search import PersonSearchTrainer

    if "reliab_eval_tiny_test" not in DatasetCatalog.list():
        register_synthps(synthps_tiny["cuhk_sysu"], "cuhk_sysu", "reliab_eval_tiny", preset="tiny")
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(CONFIG)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("reliab_eval_tiny_train",), ("reliab_eval_tiny_test",)
    cfg.TEST.PERSON_SEARCH.GALLERY_SIZE = 50
    cfg.OUTPUT_DIR = str(tmp_path)
    model = PersonSearchTrainer.build_model(cfg)
    torch.manual_seed(4)
    np.random.seed(4)
    t0, n0 = torch.get_rng_state(), np.random.get_state()[1].copy()
    res = PersonSearchTrainer.test(cfg, model)
    assert "search" in res  # detectron2 returns the only dataset's results directly
    assert torch.equal(torch.get_rng_state(), t0) and (np.random.get_state()[1] == n0).all()


def test_loader_batches_do_not_depend_on_workers_or_start(synthps_tiny):
    """NUM_WORKERS 0 vs 2 give identical batches (augmentations included), and set_start(k) gives
    the tail of the stream: what exact resume with worker processes relies on."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from galw_d2 import add_galw_config
    from galw_d2.data import PersonSearchDatasetMapper, register_synthps
    from galw_d2.data.samplers import build_resumable_train_loader

    if "reliab_eval_tiny_train" not in DatasetCatalog.list():
        register_synthps(synthps_tiny["cuhk_sysu"], "cuhk_sysu", "reliab_eval_tiny", preset="tiny")
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(CONFIG)
    cfg.DATASETS.TRAIN = ("reliab_eval_tiny_train",)
    cfg.INPUT.PERSON_SEARCH.FLIP_PROB = 0.5
    cfg.INPUT.PERSON_SEARCH.TRAIN_LONG_SIDE_RANGE = (96, 160)

    def batches(workers, start=0, n=4):
        cfg.DATALOADER.NUM_WORKERS = workers
        loader = build_resumable_train_loader(cfg, PersonSearchDatasetMapper(cfg, is_train=True), seed=9)
        loader.batch_sampler.set_start(start)
        it = iter(loader)
        return [[(d["file_name"], d["image"]) for d in next(it)] for _ in range(n)]

    a, b, c = batches(0), batches(2), batches(0, start=2, n=2)
    for x, y in zip(a, b):
        assert [f for f, _ in x] == [f for f, _ in y] and all(torch.equal(i, j) for (_, i), (_, j) in zip(x, y))
    for x, y in zip(a[2:], c):
        assert [f for f, _ in x] == [f for f, _ in y] and all(torch.equal(i, j) for (_, i), (_, j) in zip(x, y))
