"""``GALWTrainer``: detectron2's DefaultTrainer with GALW loss weighting and gradient-trend recording.

Works with ANY detectron2 model whose training forward returns a dict of scalar losses.

Mechanism (why a model wrapper, not a hook): detectron2 hooks never see the loss dict, yet the
weighting parameters (log sigma) must be optimised, synchronised across ranks and checkpointed with
the model. So :meth:`GALWTrainer.build_model` returns :class:`GALWModel`, an ``nn.Module`` holding
``model`` (the user's model) and ``weighting`` (:mod:`galw_d2.galw.weighting`). Because log sigma is a
parameter of the module that is trained:

- the optimizer sees it (:meth:`GALWTrainer.build_optimizer` puts it in its own group, no weight decay,
  lr = BASE_LR x GALW.LR_FACTOR);
- DDP wraps the whole ``GALWModel``: the weighted total is computed inside ``GALWModel.forward``, so log
  sigma takes part in the forward, rank 0's values are broadcast at start and its gradients are
  all-reduced with the model's -> identical sigma on every rank;
- DetectionCheckpointer saves and loads it. ``GALWModel``'s state dict is *flat*: the wrapped model's
  keys unchanged plus ``galw_weighting.log_sigma`` / ``galw_weighting.assignment``, so plain
  detectron2 checkpoints load into it and its checkpoints load into the plain model.

:meth:`GALWTrainer.run_step` replaces SimpleTrainer's: forward -> (raw loss dict, weighted total) ->
gradient probes of the raw losses with ``torch.autograd.grad(retain_graph=True)`` on probe iterations
(BEFORE the main backward; ``.grad`` is never touched, so the main gradients are bit-identical) ->
``zero_grad`` -> ``total.backward()`` -> hooks' ``after_backward`` (upstream detectron2 only; feature
detected) -> metrics -> ``optimizer.step()`` -> log-sigma clamp -> ``apply_pending_updates(model)``
(OIM tables update only here) -> optional online regroup. Every iteration the raw losses go to
EventStorage as usual and ``galw/sigma/<task>``, ``galw/weight/<task>`` (= 1/(k sigma^2)),
``galw/group<g>/sigma`` and ``galw/weighted_total`` via ``put_scalars`` (not in the loss dict).

Checkpoints: v0.6 DefaultTrainer does not save the optimizer (upstream does, under ``_trainer``);
:meth:`GALWTrainer.state_dict` always saves ``_trainer`` (optimizer state) and ``galw`` (recorder
sums, online-regroup state), so resume restores sigma (model state), its momentum, the recorder and
the iteration.
"""
import contextlib
import logging
import math
import os
import re
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.engine import DefaultTrainer, HookBase
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..galw.grouping import cluster_slopes, compute_slopes, transform_slopes
from ..galw.recorder import GradientTrendRecorder
from ..galw.weighting import FixedWeighting, UncertaintyWeighting, build_weighting_from_lists
from ..tasks import TASKS, task_kind
from ..utils.state import apply_pending_updates

__all__ = ["GALWModel", "GALWTrainer", "build_loss_weighting", "unwrap_galw", "select_shared_parameters",
           "epoch_iters_from_cfg"]

logger = logging.getLogger(__name__)
_WPREFIX = "galw_weighting."


def _pairs(items, what):
    out = {}
    for it in items:
        if "=" not in str(it):
            raise ValueError(f"{what}: entry '{it}' must look like 'loss_name=value'")
        a, b = str(it).split("=", 1)
        out[a.strip()] = b.strip()
    return out


