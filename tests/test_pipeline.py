"""The end-to-end GALW pipeline in quick mode (what `make demo` runs, a few iterations on SynthPS tiny).

One run (module fixture) through tools/demo.py's main(); the tests check what it wrote: configs that
re-load and say what each phase did, checkpoints that load, the trends file and the groups it led
to, metrics.json's contract, the figures and the report. Learning itself is the full demo's job
(measured in the README); here the numbers only need to be well-formed and consistent.
"""

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    import demo

    out = tmp_path_factory.mktemp("demo")
    data = tmp_path_factory.mktemp("demo_data")
    rc = demo.main(["--quick", "--output", str(out), "--data-dir", str(data), "--seed", "0"])
    assert rc == 0
    return out


def test_metrics_contract(demo_out):
    m = json.loads((demo_out / "metrics.json").read_text())
    for key in ("search", "random_init"):
        assert set(m[key]) >= {"mAP", "top1"}, key
        assert all(0.0 <= m[key][k] <= 1.0 for k in ("mAP", "top1", "top5", "top10"))
        assert m[key]["top1"] <= m[key]["top5"] <= m[key]["top10"]
    groups = m["groups"]
    flat = [t for g in groups for t in g]
    from galw_d2.tasks import TASKS_BY_NAME

    # ROI-AlignPS*: the ten tasks t1..t10, each in exactly one of at most G=4 non-empty groups
    assert sorted(flat) == sorted(t.name for t in TASKS_BY_NAME.values() if t.index <= 10)
    assert 1 <= len(groups) <= 4 and all(groups)
    assert m["settings"]["same_initial_weights_both_phases"] is True
    assert m["settings"]["quick"] is True and m["settings"]["phase1_iters"] == 4
    assert m["runtime_s"]["total"] > 0


def test_groups_follow_from_the_recorded_trends(demo_out):
    """groups.json = the GALW grouping of the trends file phase 1 wrote, and phase 2's config uses it."""
    from detectron2.config import get_cfg

    from galw_d2 import add_galw_config
    from galw_d2.galw.grouping import group_tasks, load_trends

    trends = load_trends(str(demo_out / "grouping" / "trends.json"))
    assert len(trends["tasks"]) == 10
    # 4 iterations, epochs of 2, a probe every 2 iterations: one probe per epoch, 2 trend points
    assert all(len(v) == 2 and all(x is not None and x >= 0 for x in v) for v in trends["gradient_magnitude"].values())
    again = group_tasks(trends, 4)["groups"]
    m = json.loads((demo_out / "metrics.json").read_text())
    assert m["groups"] == again
    saved = json.loads((demo_out / "grouping" / "groups.json").read_text())
    assert saved["groups"] == again
    cfgs = {}
    for phase in (1, 2):
        cfg = add_galw_config(get_cfg())
        cfg.merge_from_file(str(demo_out / "configs" / f"phase{phase}.yaml"))
        cfgs[phase] = cfg
    assert cfgs[1].GALW.STRATEGY == "fixed" and cfgs[1].GALW.RECORD.ENABLED  # GALW.PHASE1.STRATEGY default
    assert cfgs[2].GALW.STRATEGY == "galw" and not cfgs[2].GALW.RECORD.ENABLED
    assert [list(g) for g in cfgs[2].GALW.GROUPS] == again
    assert cfgs[1].SOLVER.MAX_ITER == cfgs[2].SOLVER.MAX_ITER == 4


def test_checkpoints_and_initial_weights(demo_out):
    init = torch.load(demo_out / "model_init.pth", map_location="cpu", weights_only=False)["model"]
    p1 = torch.load(demo_out / "phase1" / "model_final.pth", map_location="cpu", weights_only=False)
    p2 = torch.load(demo_out / "phase2" / "model_final.pth", map_location="cpu", weights_only=False)
    assert p1["iteration"] == p2["iteration"] == 3
    # trained weights moved away from the shared initialisation, and the two phases differ
    k = next(k for k in init if k.startswith("backbone.") and k.endswith("weight"))
    assert not torch.equal(init[k], p1["model"][k]) and not torch.equal(p1["model"][k], p2["model"][k])
    # phase 2 learned one log sigma per group
    ls = p2["model"]["galw_weighting.log_sigma"]
    m = json.loads((demo_out / "metrics.json").read_text())
    assert ls.numel() >= len(m["groups"])


def test_figures_and_report(demo_out):
    for f in (
        "gallery_size_curve.png",
        "gallery_size_curve.json",
        "topk_search.png",
        "report.md",
        "grouping/gradient_trends.png",
        "grouping/dendrogram.png",
        "log.txt",
    ):
        assert (demo_out / f).is_file() and (demo_out / f).stat().st_size > 0, f
    curve = json.loads((demo_out / "gallery_size_curve.json").read_text())["curves"]
    last = list(curve.values())[-1]
    assert [c["gallery_size"] for c in last][0] == 50  # SynthPS tiny writes TestG50 (+ the full set)
    m = json.loads((demo_out / "metrics.json").read_text())
    g50 = next(c for c in last if c["gallery_size"] == 50)
    assert g50["mAP"] == pytest.approx(m["search"]["mAP"])  # the headline protocol, re-scored from the file
    rep = (demo_out / "report.md").read_text()
    assert "random initial weights" in rep and "Published numbers" in rep and "95.6 / 96.3" in rep
    assert f"{100 * m['search']['mAP']:.2f}" in rep


