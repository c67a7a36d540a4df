"""The dependency stack works: imports, configs, a stock detectron2 model on CPU, torchvision ops."""

import glob
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import galw_d2
from galw_d2 import add_galw_config
from galw_d2.utils.env import describe_detectron2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_imports_and_versions():
    import detectron2
    import torchvision

    assert galw_d2.__version__
    assert torch.__version__.startswith("2.")
    assert torchvision.__version__
    desc = describe_detectron2()
    assert detectron2.__version__ in desc and "detectron2" in desc


def test_galw_keys_present():
    cfg = add_galw_config(get_cfg())
    assert tuple(cfg.INPUT.PERSON_SEARCH.TEST_SIZE) == (1500, 900)
    assert cfg.GALW.STRATEGY == "fixed"
    # Adding twice must not be needed, but a fresh cfg gets the same keys every time.
    assert add_galw_config(get_cfg()).dump() == cfg.dump()


def test_configs_folder_not_empty():
    assert any(os.path.basename(p).startswith("Base-") for p in CONFIGS), "configs/ needs a Base-*.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_config_merges(path):
    if os.sep + os.path.join("configs", "reid") + os.sep in path:  # torchreid configs: the reid config schema
        from galw_d2.reid.config import get_reid_cfg

        cfg = get_reid_cfg()
    else:
        cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.freeze()
    assert cfg.SOLVER.BASE_LR > 0


def _tiny_stock_cfg():
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs/stock/faster_rcnn_R18_FPN_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _toy_batch(n=2, h=160, w=224, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        img = torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 60.0, 140.0], [100.0, 20.0, 140.0, 120.0]]))
        inst.gt_classes = torch.zeros(2, dtype=torch.int64)
        batch.append({"image": img, "instances": inst, "height": h, "width": w})
    return batch


def test_stock_generalized_rcnn_train_step_and_inference():
    torch.manual_seed(0)
    cfg = _tiny_stock_cfg()
    model = build_model(cfg)
    assert type(model).__name__ == "GeneralizedRCNN"
    model.train()
    with EventStorage(0):
        losses = model(_toy_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    opt.zero_grad()
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    before = next(model.parameters()).detach().clone()
    opt.step()
    assert not torch.equal(before, next(model.parameters()).detach())

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 160, 224), dtype=torch.uint8), "height": 320, "width": 448}])
    inst = out[0]["instances"]
    assert inst.image_size == (320, 448)  # rescaled to the requested output size
    assert inst.pred_boxes.tensor.shape[1] == 4 and len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert inst.scores.shape == (len(inst),)


def test_torchvision_nms_cpu():
    from torchvision.ops import batched_nms, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(box0, box1) = 81 / 119 = 0.68
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1, 2]


def test_torchvision_roi_align_cpu():
    from torchvision.ops import roi_align

    feat = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    # One bin covering the whole 4x4 map (aligned: pixel centres at +0.5): sampling 2x2 points at
    # (1,1),(1,3),(3,1),(3,3) in pixel-edge coords -> values interpolated at centres-0.5 -> mean 7.5.
    out = roi_align(
        feat, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], output_size=1, spatial_scale=1.0, sampling_ratio=2, aligned=True
    )
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == pytest.approx(7.5)


def test_torchvision_deform_conv2d_cpu_matches_conv_with_zero_offset():
    from torchvision.ops import deform_conv2d

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    offset = torch.zeros(1, 2 * 9, 8, 8)
    mask = torch.ones(1, 9, 8, 8)
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    assert torch.allclose(deform_conv2d(x, offset, w, padding=1), ref, atol=1e-5)  # DCNv1
    assert torch.allclose(deform_conv2d(x, offset, w, padding=1, mask=mask), ref, atol=1e-5)  # DCNv2
    # A whole-pixel offset of +1 in x equals the conv of the input shifted left by one.
    off = torch.zeros(1, 18, 8, 8)
    off[:, 1::2] = 1.0
    shifted = torch.nn.functional.pad(x[..., 1:], (0, 1))
    # (column 0 differs: its left tap reads x[..., 0] after the shift instead of the zero padding)
    got = deform_conv2d(x, off, w, padding=1)[..., 1:]
    assert torch.allclose(got, torch.nn.functional.conv2d(shifted, w, padding=1)[..., 1:], atol=1e-5)


def test_patch_script_rejects_unexpected_sdist(tmp_path):
    (tmp_path / "setup.py").write_text("setup()\n")
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools/patch_detectron2_sdist.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert "setup.py" in r.stderr and "does not contain" in r.stderr


def test_patch_script_patches_and_is_idempotent(tmp_path):
    files = {
        "setup.py": "setup(\n    ext_modules=get_extensions(),\n)\n",
        "detectron2/layers/deform_conv.py": (
            "import torch\nfrom detectron2 import _C\n\ndef f():\n    from detectron2 import _C\n"
        ),
        "detectron2/layers/rotated_boxes.py": "from detectron2 import _C\n",
        "detectron2/layers/roi_align_rotated.py": "from detectron2 import _C\n",
        "detectron2/evaluation/fast_eval_api.py": "from detectron2 import _C\n",
        "detectron2/data/transforms/transform.py": "interp=Image.LINEAR\n",
    }
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    script = os.path.join(ROOT, "tools/patch_detectron2_sdist.py")
    for _ in range(2):
        r = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert "get_extensions" not in (tmp_path / "setup.py").read_text()
    dc = (tmp_path / "detectron2/layers/deform_conv.py").read_text()
    assert "except ImportError" in dc and "    from detectron2 import _C\n" in dc  # lazy import untouched
    assert dc.count("try:") == 1
    assert "Image.BILINEAR" in (tmp_path / "detectron2/data/transforms/transform.py").read_text()


def test_stock_smoke_prints_finite_losses(tmp_path):
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools/smoke_stock.py"), "--iters", "2", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[demo] iter")]
    assert len(lines) == 2 and "NON-FINITE" not in r.stdout
    assert "total_loss=" in lines[-1]