def build_loss_weighting(cfg) -> nn.Module:
    """The weighting module of ``cfg.GALW`` (see galw_d2/config.py ``add_loss_weighting_config``)."""
    g = cfg.GALW
    strategy = str(g.STRATEGY).lower()
    groups = [list(x) for x in g.GROUPS] if len(g.GROUPS) else None
    if strategy == "fixed":
        try:
            w = {k: float(v) for k, v in _pairs(g.FIXED_WEIGHTS, "GALW.FIXED_WEIGHTS").items()}
        except ValueError as e:
            raise ValueError(f"GALW.FIXED_WEIGHTS: {e}") from None
        return FixedWeighting(w)
    if len(g.TASKS):
        tasks = list(g.TASKS)
    elif strategy == "galw" and groups:
        tasks = [t for grp in groups for t in grp]
    else:
        tasks = [t.name for t in TASKS]
    kinds = {t: task_kind(t, g.DEFAULT_KIND) for t in tasks}
    kinds.update({k: v for k, v in _pairs(g.TASK_KINDS, "GALW.TASK_KINDS").items() if k in kinds})
    clamp = tuple(g.LOG_SIGMA_CLAMP) if len(g.LOG_SIGMA_CLAMP) else None
    if clamp is not None and len(clamp) != 2:
        raise ValueError(f"GALW.LOG_SIGMA_CLAMP must be [] or [lo, hi], got {list(g.LOG_SIGMA_CLAMP)}")
    online = bool(g.ONLINE_REGROUP.ENABLED)
    if online and strategy not in ("ulwf", "rulwf"):
        raise ValueError(f"GALW.ONLINE_REGROUP needs GALW.STRATEGY ulwf or rulwf (start per task), got '{strategy}'")
    return build_weighting_from_lists(strategy, tasks, kinds, groups, lam=g.LAMBDA, init_log_sigma=g.INIT_LOG_SIGMA,
                                      clamp=clamp, num_slots=len(tasks) if online else None)


class GALWModel(nn.Module):
    """``model`` + ``weighting``; training forward returns ``{"losses", "total", "info"}``.

    Eval forward is the wrapped model's. State dict keys are flat (see the module docstring).
    """

    def __init__(self, model: nn.Module, weighting: nn.Module):
        super().__init__()
        self.model = model
        self.weighting = weighting
        self._register_state_dict_hook(GALWModel._flatten_state_dict)
        self._register_load_state_dict_pre_hook(self._unflatten_state_dict)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def forward(self, batched_inputs):
        if not self.training:
            return self.model(batched_inputs)
        losses = self.model(batched_inputs)
        if isinstance(losses, torch.Tensor):
            losses = {"total_loss": losses}
        total, info = self.weighting(losses)
        return {"losses": losses, "total": total, "info": info}

    @staticmethod
    def _flatten_state_dict(module, state_dict, prefix, local_metadata):
        for key in list(state_dict.keys()):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if rest.startswith("model."):
                state_dict[prefix + rest[len("model."):]] = state_dict.pop(key)
            elif rest.startswith("weighting."):
                state_dict[prefix + _WPREFIX + rest[len("weighting."):]] = state_dict.pop(key)
        return state_dict

    def _unflatten_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in list(state_dict.keys()):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if rest.startswith(_WPREFIX):
                state_dict[prefix + "weighting." + rest[len(_WPREFIX):]] = state_dict.pop(key)
            elif not rest.startswith("model.") and not rest.startswith("weighting."):
                state_dict[prefix + "model." + rest] = state_dict.pop(key)


def unwrap_galw(model: nn.Module) -> GALWModel:
    """The ``GALWModel`` inside a DDP wrapper (or the model itself)."""
    m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(m, GALWModel):
        raise TypeError(f"expected a GALWModel (from GALWTrainer.build_model), got {type(m).__name__}")
    return m


def select_shared_parameters(model: nn.Module, patterns) -> List:
    """``(name, param)`` of trainable parameters whose name matches any regex of ``patterns``."""
    regs = [re.compile(p) for p in patterns]
    out = [(n, p) for n, p in model.named_parameters() if p.requires_grad and any(r.search(n) for r in regs)]
    if not out:
        sample = [n for n, _ in model.named_parameters()][:8]
        raise ValueError(f"GALW.RECORD.SHARED_PARAMS {list(patterns)} match no trainable parameter of "
                         f"{type(model).__name__} (names look like {sample})")
    return out


def epoch_iters_from_cfg(cfg) -> int:
    """GALW.RECORD.EPOCH_ITERS, or ceil(#images of DATASETS.TRAIN / SOLVER.IMS_PER_BATCH)."""
    if cfg.GALW.RECORD.EPOCH_ITERS > 0:
        return int(cfg.GALW.RECORD.EPOCH_ITERS)
    from detectron2.data import DatasetCatalog

    n = sum(len(DatasetCatalog.get(d)) for d in cfg.DATASETS.TRAIN)
    if n == 0:
        raise ValueError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} is empty; set GALW.RECORD.EPOCH_ITERS")
    return max(1, math.ceil(n / cfg.SOLVER.IMS_PER_BATCH))