def test_bad_dataset_name_is_a_clear_error(tmp_path):
    import demo

    with pytest.raises(ValueError, match="no registered dataset nope_train"):
        demo.main(["--dataset", "nope", "--output", str(tmp_path)])


def test_train_net_eval_only_reproduces_the_demo_metrics(demo_out):
    """tools/train_net.py --eval-only on the demo's phase-2 config + checkpoint = the demo's numbers."""
    import importlib.util

    from detectron2.engine import default_argument_parser

    spec = importlib.util.spec_from_file_location("_train_net", os.path.join(ROOT, "tools", "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    m = json.loads((demo_out / "metrics.json").read_text())
    test_name = m["settings"]["dataset_prefix"] + "_test"
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            str(demo_out / "configs" / "phase2.yaml"),
            "--eval-only",
            "MODEL.WEIGHTS",
            str(demo_out / "phase2" / "model_final.pth"),
            "DATASETS.TEST",
            f"('{test_name}',)",
            "OUTPUT_DIR",
            str(demo_out / "eval_only"),
        ]
    )
    res = train_net.main(args)
    assert res["search"]["mAP"] == pytest.approx(m["search"]["mAP"], abs=1e-6)
    assert res["search"]["top1"] == pytest.approx(m["search"]["top1"], abs=1e-6)
    assert res["search"]["det-thresh"] == pytest.approx(m["settings"]["det_thresh"])


def test_search_tool_on_own_photos(demo_out, tmp_path):
    """tools/search.py with the demo's checkpoint: a query box in one image, a folder of 3 images."""
    import shutil

    import search
    from PIL import Image

    m = json.loads((demo_out / "metrics.json").read_text())
    imgs = sorted(os.listdir(os.path.join(m["settings"]["dataset_root"], "Image", "SSM")))[:4]
    src = [os.path.join(m["settings"]["dataset_root"], "Image", "SSM", n) for n in imgs]
    gal = tmp_path / "gallery"
    gal.mkdir()
    for p in src[1:]:
        shutil.copy(p, gal)
    w, h = Image.open(src[0]).size
    common = [
        "--config-file",
        str(demo_out / "configs" / "phase2.yaml"),
        "--weights",
        str(demo_out / "phase2" / "model_final.pth"),
        "--gallery",
        str(gal),
        "--topk",
        "3",
        "--det-thresh",
        "0",
    ]
    # every location a candidate: the tool is under test here, not how much 4 iterations taught the model
    opts = ["MODEL.ALIGNPS.TEST_SCORE_THRESH", "0.0"]
    assert (
        search.main(
            common
            + ["--query-image", src[0], "--query-box", "10", "10", "60", "120", "--output", str(tmp_path / "a")]
            + opts
        )
        == 0
    )
    out = json.loads((tmp_path / "a" / "topk.json").read_text())
    assert out["num_gallery_images"] == 3 and len(out["hits"]) == min(3, out["num_detections"]) > 0
    sims = [hh["similarity"] for hh in out["hits"]]
    assert sims == sorted(sims, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in sims)
    assert [hh["rank"] for hh in out["hits"]] == list(range(1, len(sims) + 1))
    assert all(os.path.dirname(hh["image"]) == str(gal) for hh in out["hits"])
    assert (tmp_path / "a" / "topk.png").stat().st_size > 0
    # a crop as the query
    crop = tmp_path / "crop.png"
    Image.open(src[0]).crop((10, 10, 60, 120)).save(crop)
    assert search.main(common + ["--query-crop", str(crop), "--output", str(tmp_path / "b")] + opts) == 0
    assert json.loads((tmp_path / "b" / "topk.json").read_text())["query"]["box"] == [0.0, 0.0, 50.0, 110.0]
    with pytest.raises(ValueError, match="--query-box"):
        search.main(
            common
            + ["--query-image", src[0], "--query-box", "10", "10", str(w + 5), "20", "--output", str(tmp_path / "c")]
            + opts
        )


def test_resume_skips_finished_phases(demo_out):
    """A second run with --resume on the same output: both phases restart from model_final (nothing to
    train) and the evaluation reproduces the first run's numbers."""
    import demo

    first = json.loads((demo_out / "metrics.json").read_text())
    data = first["settings"]["data_dir"]
    assert demo.main(["--quick", "--output", str(demo_out), "--data-dir", data, "--seed", "0", "--resume"]) == 0
    again = json.loads((demo_out / "metrics.json").read_text())
    assert again["search"] == first["search"] and again["groups"] == first["groups"]
    log = (demo_out / "log.txt").read_text()
    assert log.count("Starting training from iteration 4") == 2  # both phases: nothing left to train
    p2 = torch.load(demo_out / "phase2" / "model_final.pth", map_location="cpu", weights_only=False)
    assert p2["iteration"] == 3
