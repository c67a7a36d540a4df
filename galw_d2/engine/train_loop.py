"""``GALWStep``: the training step of GALW, a detectron2 ``SimpleTrainer`` subclass.

detectron2's answer to "a different training step" is a ``SimpleTrainer`` subclass installed as the
``DefaultTrainer``'s ``_trainer`` (as ``AMPTrainer`` is). One iteration here:

1. ``data = next(data iterator)``; forward of the :class:`~galw_d2.engine.galw_model.GALWModel`
   (under ``torch.autocast`` with AMP): ``{"losses": unweighted task losses, "total", "info"}``;
2. every loss and the total must be finite, and their unweighted sum within ``divergence_ratio`` x
   its value at the first iteration (at least 1), else ``FloatingPointError`` naming the loss and the
   iteration (an exception of the forward itself, e.g. a box assertion on NaN predictions, is
   reported as divergence when a weight or buffer is non-finite);
3. on probe iterations, the gradient-trend recorder differentiates each task's probe loss
   (``GALW.RECORD.PROBE_LOSS``: raw or weighted) w.r.t. the shared parameters with
   ``torch.autograd.grad(retain_graph=True)`` BEFORE the main backward; ``.grad`` is never touched, so
   the main gradients are bit-identical to an unprobed step;
4. ``zero_grad``; the weighting's ``backward`` (default ``total.backward()``; gradient-aggregation
   methods override it; with a GradScaler the scaled total);
5. ``after_backward`` hooks (upstream detectron2 only, feature-detected); metrics (the unweighted
   losses, as detectron2 logs them, plus the weighting's ``info`` scalars and ``galw/weighted_total``);
6. ``optimizer.step()``; the weighting's ``after_step`` (e.g. the log-sigma clamp); a non-finite
   learned weight, model weight or buffer stops training; deferred OIM-table updates
   (``apply_pending_updates``).
"""

import contextlib
import math
import time
from typing import Callable, Dict, Mapping, Optional

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..galw.recorder import GradientTrendRecorder
from ..galw.weighting import LossWeighting
from ..utils.state import apply_pending_updates
from .galw_model import unwrap_galw

__all__ = ["GALWStep", "PROBE_LOSSES"]

PROBE_LOSSES = ("raw", "weighted")


