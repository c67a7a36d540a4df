"""ROIAlignPS / NAE / AlignPS meta-architectures: configs build, a training step per model (all task
names, finite, gradients everywhere), inference on a real photo, query path, checkpoint round-trip."""

import glob
import os
import sys
import types

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from galw_d2 import add_galw_config
from galw_d2.modeling import resolve_num_pids
from galw_d2.tasks import TASKS, tasks_of_branch
from galw_d2.utils.state import apply_pending_updates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"ROIAlignPS": "roi_alignps", "NAE": "nae", "AlignPS": "alignps"}
NAMES = {
    "ROIAlignPS": {t.name for t in tasks_of_branch(["nae", "alignps"])},
    "NAE": {t.name for t in tasks_of_branch(["nae"])},
    "AlignPS": {t.name for t in tasks_of_branch(["alignps"])},
}
H, W = 240, 352


def tiny_cfg(arch, **person_search):
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, f"configs/synthps/{TINY[arch]}_R18_tiny_synthps.yaml"))
    cfg.MODEL.PERSON_SEARCH.NUM_PIDS = 6
    for k, v in person_search.items():
        setattr(cfg.MODEL.PERSON_SEARCH, k, v)
    return cfg


def train_batch(seed=0):
    """Two hand-built images with 3 persons each (ids 0, unlabeled, 2/3)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(2):
        inst = Instances((H, W))
        inst.gt_boxes = Boxes(
            torch.tensor([[20.0, 30.0, 80.0, 200.0], [150.0, 20.0, 210.0, 180.0], [250.0, 40.0, 320.0, 230.0]])
        )
        inst.gt_classes = torch.zeros(3, dtype=torch.long)
        inst.gt_pids = torch.tensor([0, -1, 2 + i])
        img = torch.randint(0, 255, (3, H, W), generator=g, dtype=torch.uint8)
        out.append({"image": img, "instances": inst, "height": H, "width": W})
    return out


def grace_hopper(max_long=352, max_short=240):
    """matplotlib's sample photo, BGR CHW uint8 resized to fit (max_long, max_short), + original size."""
    from matplotlib import cbook
    from PIL import Image

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    im = Image.open(path).convert("RGB")
    w0, h0 = im.size
    s = min(max_long / max(w0, h0), max_short / min(w0, h0))
    im = im.resize((round(w0 * s), round(h0 * s)), Image.BILINEAR)
    arr = np.asarray(im)[:, :, ::-1].copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), h0, w0


def one_step(model, batch, opt=None):
    model.train()
    with EventStorage(0):
        losses = model(batch)
        total = sum(losses.values())
        if opt is not None:
            opt.zero_grad()
        total.backward()
        if opt is not None:
            opt.step()
    apply_pending_updates(model)
    return losses


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*_R50_24e_*.yaml"))) + sorted(
    glob.glob(os.path.join(ROOT, "configs", "synthps", "*_tiny_synthps.yaml"))
)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_model_config_builds(path):
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.PERSON_SEARCH.NUM_PIDS == 0:
        cfg.MODEL.PERSON_SEARCH.NUM_PIDS = 5
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert {"res2", "res3", "res4"} <= {n for n, _ in model.backbone.named_children()}
    if "R50" in path:
        assert cfg.SOLVER.MAX_ITER == 24 * (cfg.SOLVER.STEPS[0] // 16)


@pytest.mark.parametrize("arch", list(TINY))
def test_train_step_losses_names_finite_weighted_and_gradients(arch):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(arch))
    losses = one_step(model, train_batch())
    assert set(losses) == NAMES[arch]
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    # Every trainable parameter receives a gradient (none is intentionally unused).
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert missing == []
    if arch != "AlignPS":
        # The OIM table got its rows for ids 0, 2, 3 after the step (deferred update applied).
        rows = model.roi_heads.memory.lut.norm(dim=1)
        assert torch.allclose(rows[[0, 2, 3]], torch.ones(3), atol=1e-5) and rows[[1, 4, 5]].sum() == 0


@pytest.mark.parametrize("strategy,preset", [("rulwf", "table1"), ("fixed", "roi_alignps_code")])
def test_models_return_unweighted_losses_whatever_the_weighting(strategy, preset):
    """The model returns every task's L_ori (GALW Eq. 4-5); weighting is the weighting module's job, so
    neither GALW.STRATEGY nor the fixed-weight preset changes the model's loss dict."""
    torch.manual_seed(0)
    m1 = build_model(tiny_cfg("NAE"))
    cfg = tiny_cfg("NAE")
    cfg.GALW.STRATEGY, cfg.GALW.FIXED.PRESET = strategy, preset
    torch.manual_seed(0)
    m2 = build_model(cfg)
    torch.manual_seed(1)
    l1 = one_step(m1, train_batch())
    torch.manual_seed(1)
    l2 = one_step(m2, train_batch())
    assert set(l1) == set(l2) == NAMES["NAE"]
    for k in l1:
        assert torch.equal(l1[k], l2[k]), k
    assert not hasattr(m1, "loss_weights")


