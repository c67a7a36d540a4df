"""Evaluation and search refuse weights that do not cover the model (config/weights mismatch), and name
the weights file when it is empty or truncated."""

import os
import sys

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from test_models_meta_arch import tiny_cfg  # noqa: E402

from galw_d2.engine.weights import (  # noqa: E402
    WeightsMismatchError,
    check_weights_cover_model,
    load_model_weights,
    read_weights_file,
)


@pytest.fixture(scope="module")
def ra_weights(tmp_path_factory):
    """A ROI-AlignPS* (tiny) checkpoint in detectron2's format, and its state dict."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("ROIAlignPS"))
    path = str(tmp_path_factory.mktemp("w") / "roi_alignps.pth")
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    return path, model.state_dict()


def test_nae_config_with_roi_alignps_weights_is_refused(ra_weights):
    path, _ = ra_weights
    nae = build_model(tiny_cfg("NAE"))
    with pytest.raises(
        WeightsMismatchError,
        match=rf"weights file {path} does not cover the model .*"
        rf"missing: roi_heads\.res5\.\*: \d+ tensors",
    ):
        load_model_weights(nae, path)
    # allowed explicitly: loads what matches, reports the rest
    report = load_model_weights(nae, path, allow_partial=True)
    assert report["missing"] and all(k.startswith("roi_heads.res5.") for k in report["missing"])
    _, sd = ra_weights
    assert torch.equal(nae.state_dict()["backbone.stem.conv1.weight"], sd["backbone.stem.conv1.weight"])


def test_matching_weights_load_exactly(ra_weights):
    path, sd = ra_weights
    torch.manual_seed(1)
    model = build_model(tiny_cfg("ROIAlignPS"))
    report = load_model_weights(model, path)
    assert not report["missing"] and not report["wrong_shape"]
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_wrong_shapes_are_named():
    a = build_model(tiny_cfg("NAE"))
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    k = "roi_heads.box_predictor.net.0.weight"
    sd[k] = torch.zeros(sd[k].shape[0] + 4, *sd[k].shape[1:])
    with pytest.raises(WeightsMismatchError, match=rf"other shape: .* \(e\.g\. {k}: model"):
        check_weights_cover_model(a, {"model": sd}, source="x.pth")


class _Weighting(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_sigma = nn.Parameter(torch.zeros(3))


def test_oim_tables_of_another_size_and_galw_wrapper_keys_are_not_required(tmp_path):
    """Evaluating on another dataset than the training one: the OIM memories (training state sized by
    the identity count) may differ; GALWModel's flat keys load without fvcore's attribute lookup."""
    from galw_d2.engine.trainer import GALWModel

    torch.manual_seed(0)
    trained = GALWModel(build_model(tiny_cfg("ROIAlignPS")), _Weighting())
    path = str(tmp_path / "galw.pth")
    torch.save({"model": trained.state_dict()}, path)
    other = GALWModel(build_model(tiny_cfg("ROIAlignPS", NUM_PIDS=9)), _Weighting())
    report = load_model_weights(other, path)
    assert report["skipped_unused"] and all(k.endswith(("lut", "cq", "cq_ptr")) for k in report["skipped_unused"])
    sd = trained.state_dict()
    same = [k for k, v in other.state_dict().items() if k not in report["skipped_unused"]]
    assert all(torch.equal(other.state_dict()[k], sd[k]) for k in same)
    # a plain meta-architecture takes GALWModel weights (the weighting is training-only) and vice versa
    plain = build_model(tiny_cfg("ROIAlignPS"))
    assert not load_model_weights(plain, path)["missing"]
    torch.save({"model": plain.state_dict()}, path)
    assert not load_model_weights(GALWModel(build_model(tiny_cfg("ROIAlignPS")), _Weighting()), path)["missing"]


def test_empty_truncated_and_foreign_weights_files_name_the_path(tmp_path, ra_weights):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"weights file {empty}: the file is empty"):
        read_weights_file(str(empty))
    data = open(ra_weights[0], "rb").read()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=rf"weights file {trunc}: cannot be read .*truncated"):
        load_model_weights(build_model(tiny_cfg("NAE")), str(trunc))
    lst = tmp_path / "list.pth"
    torch.save([1, 2], str(lst))
    with pytest.raises(ValueError, match=rf"weights file {lst}: expected a checkpoint dict"):
        read_weights_file(str(lst))


def test_search_tool_refuses_mismatched_weights(ra_weights):
    import search

    path, _ = ra_weights
    cfg_file = os.path.join(ROOT, "configs/synthps/nae_R18_tiny_synthps.yaml")
    with pytest.raises(WeightsMismatchError, match="roi_heads.res5"):
        search.load_model(cfg_file, path, [])
    empty = os.path.join(os.path.dirname(path), "empty.pth")
    open(empty, "wb").close()
    with pytest.raises(ValueError, match=f"weights file {empty}: the file is empty"):
        search.load_model(cfg_file, empty, [])
    cfg, model = search.load_model(cfg_file, path, [], allow_partial_weights=True)
    assert not model.training
    args = search.parse_args(
        [
            "--config-file",
            cfg_file,
            "--weights",
            path,
            "--query-crop",
            "q.jpg",
            "--gallery",
            "g",
            "--allow-partial-weights",
        ]
    )
    assert args.allow_partial_weights


def test_train_net_eval_only_refuses_mismatched_weights(ra_weights, tmp_path):
    import train_net

    path, _ = ra_weights
    cfg = tiny_cfg("NAE")
    cfg.MODEL.WEIGHTS = path
    cfg.OUTPUT_DIR = str(tmp_path)
    model = build_model(cfg)
    args = train_net.build_argument_parser().parse_args(["--eval-only"])
    assert args.allow_partial_weights is False
    with pytest.raises(WeightsMismatchError, match="roi_heads.res5"):
        train_net.load_eval_weights(cfg, model, args)
    args = train_net.build_argument_parser().parse_args(["--eval-only", "--allow-partial-weights"])
    assert train_net.load_eval_weights(cfg, model, args)["missing"]


def test_search_skips_unreadable_gallery_images(tmp_path, ra_weights, capsys):
    import numpy as np
    import search
    from PIL import Image

    gal = tmp_path / "gallery"
    gal.mkdir()
    rng = np.random.default_rng(0)
    for n in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(gal / n, quality=95)
    data = (gal / "a.jpg").read_bytes()
    (gal / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (gal / "zero.jpg").write_bytes(b"")
    path, _ = ra_weights
    cfg, model = search.load_model(os.path.join(ROOT, "configs/synthps/roi_alignps_R18_tiny_synthps.yaml"), path, [])
    query = {"path": str(gal / "a.jpg"), "box": [10.0, 10.0, 60.0, 110.0]}
    paths = search.list_images(str(gal))
    _, hits, total, skipped = search.search(cfg, model, query, paths, 3, 0.0)
    assert sorted(os.path.basename(p) for p, _ in skipped) == ["trunc.jpg", "zero.jpg"]
    assert all(os.path.basename(h["image"]) in ("a.jpg", "b.jpg") for h in hits)
    assert "skipping gallery image" in capsys.readouterr().err
    # an unreadable query is an error naming it; all-unreadable galleries too
    with pytest.raises(ValueError, match="query image .*zero.jpg: cannot be read"):
        search.search(cfg, model, {"path": str(gal / "zero.jpg"), "box": [0, 0, 5, 5]}, paths, 3, 0.0)
    with pytest.raises(ValueError, match="none of the 2 gallery images could be read"):
        search.search(cfg, model, query, [str(gal / "trunc.jpg"), str(gal / "zero.jpg")], 3, 0.0)
    with pytest.raises(SystemExit):
        search.parse_args(
            ["--config-file", "c", "--weights", "w", "--query-crop", "q", "--gallery", "g", "--det-thresh", "nan"]
        )
    # the command line: one-line errors, exit 1
    assert (
        search.cli(
            ["--config-file", "c", "--weights", path, "--query-crop", str(gal / "zero.jpg"), "--gallery", str(gal)]
        )
        == 1
    )
    assert "search: error: --query-crop " in capsys.readouterr().err
