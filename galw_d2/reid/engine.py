"""torchreid ``Engine`` of the Mancs recipe, its three losses weighted by galw_d2's loss weighting.

:class:`MancsEngine` overrides ``forward_backward`` (torchreid's hook for a training recipe): the model's
three outputs give the losses ``loss_rank`` (curriculum triplet), ``loss_cls`` (focal) and ``loss_att``
(attention BCE); the weighting module of :func:`build_reid_weighting` (fixed lambdas, ULWF, RULWF or
GALW, the same classes the detectron2 side uses) turns them into the total that is back-propagated.
Optionally the gradient-trend recorder (GALW Eq. 6) probes each loss's gradient on the shared trunk
stages before the backward (training unchanged), which feeds the grouping for GALW.

``forward_backward`` returns the three named (unweighted) losses; the weighted total and the
weighting's sigmas / effective weights are in ``engine.last_step`` and in TensorBoard
(``Train/total``, ``Train/galw/...``).

Evaluation (:meth:`MancsEngine.evaluate`) uses torchreid's ``metrics.compute_distance_matrix`` and
``metrics.evaluate_rank`` (CMC, mAP) on the rank-branch descriptors.
"""

import json
import math
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchreid.reid import metrics
from torchreid.reid.engine import Engine
from tqdm import tqdm

from galw_d2.galw.recorder import GradientTrendRecorder
from galw_d2.galw.weighting import build_loss_weighting, parse_name_values

from .config import REID_TASKS
from .losses import CurriculumTripletLoss, attention_bce_loss, identity_focal_loss

__all__ = ["build_reid_weighting", "build_optimizer", "shared_parameters", "MancsEngine", "write_json"]


def build_reid_weighting(cfg, task_names: Sequence[str] = REID_TASKS) -> nn.Module:
    """The loss weighting ``cfg.GALW.STRATEGY`` names, from galw_d2's weighting registry, over the re-id
    tasks (the one place it is built): fixed (``GALW.FIXED_WEIGHTS``, Mancs: 1, 1, 0.2), ulwf, rulwf,
    galw (``GALW.GROUPS``) and every other registered method; kinds from ``GALW.TASK_KINDS`` /
    ``GALW.DEFAULT_KIND``."""
    task_names = list(task_names)
    if str(cfg.GALW.STRATEGY).lower() == "fixed":
        unknown = sorted(set(parse_name_values(cfg.GALW.FIXED_WEIGHTS, "GALW.FIXED_WEIGHTS", float)) - set(task_names))
        if unknown:
            raise ValueError(f"GALW.FIXED_WEIGHTS names {unknown}, not re-id tasks {task_names}")
    return build_loss_weighting(cfg, tasks=task_names)


def shared_parameters(model: nn.Module, patterns: Sequence[str]) -> List[tuple]:
    """(name, parameter) pairs of ``model`` whose name matches one of the regexes (re.search)."""
    rx = [re.compile(p) for p in patterns]
    out = [(n, p) for n, p in model.named_parameters() if p.requires_grad and any(r.search(n) for r in rx)]
    if not out:
        raise ValueError(
            f"GALW.RECORD.SHARED_PARAMS {list(patterns)} match no parameter of the model "
            f"(e.g. {[n for n, _ in list(model.named_parameters())[:3]]})"
        )
    return out


def build_optimizer(cfg, model: nn.Module, weighting: nn.Module) -> torch.optim.Optimizer:
    """Adam (Mancs Sec. 4.3) over the model and, for learned strategies, log sigma
    (lr x GALW.LR_FACTOR, no weight decay)."""
    groups = [
        {
            "params": [p for p in model.parameters() if p.requires_grad],
            "weight_decay": float(cfg.SOLVER.WEIGHT_DECAY),
            "lr": float(cfg.SOLVER.BASE_LR),
        }
    ]
    wp = [p for p in weighting.parameters() if p.requires_grad]
    if wp:
        groups.append({"params": wp, "weight_decay": 0.0, "lr": float(cfg.SOLVER.BASE_LR) * float(cfg.GALW.LR_FACTOR)})
    return torch.optim.Adam(groups, lr=float(cfg.SOLVER.BASE_LR))


