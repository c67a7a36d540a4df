"""``GALWModel``: a detectron2 model + a loss-weighting module, one ``nn.Module``.

Why a wrapper: detectron2 hooks never see the loss dict, yet learned loss weights (log sigma) must be
optimised, synchronised across ranks and checkpointed with the model. Because the weighted total is
computed inside :meth:`GALWModel.forward`, DDP wraps the whole ``GALWModel``: log sigma takes part in
the forward, rank 0's values are broadcast at start and its gradients are all-reduced with the
model's, so every rank holds the same sigma; DetectionCheckpointer saves and loads it.

The state dict is *flat*: the wrapped model's keys unchanged plus ``galw_weighting.<name>`` for the
weighting's parameters and buffers, so plain detectron2 checkpoints load into it and its checkpoints
load into the plain model. ``getattr`` of a dotted model key (``alignps...``) resolves through the
wrapped model, so fvcore's checkpoint code that walks keys as attributes works on the wrapper too.
"""

from typing import Dict

import torch
from torch import nn

__all__ = ["GALWModel", "unwrap_galw", "WEIGHTING_PREFIX"]

WEIGHTING_PREFIX = "galw_weighting."


class GALWModel(nn.Module):
    """``model`` + ``weighting``; the training forward returns ``{"losses", "total", "info"}``.

    Args:
        model: a detectron2 model whose training forward returns a dict of scalar losses.
        weighting: a :class:`galw_d2.galw.weighting.LossWeighting`.

    Eval forward is the wrapped model's.
    """

    def __init__(self, model: nn.Module, weighting: nn.Module):
        super().__init__()
        self.model = model
        self.weighting = weighting
        self._register_state_dict_hook(GALWModel._flatten_state_dict)
        self._register_load_state_dict_pre_hook(self._unflatten_state_dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # flat checkpoint keys name the wrapped model's submodules directly (e.g. "alignps"):
            # fvcore's shape-mismatch handling resolves such keys as attributes of the wrapper.
            modules = self.__dict__.get("_modules", {})
            if "model" in modules and name not in ("model", "weighting"):
                return getattr(modules["model"], name)
            raise

    def forward(self, batched_inputs):
        if not self.training:
            return self.model(batched_inputs)
        losses: Dict[str, torch.Tensor] = self.model(batched_inputs)
        if isinstance(losses, torch.Tensor):
            losses = {"total_loss": losses}
        total, info = self.weighting(losses)
        return {"losses": losses, "total": total, "info": info}

    @staticmethod
    def _flatten_state_dict(module, state_dict, prefix, local_metadata):
        for key in list(state_dict.keys()):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if rest.startswith("model."):
                state_dict[prefix + rest[len("model.") :]] = state_dict.pop(key)
            elif rest.startswith("weighting."):
                state_dict[prefix + WEIGHTING_PREFIX + rest[len("weighting.") :]] = state_dict.pop(key)
        return state_dict

    def _unflatten_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in list(state_dict.keys()):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if rest.startswith(WEIGHTING_PREFIX):
                state_dict[prefix + "weighting." + rest[len(WEIGHTING_PREFIX) :]] = state_dict.pop(key)
            elif not rest.startswith("model.") and not rest.startswith("weighting."):
                state_dict[prefix + "model." + rest] = state_dict.pop(key)


def unwrap_galw(model: nn.Module) -> GALWModel:
    """The ``GALWModel`` inside a DDP wrapper (or the model itself)."""
    m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(m, GALWModel):
        raise TypeError(f"expected a GALWModel (from GALWTrainer.build_model), got {type(m).__name__}")
    return m