@pytest.mark.parametrize(
    "arch,choice,dim",
    [
        ("ROIAlignPS", "concat", 64),
        ("ROIAlignPS", "nae", 32),
        ("ROIAlignPS", "alignps", 32),
        ("NAE", "concat", 32),
        ("AlignPS", "concat", 32),
    ],
)
def test_inference_on_grace_hopper_and_query_path(arch, choice, dim):
    torch.manual_seed(0)
    cfg = tiny_cfg(arch, EMBEDDING=choice)
    # An untrained detector scores below the usual 0.05: keep every candidate so outputs are never empty.
    cfg.MODEL.ALIGNPS.TEST_SCORE_THRESH = cfg.MODEL.NAE.TEST_SCORE_THRESH = 0.0
    model = build_model(cfg)
    one_step(model, train_batch())  # BN running stats and OIM tables are not the initial ones
    model.eval()
    img, h0, w0 = grace_hopper()
    query = torch.tensor([[100.0, 80.0, 400.0, 600.0]])  # original pixels (photo is 512x600)
    with torch.no_grad():
        out = model(
            [{"image": img, "height": h0, "width": w0, "embed_boxes": query}, {"image": img, "height": h0, "width": w0}]
        )
    assert len(out) == 2 and "box_embeddings" not in out[1]
    inst = out[0]["instances"]
    assert inst.image_size == (h0, w0)
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "embeddings"}
    n = len(inst)
    assert n > 0 and inst.embeddings.shape == (n, dim)
    assert torch.allclose(inst.embeddings.norm(dim=1), torch.ones(n), atol=1e-5)
    b = inst.pred_boxes.tensor
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= w0).all() and (b[:, 3] <= h0).all() and (b[:, 2] > b[:, 0]).all()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all() and (inst.pred_classes == 0).all()
    q = out[0]["box_embeddings"]
    assert q.shape == (1, dim) and torch.allclose(q.norm(dim=1), torch.ones(1), atol=1e-5)
    # Query boxes are taken in original pixels: a detection's own box (network coords -> original)
    # re-embedded through the query path gives that detection's embedding (boxes-in == boxes-out).
    if arch == "ROIAlignPS" and choice == "nae":
        with torch.no_grad():
            again = model([{"image": img, "height": h0, "width": w0, "embed_boxes": b[:3]}])
        assert torch.allclose(again[0]["box_embeddings"], inst.embeddings[:3], atol=1e-4)
    # Two identical images in one batch give identical detections.
    assert torch.allclose(out[1]["instances"].scores, inst.scores)


