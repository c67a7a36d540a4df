"""tools/train_net.py and PersonSearchTrainer: exact resume (optimizer state in the checkpoint),
the detectron2-standard command line, the eval-only path.

The model is detectron2's stock tiny Faster R-CNN (configs/stock/): the trainer works with any
detectron2 model returning a loss dict, and it keeps this test fast and independent of the
person-search models. Data: a few toy scenes through the person-search mapper.
"""

import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOCK = os.path.join(ROOT, "configs", "stock", "faster_rcnn_R18_FPN_tiny.yaml")


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    """One toy scene registered as ``galw_test_toy_train`` (person-search record fields).

    One image: every batch is the same whatever the sampler position, so this test isolates the
    training state (optimizer, iteration); the data stream's position across a real kill is tested
    in test_resume_exact.py."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    smoke = _load_tool("smoke_stock")
    out = tmp_path_factory.mktemp("toy")
    records = smoke.make_toy_images(str(out), num_images=1, size=(128, 160), seed=3)
    pid = 0
    for r in records:
        r["image_name"] = os.path.basename(r["file_name"])
        r["camera_id"] = -1
        for a in r["annotations"]:
            a["person_id"] = pid
            pid += 1
    name = "galw_test_toy_train"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(thing_classes=["person"], num_train_pids=pid, dataset_type="toy")
    return name


def _args(train_net, out_dir, dataset, max_iter, resume=False, extra=()):
    argv = (
        ["--config-file", STOCK]
        + (["--resume"] if resume else [])
        + [
            "OUTPUT_DIR",
            str(out_dir),
            "DATASETS.TRAIN",
            f"('{dataset}',)",
            "DATASETS.TEST",
            "()",
            "SOLVER.MAX_ITER",
            str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "SOLVER.WARMUP_ITERS",
            "1",
            "SOLVER.BASE_LR",
            "0.02",
            "SOLVER.MOMENTUM",
            "0.9",
            "SOLVER.STEPS",
            "(3,)",
            "SEED",
            "7",
            "INPUT.PERSON_SEARCH.TRAIN_LONG_SIDE_RANGE",
            "(160, 160)",
            "INPUT.PERSON_SEARCH.FLIP_PROB",
            "0.0",
            "DATALOADER.ASPECT_RATIO_GROUPING",
            "False",
            "GALW.STRATEGY",
            "rulwf",
            "GALW.TASKS",
            "['loss_rpn_cls', 'loss_rpn_loc', 'loss_cls', 'loss_box_reg']",
            "GALW.TASK_KINDS",
            "['loss_rpn_loc=reg', 'loss_box_reg=reg']",
        ]
        + list(extra)
    )
    from detectron2.engine import default_argument_parser

    return default_argument_parser().parse_args(argv)


class _Seeded:
    """Mixin: reseed torch before every step from the iteration number, so the only thing that can
    differ between a continuous and a resumed run is the state restored from the checkpoint."""

    def build_hooks(self):
        from detectron2.engine import hooks

        ret = super().build_hooks()
        ret.insert(0, hooks.CallbackHook(before_step=lambda tr: torch.manual_seed(1000 + tr.iter)))
        return ret


def _run(train_net, trainer_cls, args):
    cfg = train_net.setup(args)
    tr = trainer_cls(cfg)
    tr.resume_or_load(resume=args.resume)
    tr.train()
    return tr


def _params(tr):
    m = tr.model.module if hasattr(tr.model, "module") else tr.model
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, toy_dataset):
    """4 uninterrupted iterations: (train_net module, seeded Trainer class, finished trainer)."""
    train_net = _load_tool("train_net")

    class T(_Seeded, train_net.Trainer):
        pass

    return train_net, T, _run(train_net, T, _args(train_net, tmp_path_factory.mktemp("full"), toy_dataset, 4))


def test_resume_is_exact(tmp_path, toy_dataset, full_run):
    train_net, T, full = full_run
    _run(train_net, T, _args(train_net, tmp_path / "split", toy_dataset, 2))
    ckpt = torch.load(tmp_path / "split" / "model_final.pth", map_location="cpu", weights_only=False)
    opt = ckpt["trainer"].get("_trainer", {}).get("optimizer")  # DetectionCheckpointer(trainer=...)
    assert opt is not None and opt["state"], "checkpoint has no optimizer state (momentum buffers)"
    assert ckpt["iteration"] == 1
    resumed = _run(train_net, T, _args(train_net, tmp_path / "split", toy_dataset, 4, resume=True))
    assert resumed.start_iter == 2
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    diff = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()}
    assert max(diff.values()) == 0.0, sorted(diff.items(), key=lambda kv: -kv[1])[:5]
    sa, sb = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for k in sa["state"]:
        assert torch.equal(sa["state"][k]["momentum_buffer"], sb["state"][k]["momentum_buffer"])


def test_resume_without_optimizer_state_differs(tmp_path, toy_dataset, full_run):
    """The same split run, with the optimizer state dropped from the checkpoint (what detectron2 v0.6's
    DefaultTrainer did): the weights no longer match the continuous run, so the test above can fail."""
    train_net, T, full = full_run

    class NoOpt(T):
        def state_dict(self):
            sd = super().state_dict()
            sd.pop("_trainer", None)
            sd.pop("optimizer", None)
            return sd

    _run(train_net, NoOpt, _args(train_net, tmp_path / "split", toy_dataset, 2))
    resumed = _run(train_net, T, _args(train_net, tmp_path / "split", toy_dataset, 4, resume=True))
    a, b = _params(full), _params(resumed)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()) > 0


def test_command_line_is_detectron2_standard():
    from detectron2.engine import default_argument_parser

    train_net = _load_tool("train_net")
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            STOCK,
            "--num-gpus",
            "2",
            "--num-machines",
            "3",
            "--machine-rank",
            "1",
            "--dist-url",
            "tcp://127.0.0.1:1234",
            "--resume",
            "--eval-only",
            "SOLVER.BASE_LR",
            "0.5",
        ]
    )
    assert (args.num_gpus, args.num_machines, args.machine_rank, args.dist_url) == (2, 3, 1, "tcp://127.0.0.1:1234")
    assert args.resume and args.eval_only and args.opts == ["SOLVER.BASE_LR", "0.5"]
    src = open(os.path.join(ROOT, "tools", "train_net.py")).read()
    assert len(src.splitlines()) < 150
    assert "launch(" in src and "default_setup" in src and "add_galw_config" in src
    assert issubclass(train_net.Trainer, __import__("galw_d2.engine.person_search", fromlist=["x"]).PersonSearchTrainer)


def test_setup_registers_attribute_pseudo_labels(tmp_path):
    """setup() wires MODEL.ATTRIBUTES.PSEUDO_LABELS: a missing file is an error naming it and the tool."""
    from detectron2.engine import default_argument_parser

    train_net = _load_tool("train_net")
    missing = str(tmp_path / "attr_train.jsonl")
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            STOCK,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "MODEL.ATTRIBUTES.PSEUDO_LABELS",
            f"['galw_test_toy_train={missing}']",
        ]
    )
    with pytest.raises(FileNotFoundError, match="generate_attribute_pseudo_labels"):
        train_net.setup(args)
