"""Attribute losses: (weighted) binary cross-entropy with an ignore mask.

Weighting of the ALM paper (Tang et al. 2019, after Li et al. 2015): for attribute j with positive
ratio p_j, a positive target is weighted ``exp(1 - p_j)`` and a negative one ``exp(p_j)`` (rare
positives count more). Targets < 0 are ignored (no label). The loss is the mean over the labeled
entries (0, graph-connected, when there are none).
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["alm_bce_weights", "attribute_bce", "multi_level_bce", "positive_ratio"]


def positive_ratio(targets: torch.Tensor) -> torch.Tensor:
    """Per-attribute positive ratio (A,) over labeled entries (targets >= 0); 0 where none labeled."""
    t = torch.as_tensor(targets, dtype=torch.float32)
    valid = t >= 0
    pos = ((t > 0.5) & valid).sum(0).float()
    return pos / valid.sum(0).clamp(min=1).float()


def alm_bce_weights(targets: torch.Tensor, pos_ratio: torch.Tensor) -> torch.Tensor:
    """Element weights (N, A): exp(1 - p_j) where the target is positive, exp(p_j) where negative.

    Soft targets y in [0, 1] interpolate: y exp(1 - p_j) + (1 - y) exp(p_j)."""
    p = pos_ratio.to(targets).reshape(1, -1)
    y = targets.clamp(0, 1)
    return y * torch.exp(1.0 - p) + (1.0 - y) * torch.exp(p)


def attribute_bce(
    logits: torch.Tensor, targets: torch.Tensor, pos_ratio: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean (weighted) BCE over entries with target >= 0. ``pos_ratio`` given -> ALM weighting."""
    if logits.shape != targets.shape:
        raise ValueError(f"attribute_bce: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    targets = targets.to(logits.dtype)
    valid = targets >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    y = targets.clamp(0, 1)
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if pos_ratio is not None:
        loss = loss * alm_bce_weights(y, pos_ratio)
    return (loss * valid).sum() / valid.sum()


def multi_level_bce(
    level_logits: Sequence[torch.Tensor], targets: torch.Tensor, pos_ratio: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Deep supervision: mean over the levels of :func:`attribute_bce`."""
    if len(level_logits) == 0:
        raise ValueError("multi_level_bce needs at least one level")
    return sum(attribute_bce(l, targets, pos_ratio) for l in level_logits) / len(level_logits)