class MancsEngine(Engine):
    """Args:
    datamanager: torchreid ``ImageDataManager`` (PK sampler).
    model: :class:`galw_d2.reid.model.Mancs`.
    weighting: from :func:`build_reid_weighting`.
    optimizer: over the model and the weighting's parameters (:func:`build_optimizer`).
    triplet: the curriculum triplet loss.
    focal_gamma: gamma of the classification focal loss.
    scheduler: optional lr scheduler (stepped once per epoch by torchreid).
    clip_grad_norm: max total gradient norm (0 = no clipping).
    recorder: optional :class:`GradientTrendRecorder` on the shared trunk parameters.
    checkpoint_period: epochs between ``last_checkpoint.pth`` writes (0 = only at the end).
    save_dir: where checkpoints go (the run's output folder).
    progress: show a tqdm bar per epoch.
    use_gpu: torchreid's flag (CUDA when available).
    """

    def __init__(
        self,
        datamanager,
        model: nn.Module,
        weighting: nn.Module,
        optimizer,
        triplet: CurriculumTripletLoss,
        focal_gamma: float = 2.0,
        scheduler=None,
        clip_grad_norm: float = 0.0,
        recorder: Optional[GradientTrendRecorder] = None,
        checkpoint_period: int = 1,
        save_dir: str = "",
        progress: bool = True,
        use_gpu: bool = False,
    ):
        super().__init__(datamanager, use_gpu=use_gpu)
        self.model = model
        self.weighting = weighting
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", model, optimizer, scheduler)
        self.triplet = triplet
        self.focal_gamma = float(focal_gamma)
        self.clip_grad_norm = float(clip_grad_norm)
        self.recorder = recorder
        self.checkpoint_period = int(checkpoint_period)
        self.save_dir = save_dir
        self.progress = progress
        self.num_batches = len(self.train_loader)
        self.max_epoch = 0
        self.batch_idx = 0
        self.last_step: Dict[str, float] = {}
        self.last_metrics: Dict[str, float] = {}
        if self.use_gpu:
            self.model.cuda()
            self.weighting.cuda()

    # ------------------------------------------------------------------ training
    @property
    def iteration(self) -> int:
        return self.epoch * self.num_batches + self.batch_idx

    @property
    def progress_epochs(self) -> float:
        """Training progress t in epochs, fractional within the epoch (the curriculum's t)."""
        return self.epoch + self.batch_idx / max(self.num_batches, 1)

    def compute_losses(self, outputs: Mapping[str, torch.Tensor], pids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The three unweighted Mancs losses of one batch's model outputs (see :mod:`.losses`)."""
        return {
            "loss_rank": self.triplet(outputs["rank"], pids, self.progress_epochs),
            "loss_cls": identity_focal_loss(outputs["cls_logits"], pids, self.focal_gamma),
            "loss_att": attention_bce_loss(outputs["att_logits"], pids),
        }

    def forward_backward(self, data) -> Dict[str, float]:
        """One step: losses, optional gradient probe, weighted total, backward, clip, Adam step.

        Returns:
            {"loss_rank", "loss_cls", "loss_att"}: the unweighted losses as floats (torchreid's meters).
        """
        imgs, pids = self.parse_data_for_train(data)
        if self.use_gpu:
            imgs, pids = imgs.cuda(), pids.cuda()
        outputs = self.model(imgs)
        losses = self.compute_losses(outputs, pids)
        it = self.iteration
        if self.recorder is not None and self.recorder.should_probe(it):
            self.recorder.probe(losses, it)  # before backward: autograd.grad needs the graph
        total, info = self.weighting(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.weighting.backward(total, losses)  # total.backward(), or a method's own gradients
        if self.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.optimizer.step()
        self.weighting.after_step(losses, it)  # e.g. the log-sigma clamp, DWA / FAMO bookkeeping
        out = {k: float(v.detach()) for k, v in losses.items()}
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite Mancs loss at epoch {self.epoch}, batch {self.batch_idx}: {out}")
        self.last_step = {"total": float(total.detach()), **info}
        if self.writer is not None:
            self.writer.add_scalar("Train/total", self.last_step["total"], it)
            for k, v in info.items():
                self.writer.add_scalar("Train/" + k, v, it)
        return out

    def train(self, print_freq: int = 10**9, fixbase_epoch: int = 0, open_layers=None):
        """torchreid's epoch loop behind a tqdm bar; writes ``last_checkpoint.pth`` every
        ``checkpoint_period`` epochs."""
        loader = self.train_loader
        self.train_loader = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            super().train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
        finally:
            self.train_loader = loader
        if self.checkpoint_period > 0 and (self.epoch + 1) % self.checkpoint_period == 0 and self.save_dir:
            self.save_checkpoint(os.path.join(self.save_dir, "last_checkpoint.pth"), self.epoch + 1)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int) -> dict:
        return {
            "epoch": int(epoch),
            "model": self.model.state_dict(),
            "weighting": self.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "recorder": self.recorder.state_dict() if self.recorder is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
        }

    def save_checkpoint(self, path: str, epoch: int) -> str:
        """Model, weighting, optimizer, scheduler, recorder and RNG state after ``epoch`` epochs (atomic)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save(self.state_dict(epoch), path + ".tmp")
        os.replace(path + ".tmp", path)
        return path

    def save_model(self, epoch, rank1, save_dir, is_best=False):
        """torchreid's hook after an evaluation: the full checkpoint as ``model_final.pth`` at the end,
        else ``last_checkpoint.pth``."""
        name = "model_final.pth" if epoch + 1 >= self.max_epoch else "last_checkpoint.pth"
        self.save_checkpoint(os.path.join(save_dir, name), epoch + 1)

    def resume(self, path: str) -> int:
        """Load a checkpoint of :meth:`save_checkpoint`; returns the epoch to start from."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} not found")
        ck = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.weighting.load_state_dict(ck["weighting"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck.get("scheduler") is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        if self.recorder is not None and ck.get("recorder") is not None:
            self.recorder.load_state_dict(ck["recorder"])
        if ck.get("rng"):
            torch.set_rng_state(ck["rng"]["torch"])
            np.random.set_state(ck["rng"]["numpy"])
        return int(ck["epoch"])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _features(self, loader):
        feats, pids, camids = [], [], []
        for data in loader:
            imgs, p, c = self.parse_data_for_eval(data)
            if self.use_gpu:
                imgs = imgs.cuda()
            feats.append(self.extract_features(imgs).cpu())
            pids.extend(p.tolist())
            camids.extend(c.tolist())
        return torch.cat(feats), np.asarray(pids), np.asarray(camids)

    @torch.no_grad()
    def evaluate(
        self,
        dist_metric: str = "euclidean",
        normalize_feature: bool = False,
        ranks: Sequence[int] = (1, 5, 10),
        use_metric_cuhk03: bool = False,
    ) -> Dict[str, Dict[str, float]]:
        """CMC and mAP (percent) of every target dataset with torchreid's metrics.

        Returns:
            {dataset: {"mAP": ..., "rank1": ..., "rank5": ..., ..., "num_query", "num_gallery"}}.
        """
        self.set_model_mode("eval")
        out = {}
        for name, loaders in self.test_loader.items():
            qf, qp, qc = self._features(loaders["query"])
            gf, gp, gc = self._features(loaders["gallery"])
            if normalize_feature:
                qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
            distmat = metrics.compute_distance_matrix(qf, gf, dist_metric).numpy()
            cmc, mAP = metrics.evaluate_rank(
                distmat, qp, gp, qc, gc, max_rank=max(max(ranks), 1), use_metric_cuhk03=use_metric_cuhk03
            )
            res = {"mAP": 100.0 * float(mAP)}
            # a gallery smaller than r: torchreid cuts the CMC at the gallery size, where it is final
            res.update({f"rank{r}": 100.0 * float(cmc[min(r, len(cmc)) - 1]) for r in ranks})
            res.update(num_query=int(len(qp)), num_gallery=int(len(gp)))
            out[name] = res
            if self.writer is not None:
                for k in ["mAP"] + [f"rank{r}" for r in ranks]:
                    self.writer.add_scalar(f"Test/{name}/{k}", res[k], self.epoch)
        self.set_model_mode("train")
        return out

    def test(
        self, dist_metric="euclidean", normalize_feature=False, ranks=(1, 5, 10), use_metric_cuhk03=False, **unused
    ):
        """torchreid's evaluation hook (called by ``run``): :meth:`evaluate`, kept in ``last_metrics``;
        returns rank-1 of the first target (torchreid's convention)."""
        self.last_metrics = self.evaluate(dist_metric, normalize_feature, ranks, use_metric_cuhk03)
        first = next(iter(self.last_metrics.values()))
        return first["rank1"]

    def write_trends(self, path: str, settings: Optional[dict] = None) -> Optional[str]:
        """The recorder's gradient-trend file (GALW Algorithm 1 input), when recording."""
        if self.recorder is None:
            return None
        return self.recorder.write(path, settings)


def write_json(path: str, obj) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)
    return path