class GALWStep(SimpleTrainer):
    """The GALW training step (see the module docstring).

    Args:
        model: a ``GALWModel`` (or DDP around one).
        data_loader, optimizer: as for ``SimpleTrainer``.
        recorder: the gradient-trend recorder, or ``None``.
        probe_loss: "raw" (the unweighted task loss) or "weighted" (as it enters the total).
        recording: called each step; the recorder probes only while it returns True (default: always).
        amp_dtype: ``None`` (fp32) or the autocast dtype (``torch.bfloat16`` on CPU, ``torch.float16``
            on CUDA, which also needs ``grad_scaler``).
        grad_scaler: a ``torch.amp.GradScaler`` for fp16, or ``None``.
        divergence_ratio: stop when the sum of the unweighted losses exceeds this many times its
            value at the first iteration, at least 1 (0: off). A diverging run often explodes within
            two or three iterations, so the first value (random initialisation) is the reference.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        recorder: Optional[GradientTrendRecorder] = None,
        probe_loss: str = "raw",
        recording: Optional[Callable[[], bool]] = None,
        amp_dtype: Optional[torch.dtype] = None,
        grad_scaler=None,
        divergence_ratio: float = 0.0,
    ):
        super().__init__(model, data_loader, optimizer)
        if probe_loss not in PROBE_LOSSES:
            raise ValueError(f"GALW.RECORD.PROBE_LOSS: '{probe_loss}', expected one of {PROBE_LOSSES}")
        self.recorder = recorder
        self.probe_loss = probe_loss
        self.recording = recording or (lambda: True)
        self.amp_dtype = amp_dtype
        self.grad_scaler = grad_scaler
        self.divergence_ratio = float(divergence_ratio)
        self.loss_reference = {"value": None}  # the loss sum of the first iteration
        self.diverged = False
        weighting = unwrap_galw(model).weighting
        if grad_scaler is not None and type(weighting).backward is not LossWeighting.backward:
            # a custom backward (gradient aggregation) computes its own gradients from the losses
            raise ValueError(
                f"{type(weighting).__name__} computes its own gradients: fp16 AMP with a GradScaler "
                "is not supported for it (use bfloat16 or fp32)"
            )

    def reset_data_iterator(self) -> None:
        """(Re)create the data iterator now: detectron2 v0.6 keeps it in ``_data_loader_iter`` (made
        in ``__init__``), upstream main creates ``_data_loader_iter_obj`` lazily on the first step."""
        it = iter(self.data_loader)
        if isinstance(getattr(type(self), "_data_loader_iter", None), property):
            self._data_loader_iter_obj = it
        else:
            self._data_loader_iter = it

    # ------------------------------------------------------------------ the step
    def run_step(self):
        assert self.model.training, "[GALWStep] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        try:
            with self._autocast():
                out = self.model(data)
        except Exception as e:
            first_line = str(e).splitlines()[0] if str(e) else ""
            msg = self._nonfinite_state(f"the forward failed ({type(e).__name__}: {first_line})")
            if msg is not None:  # (a failing forward cannot agree with the other ranks: they are in their backward)
                self._diverge(msg, e)
            raise
        losses, total, info = out["losses"], out["total"], out["info"]
        self._stop_if(self._loss_divergence(losses, total))
        weighting = unwrap_galw(self.model).weighting
        if self.recorder is not None and self.recording() and self.recorder.should_probe(self.iter):
            gam = self.recorder.probe(self.probe_losses(losses, weighting), self.iter)
            if comm.is_main_process():
                get_event_storage().put_scalars(**{f"galw/grad/{k}": v for k, v in gam.items()})
        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
        else:
            weighting.backward(total, losses)
        if hasattr(self, "after_backward"):  # upstream detectron2 hook stage; absent in v0.6
            self.after_backward()
        self._write_metrics(losses, data_time)
        if comm.is_main_process():
            storage = get_event_storage()
            storage.put_scalars(**info, smoothing_hint=False)
            storage.put_scalar("galw/weighted_total", float(total.detach()), smoothing_hint=False)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        weighting.after_step(losses, self.iter)
        self._stop_if(self._weighting_divergence(weighting) or self._nonfinite_state("after the optimizer step"))
        apply_pending_updates(self.model)

    def probe_losses(self, losses: Mapping[str, torch.Tensor], weighting) -> Dict[str, torch.Tensor]:
        """The losses the recorder differentiates: raw, or each times its current (constant) weight."""
        if self.probe_loss == "raw":
            return dict(losses)
        w = weighting.effective_weights(losses)
        return {k: v * float(w[k]) for k, v in losses.items()}

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        device = unwrap_galw(self.model).device.type
        return torch.autocast(device_type=device, dtype=self.amp_dtype)

    def _diverge(self, msg: str, cause=None):
        self.diverged = True
        raise FloatingPointError(msg) from cause

    def _stop_if(self, msg: Optional[str], cause=None) -> None:
        """Raise the divergence ``msg`` (None: no divergence here). With several processes every rank
        learns whether any rank diverged (one 1-element all-reduce), so all stop together with the
        diverging rank's message instead of the others waiting forever in the next all-reduce."""
        if comm.get_world_size() > 1:
            flag = torch.tensor([0.0 if msg is None else 1.0], device=unwrap_galw(self.model).device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0:
                msgs = comm.all_gather(msg)
                rank, first = next((r, m) for r, m in enumerate(msgs) if m is not None)
                msg = msg or f"[process {rank}] {first}"
        if msg is not None:
            self._diverge(msg, cause)

    def _nonfinite_state(self, when: str) -> Optional[str]:
        """The divergence message naming the first non-finite weight or floating buffer, or None.

        Runs every step: one device-to-host sync for the whole model (a stacked flag per tensor); the
        tensors are searched by name only when something is non-finite."""
        tensors = [t.detach() for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            return None
        for kind, items in (("weight", self.model.named_parameters()), ("buffer", self.model.named_buffers())):
            for name, t in items:
                if t.is_floating_point() and not torch.isfinite(t.detach()).all():
                    return (
                        f"training diverged at iteration {self.iter}: {when}; model {kind} '{name}' is non-finite. "
                        "Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS; the last checkpoint before this "
                        "iteration is intact."
                    )
        return None

    def _loss_divergence(self, losses: Mapping[str, torch.Tensor], total: torch.Tensor) -> Optional[str]:
        """A non-finite loss or total, or a loss sum above ``divergence_ratio`` x its first value."""
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
        if bad or not torch.isfinite(total.detach()).all():
            what = ", ".join(f"{k} = {v}" for k, v in bad.items()) or f"weighted total = {float(total.detach())}"
            return (
                f"training diverged at iteration {self.iter}: {what} (non-finite). Lower SOLVER.BASE_LR, enable "
                "SOLVER.CLIP_GRADIENTS, or check the inputs; the last checkpoint before this iteration is intact."
            )
        if self.divergence_ratio <= 0:
            return None
        vals = {k: float(v.detach()) for k, v in losses.items()}
        s = sum(vals.values())
        ref = self.loss_reference
        if ref["value"] is None:
            ref["value"] = s
            return None
        if s > self.divergence_ratio * max(ref["value"], 1.0):
            top = max(vals, key=vals.get)
            return (
                f"training diverged at iteration {self.iter}: the sum of the losses is {s:.4g}, more than "
                f"GALW.DIVERGENCE_RATIO = {self.divergence_ratio:g} x its first value "
                f"({ref['value']:.4g}, at least 1); largest: {top} = {vals[top]:.4g}. Lower SOLVER.BASE_LR or "
                "enable SOLVER.CLIP_GRADIENTS; the last checkpoint before this iteration is intact."
            )
        return None

    def _weighting_divergence(self, weighting) -> Optional[str]:
        for name, p in weighting.named_parameters():
            if not torch.isfinite(p.detach()).all():
                vals = [v for v in p.detach().flatten().tolist() if not math.isfinite(v)]
                return (
                    f"training diverged at iteration {self.iter}: learned loss weight '{name}' of "
                    f"{type(weighting).__name__} became non-finite ({vals[:4]}); lower SOLVER.BASE_LR or "
                    "GALW.LR_FACTOR, or set GALW.LOG_SIGMA_CLAMP"
                )
        return None

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        ret["loss_reference"] = dict(self.loss_reference)
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        if "loss_reference" in state_dict:
            self.loss_reference = dict(state_dict["loss_reference"])
