"""Checkpoints survive kills: atomic writes, verified resume with fallback to the newest intact
checkpoint, a finished run's lost model_final.pth written again, no silent overwrite of an earlier
run, and a checkpoint of another identity count fine-tunes with OIM tables of the new size."""

import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from galw_toy import ToyTrainer, toy_cfg  # noqa: E402

from galw_d2.engine.checkpoint import checkpoint_problem  # noqa: E402


def _train(cfg, resume=False, cls=ToyTrainer):
    torch.manual_seed(0)
    t = cls(cfg)
    t.resume_or_load(resume=resume)
    t.train()
    return t


def _cfg(out, max_iter=8, period=2):
    cfg = toy_cfg(out, max_iter=max_iter)
    cfg.SOLVER.CHECKPOINT_PERIOD = period
    return cfg


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save interrupted half-way (the process dies inside torch.save) leaves the previous file
    intact and last_checkpoint unchanged."""
    t = _train(_cfg(tmp_path, max_iter=4))
    before = open(tmp_path / "model_final.pth", "rb").read()
    import galw_d2.engine.checkpoint as ck

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        t.checkpointer.save("model_final")
    assert open(tmp_path / "model_final.pth", "rb").read() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]


def test_truncated_final_checkpoint_falls_back_and_is_rewritten(tmp_path, caplog):
    """Old behaviour: a truncated model_final.pth either failed with a raw unpickling traceback or
    was kept (exit 0). Now: warning, resume from model_0000007.pth, model_final.pth written again."""
    _train(_cfg(tmp_path))
    intact = _load(tmp_path / "model_0000007.pth")
    _truncate(tmp_path / "model_final.pth")
    assert checkpoint_problem(str(tmp_path / "model_final.pth"))[0].startswith("cannot be loaded")
    with caplog.at_level(logging.WARNING):
        t = _train(_cfg(tmp_path), resume=True)
    msg = caplog.text
    assert "model_final.pth cannot be loaded" in msg and "falling back" in msg and "model_0000007.pth" in msg
    assert t.start_iter == 8
    final = _load(tmp_path / "model_final.pth")
    assert final["iteration"] == 7
    assert all(torch.equal(final["model"][k], intact["model"][k]) for k in intact["model"])


def test_truncated_midrun_checkpoint_and_garbage_tag(tmp_path, caplog):
    _train(_cfg(tmp_path, max_iter=6))  # model_0000001/3/5 + final
    os.remove(tmp_path / "model_final.pth")
    _truncate(tmp_path / "model_0000005.pth", 0.3)
    (tmp_path / "last_checkpoint").write_text("model_0000005.pth")
    with caplog.at_level(logging.WARNING):
        t = _train(_cfg(tmp_path, max_iter=6), resume=True)
    assert t.start_iter == 4 and "model_0000005.pth cannot be loaded" in caplog.text
    assert _load(tmp_path / "model_final.pth")["iteration"] == 5
    # last_checkpoint naming a file that is not there
    (tmp_path / "last_checkpoint").write_text("model_9999999.pth")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        t = ToyTrainer(_cfg(tmp_path, max_iter=6))
        t.resume_or_load(resume=True)
    assert t.start_iter == 6 and "model_9999999.pth file does not exist" in caplog.text
    # last_checkpoint itself damaged (binary garbage, NUL bytes): same fallback
    (tmp_path / "last_checkpoint").write_bytes(b"\x00\xff\xfe garbage")
    t = ToyTrainer(_cfg(tmp_path, max_iter=6))
    t.resume_or_load(resume=True)
    assert t.start_iter == 6


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    _train(_cfg(tmp_path, max_iter=4, period=100))
    _truncate(tmp_path / "model_final.pth", 0.1)
    t = ToyTrainer(_cfg(tmp_path, max_iter=4))
    with pytest.raises(RuntimeError, match=r"no intact checkpoint in .*model_final.pth cannot be loaded"):
        t.resume_or_load(resume=True)


def test_rerun_without_resume_is_refused(tmp_path, caplog):
    _train(_cfg(tmp_path, max_iter=4))
    with pytest.raises(FileExistsError, match=r"holds checkpoints of an earlier run \(model_final.pth.*--resume"):
        _train(_cfg(tmp_path, max_iter=4))
    cfg = _cfg(tmp_path, max_iter=2, period=100)
    cfg.GALW.OVERWRITE_OUTPUT = True
    with caplog.at_level(logging.WARNING):
        _train(cfg)
    assert "deleting the earlier run" in caplog.text
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".pth")) == ["model_final.pth"]
    assert _load(tmp_path / "model_final.pth")["iteration"] == 1


def test_checkpoint_holds_the_rng_state(tmp_path):
    import numpy as np

    t = _train(_cfg(tmp_path, max_iter=2, period=100))
    ck = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)  # as fvcore loads it
    rng = ck["trainer"]["rng"]
    torch.manual_seed(123)
    np.random.seed(123)
    t.load_state_dict(ck["trainer"])
    assert torch.equal(torch.get_rng_state(), rng["torch"])
    assert (np.random.get_state()[1] == rng["numpy"]["keys"].numpy()).all()


def test_finetune_from_another_identity_count(caplog):
    """Old behaviour: AttributeError: 'GALWModel' object has no attribute 'alignps' (fvcore's
    shape-mismatch path resolves the flat keys as attributes). Now: OIM tables of the new size, the
    rest loaded, one clear log line."""
    from detectron2.config import get_cfg

    from galw_d2 import add_galw_config
    from galw_d2.engine.checkpoint import SafeCheckpointer
    from galw_d2.engine.person_search import PersonSearchTrainer

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def model(n):
        cfg = add_galw_config(get_cfg())
        cfg.merge_from_file(os.path.join(root, "configs", "synthps", "roi_alignps_R18_tiny_synthps.yaml"))
        cfg.MODEL.PERSON_SEARCH.NUM_PIDS = n
        torch.manual_seed(n)
        return PersonSearchTrainer.build_model(cfg)

    src = model(10)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["alignps.memory.lut"].normal_()
    dst = model(17)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ckpt.pth")
        torch.save({"model": sd}, path)
        with caplog.at_level(logging.WARNING):
            SafeCheckpointer(dst).resume_or_load(path, resume=False)
    got = dst.state_dict()
    dim = sd["alignps.memory.lut"].shape[1]
    assert got["alignps.memory.lut"].shape == got["roi_heads.memory.lut"].shape == (17, dim)
    assert got["alignps.memory.lut"].abs().sum() == 0  # fresh table, not the checkpoint's
    assert "from a checkpoint with 10 identities into a model with 17" in caplog.text
    assert "['alignps.memory.lut', 'roi_heads.memory.lut'] start empty" in caplog.text
    same = [k for k in sd if not k.endswith(".lut") and k in got]
    assert same and all(torch.equal(got[k], sd[k]) for k in same)