def test_checkpoint_round_trip_restores_outputs_and_oim_tables(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg("ROIAlignPS")
    cfg.MODEL.ALIGNPS.TEST_SCORE_THRESH = 0.0
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for s in range(2):
        one_step(model, train_batch(s), opt)
    assert model.roi_heads.memory.lut.abs().sum() > 0 and model.alignps.memory.lut.abs().sum() > 0
    assert model.roi_heads.memory.cq.abs().sum() > 0
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("m")
    torch.manual_seed(123)
    fresh = build_model(cfg)
    assert not torch.equal(fresh.roi_heads.memory.lut, model.roi_heads.memory.lut)
    DetectionCheckpointer(fresh).load(str(tmp_path / "m.pth"))
    for name in ("lut", "cq", "cq_ptr"):
        assert torch.equal(getattr(fresh.roi_heads.memory, name), getattr(model.roi_heads.memory, name))
        assert torch.equal(getattr(fresh.alignps.memory, name), getattr(model.alignps.memory, name))
    img, h0, w0 = grace_hopper()
    x = [{"image": img, "height": h0, "width": w0, "embed_boxes": torch.tensor([[10.0, 10.0, 200.0, 500.0]])}]
    model.eval()
    fresh.eval()
    with torch.no_grad():
        a, b = model(x)[0], fresh(x)[0]
    assert len(a["instances"]) == len(b["instances"]) > 0
    for f in ("scores", "embeddings"):
        assert torch.equal(a["instances"].get(f), b["instances"].get(f))
    assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
    assert torch.equal(a["box_embeddings"], b["box_embeddings"])


def test_num_pids_from_metadata_and_clear_errors():
    cfg = tiny_cfg("NAE")
    cfg.MODEL.PERSON_SEARCH.NUM_PIDS = 0
    cfg.DATASETS.TRAIN = ("galw_test_models_meta",)
    with pytest.raises(ValueError, match="num_train_pids"):
        resolve_num_pids(cfg)
    MetadataCatalog.get("galw_test_models_meta").set(num_train_pids=9)
    model = build_model(cfg)
    assert model.roi_heads.memory.lut.shape[0] == 9
    with pytest.raises(ValueError, match="EMBEDDING"):
        build_model(tiny_cfg("ROIAlignPS", EMBEDDING="both"))
    model = build_model(tiny_cfg("NAE"))
    inst = train_batch()
    inst[0]["instances"].remove("gt_pids")
    with pytest.raises(ValueError, match="gt_pids"):
        one_step(model, inst)


def test_attribute_branch_hook_gets_features_and_sampled_rois(monkeypatch):
    seen = {}

    class FakeAttr(torch.nn.Module):
        def __init__(self, shapes):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            seen["shapes"] = shapes

        def forward(self, features, proposals):
            seen["features"], seen["proposals"] = features, proposals
            return {"loss_attr": self.w * 0.5}

    fake = types.ModuleType("galw_d2.modeling.attribute_branch")
    fake.build_attribute_branch = lambda cfg, shapes: FakeAttr(shapes)
    monkeypatch.setitem(sys.modules, "galw_d2.modeling.attribute_branch", fake)
    cfg = tiny_cfg("ROIAlignPS")
    cfg.MODEL.ATTRIBUTES.ENABLED = True
    model = build_model(cfg)
    batch = train_batch()
    for x in batch:
        x["instances"].gt_attributes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    losses = one_step(model, batch)
    assert set(losses) == NAMES["ROIAlignPS"] | {"loss_attr"} and losses["loss_attr"].item() == pytest.approx(0.5)
    assert set(seen["shapes"]) == {"res3", "res4", "res5"} and set(seen["features"]) == {"res3", "res4", "res5"}
    props = seen["proposals"]
    assert len(props) == 2 and all(p.has("gt_attributes") and p.has("gt_pids") for p in props)
    assert set(torch.cat([p.gt_classes for p in props]).tolist()) <= {0, 1}
    cfg = tiny_cfg("AlignPS")
    cfg.MODEL.ATTRIBUTES.ENABLED = True
    with pytest.raises(ValueError, match="ATTRIBUTES"):
        build_model(cfg)


def test_task_table_covers_models():
    assert NAMES["ROIAlignPS"] == {t.name for t in TASKS if t.index <= 10}


def test_images_without_persons_train():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("ROIAlignPS"))
    empty = Instances((H, W))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    empty.gt_pids = torch.zeros(0, dtype=torch.long)
    batch = train_batch()
    batch[1]["instances"] = empty
    losses = one_step(model, batch)
    assert set(losses) == NAMES["ROIAlignPS"] and all(torch.isfinite(v) for v in losses.values())
    batch[0]["instances"] = empty
    losses = one_step(model, batch)  # no person at all: positive-only losses are 0, still finite
    assert losses["loss_roi_box_reg"] == 0 and losses["loss_nae_oim"] == 0 and losses["loss_rpn_cls"] > 0


@pytest.mark.parametrize("arch", ["ROIAlignPS", "NAE"])
def test_imagenet_style_checkpoint_initialises_the_roi_res5(arch, tmp_path):
    """A backbone-only checkpoint (names stem/res2..res5, as detectron2's converted R-50.pkl) loads without
    ambiguity; the ROI head's res5 starts from its res5 (ROIAlignPS: copied from backbone.res5)."""
    cfg = tiny_cfg("AlignPS")
    src = {
        k[len("backbone.") :]: torch.rand_like(v) if v.is_floating_point() else v
        for k, v in build_model(cfg).state_dict().items()
        if k.startswith("backbone.")
    }
    torch.save({"model": src, "matching_heuristics": True}, str(tmp_path / "imagenet.pth"))
    model = build_model(tiny_cfg(arch))
    DetectionCheckpointer(model).load(str(tmp_path / "imagenet.pth"))
    head = model.roi_heads.res5_block.state_dict()
    assert model.roi_heads.res5_name == ("head_res5" if arch == "ROIAlignPS" else "res5")
    assert all(torch.equal(head[k], src["res5." + k]) for k in head if head[k].is_floating_point())
    assert torch.equal(model.backbone.res4[0].conv1.weight, src["res4.0.conv1.weight"])
