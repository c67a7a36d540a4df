"""A toy two/three-task detectron2 model and trainer for the GALW tests (not a test module)."""

import torch
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from galw_d2 import add_galw_config
from galw_d2.engine import GALWTrainer


class _Stateful(nn.Module):
    """Mimics an OIM table: forward queues an update, apply_pending_updates applies it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.zeros(4))
        self._pending = None
        self.applied = 0

    def forward(self, x):
        self._pending = x.detach().mean(0)
        return (x * self.table.sum()).mean()

    @torch.no_grad()
    def apply_pending_updates(self):
        if self._pending is not None:
            self.table.add_(self._pending)
            self._pending = None
            self.applied += 1


if "GALWToyNet" not in META_ARCH_REGISTRY._obj_map:

    @META_ARCH_REGISTRY.register()
    class GALWToyNet(nn.Module):
        """Shared trunk ``backbone.res2 -> backbone.res3``, heads a (cls), b (reg), c (cls, stateful)."""

        def __init__(self, cfg):
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.res2 = nn.Linear(6, 8)
            self.backbone.res3 = nn.Linear(8, 4)
            self.head_a = nn.Linear(4, 1)
            self.head_b = nn.Linear(4, 1)
            self.state = _Stateful()
            self.three = cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3  # test switch: a third (stateful) task

        def forward(self, batched_inputs):
            x = torch.stack([d["x"] for d in batched_inputs])
            y = torch.stack([d["y"] for d in batched_inputs])
            h = torch.relu(self.backbone.res3(torch.relu(self.backbone.res2(x))))
            if not self.training:
                return [{"pred": self.head_a(h)}]
            out = {
                "loss_a": nn.functional.binary_cross_entropy_with_logits(self.head_a(h).squeeze(1), (y > 0).float()),
                "loss_b": ((self.head_b(h).squeeze(1) - y) ** 2).mean(),
            }
            if self.three:
                out["loss_c"] = self.state(h)
            return out


def toy_batches(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(n, 6, generator=g)
        y = x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(n, generator=g)
        yield [{"x": x[i], "y": y[i]} for i in range(n)]


class ToyTrainer(GALWTrainer):
    data_seed = 0

    @classmethod
    def build_train_loader(cls, cfg):
        return toy_batches(cls.data_seed)

    def build_writers(self):
        return []


def toy_cfg(out_dir, strategy="rulwf", record=True, three=False, max_iter=8):
    cfg = add_galw_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "GALWToyNet"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3 if three else 2
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.WEIGHT_DECAY = 0.01
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 100000
    cfg.TEST.EVAL_PERIOD = 0
    cfg.GALW.STRATEGY = strategy
    cfg.GALW.TASKS = ["loss_a", "loss_b", "loss_c"] if three else ["loss_a", "loss_b"]
    cfg.GALW.TASK_KINDS = ["loss_b=reg"]
    cfg.GALW.RECORD.ENABLED = record
    cfg.GALW.RECORD.PERIOD = 2
    cfg.GALW.RECORD.EPOCH_ITERS = 4
    cfg.GALW.RECORD.SHARED_PARAMS = [r"^backbone\."]
    return cfg


class ExactResumeToyTrainer(ToyTrainer):
    """Skips the batches already seen on resume, so a resumed run sees the same data as a continuous one."""

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume)
        for _ in range(self.start_iter):
            next(self._trainer._data_loader_iter)
