"""``GALWTrainer``: detectron2's DefaultTrainer with GALW loss weighting and gradient-trend recording.

Works with ANY detectron2 model whose training forward returns a dict of scalar losses. It only
builds things, the way detectron2 projects subclass ``DefaultTrainer``:

- :meth:`GALWTrainer.build_model`: the user's model wrapped with the loss weighting of
  ``GALW.STRATEGY`` into a :class:`~galw_d2.engine.galw_model.GALWModel`;
- :meth:`GALWTrainer.build_optimizer`: :func:`~galw_d2.engine.optimizer.build_galw_optimizer` (learned
  weights in their own group, no weight decay; full-model gradient clipping on request);
- the step: a :class:`~galw_d2.engine.train_loop.GALWStep` installed as ``self._trainer``, the
  ``SimpleTrainer`` role (as detectron2's ``AMPTrainer``), with the recorder and AMP settings;
- :meth:`GALWTrainer.build_hooks`: detectron2's hooks + the trends writer + online regrouping.

``__init__`` follows ``DefaultTrainer.__init__`` step by step (``TrainerBase.__init__`` is called
directly) because two of its choices differ: the step class, and DDP on CPU (detectron2's
``create_ddp_model`` passes ``device_ids=[local_rank]``, which DDP rejects for CPU modules; we pass
``device_ids=None`` there, so multi-process gloo training runs on CPU too).

Checkpoints: v0.6 DefaultTrainer does not save the optimizer (upstream does, under ``_trainer``);
:meth:`GALWTrainer.state_dict` always saves ``_trainer`` (optimizer, grad scaler) and ``galw``
(recorder sums, online-regroup state), so resume restores sigma (model state), its momentum, the
recorder and the iteration. A checkpoint without ``_trainer`` loads with a warning.

Exact resume (a resumed run computes bit for bit what the uninterrupted run would have): the
checkpoint also holds the main process' RNG states (``rng``: torch, NumPy, ``random``), and
:meth:`GALWTrainer.resume_or_load` positions the data stream at ``start_iter`` when the training
loader's ``batch_sampler`` can skip (``set_start``, e.g.
:class:`galw_d2.data.samplers.ResumableBatchSampler`), then (re)creates the data iterator without
consuming the training RNG (detectron2 v0.6 creates it in ``SimpleTrainer.__init__``, upstream main
lazily on the first step: both behave the same here). Other loaders restart their stream from the
beginning on resume (a warning says so).

Checkpoints are written atomically and verified on resume (:class:`~galw_d2.engine.checkpoint.SafeCheckpointer`).
A non-resumed run into an ``OUTPUT_DIR`` holding an earlier run's checkpoints is refused unless
``GALW.OVERWRITE_OUTPUT`` (see :meth:`GALWTrainer.resume_or_load`).
"""

import logging
import os
import random
import re
import weakref
from typing import List, Optional

import numpy as np
import torch
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from ..data.catalog import epoch_iters_from_cfg
from ..galw.recorder import GradientTrendRecorder
from ..galw.weighting import build_loss_weighting
from .checkpoint import SafeCheckpointer, checkpoint_files, checkpoint_problem
from .galw_model import GALWModel, unwrap_galw
from .hooks import OnlineRegroup, TrendsWriter
from .optimizer import build_galw_optimizer
from .train_loop import GALWStep

