"""The layer contracts of pyproject.toml (import-linter): they hold for the package, and the checker
really fails on a deliberately wrong import (a lower layer importing a higher one)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(cwd, pythonpath):
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run(
        [LINT, "--config", os.path.join(cwd, "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layer_contracts_hold():
    r = _lint(ROOT, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_layer_checker_fails_on_a_wrong_import(tmp_path):
    pkg = tmp_path / "galw_d2"
    shutil.copytree(os.path.join(ROOT, "galw_d2"), pkg, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    # data (a low layer) importing the engine (a high one), and the detectron2-free core importing torch
    (pkg / "data" / "bad_layering.py").write_text("from galw_d2.engine import GALWTrainer  # noqa\n")
    (pkg / "evaluation" / "search.py").write_text((pkg / "evaluation" / "search.py").read_text() + "\nimport torch\n")
    r = _lint(str(tmp_path), str(tmp_path))
    assert r.returncode != 0
    assert "galw_d2 layers BROKEN" in r.stdout and "galw_d2.data.bad_layering -> galw_d2.engine" in r.stdout
    assert "evaluation core needs neither detectron2 nor torch BROKEN" in r.stdout


def test_add_galw_config_registers_components_in_a_fresh_process():
    """`import galw_d2` is light; the entry point add_galw_config registers the models and datasets, so a
    fresh interpreter can build ROI-AlignPS* from a packaged config and see the builtin dataset names."""
    code = (
        "import sys, galw_d2\n"
        "assert 'detectron2' not in sys.modules and 'torch' not in sys.modules\n"
        "from detectron2.config import get_cfg\n"
        "from detectron2.data import DatasetCatalog\n"
        "from detectron2.modeling import build_model\n"
        "from galw_d2.model_zoo import get_config_file\n"
        "cfg = galw_d2.add_galw_config(get_cfg())\n"
        "cfg.merge_from_file(get_config_file('synthps/roi_alignps_R18_tiny_synthps.yaml'))\n"
        "cfg.MODEL.PERSON_SEARCH.NUM_PIDS = 4\n"
        "print(type(build_model(cfg)).__name__, 'synthps_small_cuhk_train' in DatasetCatalog.list())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["ROIAlignPS", "True"]
