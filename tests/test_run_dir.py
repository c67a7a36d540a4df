"""The demo's guards, all before any dataset generation or training: iteration counts and the number
of groups; --resume only onto a run with the same settings (run.json); one demo per --output (lock);
no silent replacement of an earlier run. Plus a truncated training image named in the error."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from galw_d2.apps.recipe import PipelineSettings
from galw_d2.apps.run_dir import LOCK_FILE, RUN_FILE, claim_output_dir, run_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))


def _demo(argv):
    import demo

    return demo.main(argv)


@pytest.mark.parametrize(
    "opt, value, match",
    [
        ("--phase1-iters", "0", r"--phase1-iters 0: each phase needs at least 1 iteration"),
        ("--phase2-iters", "-3", r"--phase2-iters -3: each phase needs at least 1 iteration"),
        ("--num-groups", "0", r"--num-groups 0: GALW needs at least 1 task group"),
    ],
)
def test_bad_counts_fail_before_any_work(tmp_path, opt, value, match):
    data = tmp_path / "data"
    with pytest.raises(ValueError, match=match):
        _demo(["--quick", "--output", str(tmp_path / "out"), "--data-dir", str(data), opt, value])
    assert not data.exists()  # SynthPS was not generated, nothing trained
    assert not (tmp_path / "out").exists()


def _seed0_run(out):
    s = PipelineSettings(quick=True, seed=0, output=str(out)).resolved()
    claim_output_dir(str(out), run_settings(s), resume=False).release()
    return json.loads((out / RUN_FILE).read_text())


def test_resume_with_another_seed_is_refused(tmp_path):
    """Old behaviour: `demo --resume --seed 1` over a seed-0 output reported the seed-0 models as seed 1."""
    have = _seed0_run(tmp_path / "out")
    assert have["seed"] == 0 and have["phase1_iters"] == 4 and have["dataset"] == "synthps_cuhk_sysu"
    data = tmp_path / "data"
    with pytest.raises(ValueError, match=r"started with other settings \(seed: 0 in the folder, 1 now\)"):
        _demo(["--quick", "--output", str(tmp_path / "out"), "--data-dir", str(data), "--seed", "1", "--resume"])
    with pytest.raises(ValueError, match=r"phase2_iters: 4 in the folder, 7 now"):
        _demo(
            ["--quick", "--output", str(tmp_path / "out"), "--data-dir", str(data), "--phase2-iters", "7", "--resume"]
        )
    assert not data.exists()
    with pytest.raises(FileNotFoundError, match=r"has no run.json"):
        _demo(["--quick", "--output", str(tmp_path / "empty"), "--data-dir", str(data), "--resume"])


def test_rerun_without_resume_is_refused(tmp_path):
    _seed0_run(tmp_path / "out")
    with pytest.raises(FileExistsError, match=r"holds an earlier run \(run.json\): pass --resume .* --overwrite"):
        _demo(["--quick", "--output", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")])
    s = run_settings(PipelineSettings(quick=True, seed=3).resolved())
    claim_output_dir(str(tmp_path / "out"), s, resume=False, overwrite=True).release()
    assert json.loads((tmp_path / "out" / RUN_FILE).read_text())["seed"] == 3


def test_two_runs_on_one_output_are_refused(tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys, time; from galw_d2.apps.run_dir import claim_output_dir; "
        "c = claim_output_dir(sys.argv[1], {'seed': 0}, resume=False); print('locked', flush=True); time.sleep(60)"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    other = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"is in use by another run \(pid {other.pid}, lock .*{LOCK_FILE}\)"):
            _demo(["--quick", "--output", str(out), "--data-dir", str(tmp_path / "data"), "--resume"])
    finally:
        os.kill(other.pid, signal.SIGKILL)  # a killed run leaves no stale lock
        other.wait()
    t = time.time()
    claim_output_dir(str(out), {"seed": 0}, resume=True).release()
    assert time.time() - t < 5


def test_truncated_training_image_is_named(tmp_path, synthps_tiny):
    """Old behaviour: PIL's "image file is truncated" with no file name, mid-training."""
    import glob
    import shutil

    from detectron2.config import get_cfg

    from galw_d2 import add_galw_config
    from galw_d2.data import PersonSearchDatasetMapper

    src = sorted(glob.glob(os.path.join(synthps_tiny["cuhk_sysu"], "**", "*.jpg"), recursive=True))[0]
    bad = tmp_path / "s_broken.jpg"
    shutil.copyfile(src, bad)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    cfg = add_galw_config(get_cfg())
    mapper = PersonSearchDatasetMapper(cfg, is_train=True)
    from PIL import Image

    w, h = Image.open(src).size
    rec = {"file_name": str(bad), "width": w, "height": h, "image_id": 0, "annotations": []}
    with pytest.raises(OSError, match=rf"cannot read training image {bad}: .*truncated"):
        mapper(rec)
