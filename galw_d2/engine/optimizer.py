"""The GALW optimizer: detectron2's SGD parameter groups + a learned-weights group, gradient clipping.

Gradient clipping (``SOLVER.CLIP_GRADIENTS``): detectron2's ``CLIP_TYPE`` "value" / "norm" clip each
parameter tensor separately. ROI-AlignPS (whose recipe the GALW paper follows) clips the *global*
L2 norm over all parameters at 10 (mmcv's ``grad_clip=dict(max_norm=10)``, i.e.
``torch.nn.utils.clip_grad_norm_`` over the whole model); detectron2 has no built-in for that, so
``CLIP_TYPE: "full_model"`` selects :func:`maybe_add_full_model_gradient_clipping`, an optimizer
subclass that clips every parameter group's gradients together right before ``step()`` (the way
detectron2's DETR-style projects do).
"""

from typing import Type

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from .galw_model import unwrap_galw

__all__ = ["maybe_add_full_model_gradient_clipping", "build_galw_optimizer", "FULL_MODEL"]

FULL_MODEL = "full_model"


def maybe_add_full_model_gradient_clipping(cfg, optim: Type[torch.optim.Optimizer]) -> Type[torch.optim.Optimizer]:
    """``optim`` itself, or a subclass whose ``step`` first clips the global gradient norm of all its
    parameters to ``SOLVER.CLIP_GRADIENTS.CLIP_VALUE`` (p-norm ``NORM_TYPE``), when
    ``SOLVER.CLIP_GRADIENTS.ENABLED`` and ``CLIP_TYPE == "full_model"``."""
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not (c.ENABLED and str(c.CLIP_TYPE) == FULL_MODEL):
        return optim
    max_norm, norm_type = float(c.CLIP_VALUE), float(c.NORM_TYPE)
    if not max_norm > 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0 for full-model clipping, got {max_norm}")

    class FullModelGradientClippingOptimizer(optim):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelGradientClipping{optim.__name__}"
    return FullModelGradientClippingOptimizer


def build_galw_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's default SGD for the wrapped model + one group for the learned loss weights
    (no weight decay, lr = SOLVER.BASE_LR x GALW.LR_FACTOR), with the configured gradient clipping."""
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
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED and str(cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE) == FULL_MODEL:
        optim = maybe_add_full_model_gradient_clipping(cfg, torch.optim.SGD)
    else:
        optim = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
    return optim(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