__all__ = [
    "GALWTrainer",
    "build_recorder",
    "select_shared_parameters",
    "epoch_iters_from_cfg",
    "amp_settings",
    "bind_shared_parameters",
    "get_rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


def select_shared_parameters(model: nn.Module, patterns) -> List:
    """``(name, param)`` of trainable parameters whose name matches any regex of ``patterns``."""
    regs = [re.compile(p) for p in patterns]
    out = [(n, p) for n, p in model.named_parameters() if p.requires_grad and any(r.search(n) for r in regs)]
    if not out:
        sample = [n for n, _ in model.named_parameters()][:8]
        raise ValueError(
            f"GALW.RECORD.SHARED_PARAMS {list(patterns)} match no trainable parameter of "
            f"{type(model).__name__} (names look like {sample})"
        )
    return out


def build_recorder(cfg, model: nn.Module) -> Optional[GradientTrendRecorder]:
    """The gradient-trend recorder of ``cfg.GALW.RECORD`` over ``model``'s shared parameters, or None
    when neither recording nor online regrouping is on."""
    if not (cfg.GALW.RECORD.ENABLED or cfg.GALW.ONLINE_REGROUP.ENABLED):
        return None
    if cfg.GALW.ONLINE_REGROUP.ENABLED and cfg.GALW.ONLINE_REGROUP.WARMUP_EPOCHS < 2:
        raise ValueError("GALW.ONLINE_REGROUP.WARMUP_EPOCHS must be >= 2 (a slope needs two epochs)")
    shared = select_shared_parameters(model, cfg.GALW.RECORD.SHARED_PARAMS)
    rec = GradientTrendRecorder(shared, cfg.GALW.RECORD.PERIOD, epoch_iters_from_cfg(cfg))
    logger.info(
        f"GALW recorder: {len(shared)} shared tensors, probe every {rec.period} iterations, "
        f"{rec.epoch_iters} iterations per epoch, probe loss '{cfg.GALW.RECORD.PROBE_LOSS}'"
    )
    if rec.period > rec.epoch_iters:
        msg = f"GALW.RECORD.PERIOD ({rec.period}) > iterations per epoch ({rec.epoch_iters}): some epochs get no probe"
        if cfg.GALW.ONLINE_REGROUP.ENABLED:
            raise ValueError(msg + "; online regrouping needs a probe in every warm-up epoch")
        logger.warning(msg + " (null in the trends file)")
    return rec


def bind_shared_parameters(cfg, galw_model: GALWModel) -> None:
    """Hand the shared parameters to a weighting that needs them (GradNorm, gradient aggregation):
    those matched by its ``shared_param_patterns``, else by ``GALW.RECORD.SHARED_PARAMS``. No-op (and no
    pattern check) for the others."""
    weighting = galw_model.weighting
    if not getattr(weighting, "needs_shared_parameters", False):
        return
    patterns = list(weighting.shared_param_patterns) or list(cfg.GALW.RECORD.SHARED_PARAMS)
    shared = select_shared_parameters(galw_model.model, patterns)
    weighting.bind_shared_parameters([p for _, p in shared])
    logger.info(f"{type(weighting).__name__}: {len(shared)} shared parameter tensors ({patterns})")


def amp_settings(cfg, device: torch.device):
    """``(autocast dtype, GradScaler)`` of ``SOLVER.AMP.ENABLED``: fp16 + GradScaler on CUDA, bfloat16
    (no scaler needed) on CPU; ``(None, None)`` when AMP is off."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None, None
    if device.type == "cuda":
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


class GALWTrainer(DefaultTrainer):
    """DefaultTrainer + GALW. Subclass it as you would DefaultTrainer (``build_evaluator``, ...).

    Attributes:
        recorder: the :class:`GradientTrendRecorder` or ``None`` (``GALW.RECORD.ENABLED`` off).
        galw_state: ``{"regrouped_at": iteration or None, "groups": [...]}`` (online regrouping).
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # setup_logger not called for d2
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)  # checkpoints and the trends file go there
        self.galw_state = {"regrouped_at": None, "groups": None}
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self.recorder = build_recorder(cfg, unwrap_galw(model).model)
        bind_shared_parameters(cfg, unwrap_galw(model))
        device = unwrap_galw(model).device
        model = create_ddp_model(
            model, broadcast_buffers=False, **({"device_ids": None} if device.type == "cpu" else {})
        )
        amp_dtype, scaler = amp_settings(cfg, device)
        self._trainer = GALWStep(
            model,
            data_loader,
            optimizer,
            recorder=self.recorder,
            probe_loss=str(cfg.GALW.RECORD.PROBE_LOSS),
            recording=self._recording_now,
            amp_dtype=amp_dtype,
            grad_scaler=scaler,
            divergence_ratio=float(cfg.GALW.DIVERGENCE_RATIO),
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        return GALWModel(model, build_loss_weighting(cfg)).to(torch.device(cfg.MODEL.DEVICE))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_galw_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's ``test`` with the RNG states restored afterwards: an evaluation during
        training (``TEST.EVAL_PERIOD``) draws from the torch RNG (the test loader's seed), which would
        make the training after it differ from a run resumed from the checkpoint of that iteration."""
        state = get_rng_state()
        try:
            return super().test(cfg, model, evaluators)
        finally:
            set_rng_state(state)

    def build_hooks(self):
        ret = super().build_hooks()
        ret.append(TrendsWriter())
        if self.cfg.GALW.ONLINE_REGROUP.ENABLED:
            ret.append(OnlineRegroup())
        return ret

    def _recording_now(self) -> bool:
        if self.cfg.GALW.RECORD.ENABLED:
            return True
        # online regrouping alone: record only during the warm-up window
        return self.galw_state["regrouped_at"] is None

    # ------------------------------------------------------------------ trends / state
    def trends_path(self) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, self.cfg.GALW.RECORD.OUTPUT)

    def write_trends(self, path: Optional[str] = None) -> Optional[str]:
        """Write the recorder's trends JSON (main process); returns the path or None."""
        if self.recorder is None or not comm.is_main_process():
            return None
        settings = {
            "meta_architecture": self.cfg.MODEL.META_ARCHITECTURE,
            "strategy": self.cfg.GALW.STRATEGY,
            "probe_loss": str(self.cfg.GALW.RECORD.PROBE_LOSS),
            "iterations": int(self.storage.iter) + 1 if hasattr(self, "storage") else None,
            "datasets": list(self.cfg.DATASETS.TRAIN),
            "online_regroup": self.galw_state.get("regrouped_at"),
        }
        if self.cfg.GALW.STRATEGY == "fixed":
            settings["fixed_preset"] = str(self.cfg.GALW.FIXED.PRESET)
        return self.recorder.write(path or self.trends_path(), settings)

    def state_dict(self):
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        ret["galw"] = {
            "recorder": self.recorder.state_dict() if self.recorder is not None else None,
            "online": dict(self.galw_state),
        }
        ret["rng"] = get_rng_state()
        return ret

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        galw = state_dict.pop("galw", None)
        trainer_state = state_dict.pop("_trainer", None)
        rng = state_dict.pop("rng", None)
        TrainerBase.load_state_dict(self, state_dict)
        if trainer_state is not None:
            self._trainer.load_state_dict(trainer_state)
        else:
            logger.warning("checkpoint has no '_trainer' state (optimizer momentum): resuming with a fresh optimizer")
        if galw:
            if galw.get("recorder") is not None and self.recorder is not None:
                self.recorder.load_state_dict(galw["recorder"])
            self.galw_state = dict(galw.get("online") or self.galw_state)
        if rng is not None and comm.get_world_size() == 1:
            set_rng_state(rng)
        elif rng is not None:
            # only rank 0 writes checkpoints: the other ranks' RNG states are not in the file
            logger.warning(
                "resume with several processes: the model's random choices (e.g. RoI sampling) are not "
                "restored (data order, augmentations, weights and optimizer are)"
            )
        else:
            logger.warning(
                "checkpoint has no 'rng' state: random choices after resume (e.g. RoI sampling) differ "
                "from the uninterrupted run"
            )

    def after_train(self):
        """detectron2's ``after_train``, except that after a divergence no hook writes a checkpoint or
        evaluates (a NaN ``model_final.pth`` would otherwise be saved when the last iteration diverged)."""
        if not getattr(self._trainer, "diverged", False):
            return super().after_train()
        from detectron2.engine import hooks as d2hooks

        self.storage.iter = self.iter
        for h in self._hooks:
            if not isinstance(h, (d2hooks.PeriodicCheckpointer, d2hooks.EvalHook, d2hooks.BestCheckpointer)):
                h.after_train()

    # ------------------------------------------------------------------ resume / output folder
    def resume_or_load(self, resume: bool = True):
        """detectron2's ``resume_or_load`` + the output-folder check, exact data-stream positioning and
        a re-written ``model_final.pth`` when a finished run's final file was lost.

        ``resume=False`` into an ``OUTPUT_DIR`` that holds checkpoints of an earlier run raises
        ``FileExistsError`` unless ``cfg.GALW.OVERWRITE_OUTPUT`` (then its checkpoints and
        ``last_checkpoint`` are deleted first, with a warning).
        """
        if not resume:
            self._claim_output_dir()
        super().resume_or_load(resume=resume)
        self._position_data_stream(self.start_iter)
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        if (
            resume
            and self.start_iter >= self.max_iter
            and comm.is_main_process()
            and self.cfg.OUTPUT_DIR
            and checkpoint_problem(final)[0] is not None
        ):
            logger.warning(
                f"resume: the run had finished but {final} is missing or damaged; writing it again "
                "from the last intact checkpoint"
            )
            self.checkpointer.save("model_final", iteration=self.start_iter - 1)

    def _claim_output_dir(self) -> None:
        out = self.cfg.OUTPUT_DIR
        if not out or "://" in out:
            return
        earlier = checkpoint_files(out)
        tag = os.path.join(out, "last_checkpoint")
        if os.path.exists(tag):
            earlier.append(tag)
        if not earlier:
            return
        names = [os.path.basename(p) for p in earlier]
        if not self.cfg.GALW.OVERWRITE_OUTPUT:
            raise FileExistsError(
                f"OUTPUT_DIR {out} holds checkpoints of an earlier run ({', '.join(names)}"
                "): pass --resume to continue it, choose another OUTPUT_DIR, or set GALW.OVERWRITE_OUTPUT True to "
                "replace it"
            )
        comm.synchronize()
        if comm.is_main_process():
            logger.warning(f"GALW.OVERWRITE_OUTPUT: deleting the earlier run's {names} in {out}")
            for p in earlier:
                os.remove(p)
        comm.synchronize()

    def _position_data_stream(self, start_iter: int) -> None:
        """Skip the data stream to batch ``start_iter`` (resumable loaders) and create the data
        iterator now, with the torch RNG left as it was."""
        sampler = getattr(self.data_loader, "batch_sampler", None)
        if hasattr(sampler, "set_start"):
            sampler.set_start(start_iter)
        elif start_iter > 0:
            logger.warning(
                f"resume at iteration {start_iter}: the training loader ({type(self.data_loader).__name__}) "
                "cannot skip, its data stream restarts from the beginning (resume is not exact); "
                "use galw_d2.data.samplers.build_resumable_train_loader"
            )
        with torch.random.fork_rng(devices=[]):
            self._trainer.reset_data_iterator()


def get_rng_state() -> dict:
    """The RNG states of torch (CPU), NumPy and ``random`` as tensors and ints (loadable with
    ``torch.load(weights_only=True)``, as fvcore loads checkpoints)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.as_tensor(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": torch.as_tensor(internal, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore :func:`get_rng_state`'s states."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