@contextlib.contextmanager
def _cpu_ddp_support():
    """During DefaultTrainer.__init__: wrap CPU models in DDP without ``device_ids``.

    detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which DDP rejects for
    CPU modules (multi-process gloo training on CPU); GPU models go through it unchanged.
    """
    import detectron2.engine.defaults as d2defaults

    orig = d2defaults.create_ddp_model

    def create(model, **kwargs):
        if comm.get_world_size() > 1 and "device_ids" not in kwargs and next(model.parameters()).device.type == "cpu":
            return nn.parallel.DistributedDataParallel(model, **{k: v for k, v in kwargs.items()
                                                                 if k != "fp16_compression"})
        return orig(model, **kwargs)

    d2defaults.create_ddp_model = create
    try:
        yield
    finally:
        d2defaults.create_ddp_model = orig


class _TrendsWriter(HookBase):
    def after_train(self):
        self.trainer.write_trends()


class GALWTrainer(DefaultTrainer):
    """DefaultTrainer + GALW. Subclass it as you would DefaultTrainer (``build_evaluator``, ...).

    Attributes:
        recorder: the :class:`GradientTrendRecorder` or ``None`` (``GALW.RECORD.ENABLED`` off).
        galw_state: ``{"regrouped_at": iteration or None, "groups": [...]}`` (online regrouping).
    """

    def __init__(self, cfg):
        if cfg.SOLVER.AMP.ENABLED:
            raise NotImplementedError("GALWTrainer does not support SOLVER.AMP.ENABLED yet")
        self.recorder: Optional[GradientTrendRecorder] = None
        self.galw_state = {"regrouped_at": None, "groups": None}
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)  # checkpoints and the trends file go there
        with _cpu_ddp_support():
            super().__init__(cfg)
        galw = unwrap_galw(self.model)
        if cfg.GALW.RECORD.ENABLED or cfg.GALW.ONLINE_REGROUP.ENABLED:
            shared = select_shared_parameters(galw.model, cfg.GALW.RECORD.SHARED_PARAMS)
            self.recorder = GradientTrendRecorder(shared, cfg.GALW.RECORD.PERIOD, epoch_iters_from_cfg(cfg))
            logger.info(f"GALW recorder: {len(shared)} shared tensors, probe every {cfg.GALW.RECORD.PERIOD} "
                        f"iterations, {self.recorder.epoch_iters} iterations per epoch")
        if cfg.GALW.ONLINE_REGROUP.ENABLED and cfg.GALW.ONLINE_REGROUP.WARMUP_EPOCHS < 2:
            raise ValueError("GALW.ONLINE_REGROUP.WARMUP_EPOCHS must be >= 2 (a slope needs two epochs)")
        if self.recorder is not None and self.recorder.period > self.recorder.epoch_iters:
            msg = (f"GALW.RECORD.PERIOD ({self.recorder.period}) > iterations per epoch "
                   f"({self.recorder.epoch_iters}): some epochs get no probe")
            if cfg.GALW.ONLINE_REGROUP.ENABLED:
                raise ValueError(msg + "; online regrouping needs a probe in every warm-up epoch")
            logger.warning(msg + " (null in the trends file)")

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        return GALWModel(model, build_loss_weighting(cfg)).to(torch.device(cfg.MODEL.DEVICE))

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's default SGD for the wrapped model + a log-sigma group without weight decay."""
        galw = unwrap_galw(model)
        params = get_default_optimizer_params(
            galw.model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        wparams = [p for p in galw.weighting.parameters() if p.requires_grad]
        if wparams:
            params.append({"params": wparams, "lr": cfg.SOLVER.BASE_LR * cfg.GALW.LR_FACTOR, "weight_decay": 0.0})
        return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    def build_hooks(self):
        ret = super().build_hooks()
        ret.append(_TrendsWriter())
        return ret

    # ------------------------------------------------------------------ step
    def run_step(self):
        import time

        t = self._trainer
        t.iter = self.iter
        assert t.model.training, "[GALWTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(t._data_loader_iter)
        data_time = time.perf_counter() - start
        out = t.model(data)
        losses, total, info = out["losses"], out["total"], out["info"]
        if self.recorder is not None and self._recording_now() and self.recorder.should_probe(self.iter):
            gam = self.recorder.probe(losses, self.iter)  # before backward: the graph is still alive
            if comm.is_main_process():
                get_event_storage().put_scalars(**{f"galw/grad/{k}": v for k, v in gam.items()})
        t.optimizer.zero_grad()
        total.backward()
        if hasattr(self, "after_backward"):  # upstream detectron2 hook stage; absent in v0.6
            self.after_backward()
        t._write_metrics(losses, data_time)
        if comm.is_main_process():
            storage = get_event_storage()
            storage.put_scalars(**info, smoothing_hint=False)
            storage.put_scalar("galw/weighted_total", float(total.detach()), smoothing_hint=False)
        t.optimizer.step()
        galw = unwrap_galw(t.model)
        if isinstance(galw.weighting, UncertaintyWeighting):
            galw.weighting.clamp_()
        apply_pending_updates(t.model)
        self._maybe_regroup()

    def _recording_now(self) -> bool:
        if self.cfg.GALW.RECORD.ENABLED:
            return True
        # online regrouping alone: record only during the warm-up window
        return self.galw_state["regrouped_at"] is None

    def _maybe_regroup(self):
        c = self.cfg.GALW
        if not c.ONLINE_REGROUP.ENABLED or self.galw_state["regrouped_at"] is not None:
            return
        warm = int(c.ONLINE_REGROUP.WARMUP_EPOCHS)
        if self.iter + 1 < warm * self.recorder.epoch_iters:
            return
        gm = self.recorder.gradient_magnitude(max_epoch=warm)
        slopes = compute_slopes(gm, c.GROUPING.SLOPE)
        trans = transform_slopes(slopes, c.GROUPING.LOG_BASE)
        groups, report = cluster_slopes(trans, c.GROUPING.NUM_GROUPS, c.GROUPING.LINKAGE, order=self.recorder.tasks)
        weighting = unwrap_galw(self.model).weighting
        rest = [t for t in weighting.tasks if t not in self.recorder.tasks]
        if rest:  # weighted tasks the model never returned: one extra group (they contribute 0 anyway)
            groups = groups + [rest]
        weighting.set_groups(groups, reset=True)
        st = self.optimizer.state
        for p in weighting.parameters():
            st.pop(p, None)  # fresh momentum for the new groups
        self.galw_state = {"regrouped_at": int(self.iter), "groups": groups, "report": report,
                           "slopes": slopes, "transformed": trans}
        logger.info(f"GALW online regroup at iteration {self.iter}: groups {groups} ({report})")

    # ------------------------------------------------------------------ trends / state
    def trends_path(self) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, self.cfg.GALW.RECORD.OUTPUT)

    def write_trends(self, path: Optional[str] = None) -> Optional[str]:
        """Write the recorder's trends JSON (main process); returns the path or None."""
        if self.recorder is None or not comm.is_main_process():
            return None
        settings = {"meta_architecture": self.cfg.MODEL.META_ARCHITECTURE, "strategy": self.cfg.GALW.STRATEGY,
                    "iterations": int(self.storage.iter) + 1 if hasattr(self, "storage") else None, "datasets": list(self.cfg.DATASETS.TRAIN),
                    "online_regroup": self.galw_state.get("regrouped_at")}
        return self.recorder.write(path or self.trends_path(), settings)

    def state_dict(self):
        ret = super().state_dict()
        if "_trainer" not in ret:  # v0.6: DefaultTrainer does not save the optimizer
            ret["_trainer"] = self._trainer.state_dict()
        ret["galw"] = {"recorder": self.recorder.state_dict() if self.recorder is not None else None,
                       "online": dict(self.galw_state)}
        return ret

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        galw = state_dict.pop("galw", None)
        super().load_state_dict(state_dict)
        if "load_state_dict" not in DefaultTrainer.__dict__ and "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        if galw:
            if galw.get("recorder") is not None and self.recorder is not None:
                self.recorder.load_state_dict(galw["recorder"])
            self.galw_state = dict(galw.get("online") or self.galw_state)
