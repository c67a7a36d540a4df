"""Re-id head choices of the NAE branch (task t5, ``loss_nae_oim``): plain OIM or OIMNet++'s parts.

``MODEL.NAE.REID_HEAD`` names an entry of :data:`REID_HEAD_REGISTRY`:

- ``oim``: BatchNorm1d in the embedding projectors, OIM loss, LUT momentum m (NAE; the default).
- ``protonorm``: ProtoNorm (OIMNet++ Sec. 3.2, :mod:`galw_d2.modeling.protonorm`) replaces that
  BatchNorm1d; the loss is plain OIM.
- ``loim``: localization-aware OIM (OIMNet++ Sec. 3.3): each positive proposal i gets
  s_i = clamp(IoU_i, LOIM_MIN_IOU, 1 - LOIM_EPS) from its IoU with its matched ground truth; the LUT row
  of its identity is updated with keep factor 1 - s_i instead of m (better aligned proposals move the
  table more), and, with LOIM_WEIGHT_LOSS, its OIM term is weighted by s_i (weighted mean).
- ``oimnet++``: both.

The public OIMNet++ code uses the IoU in the LUT update only; the loss weighting follows the paper's
description ("better-aligned proposals contribute more") and can be switched off with
``MODEL.NAE.LOIM_WEIGHT_LOSS False`` to match the code.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from detectron2.utils.registry import Registry
from torch import nn

from .oim import OIMMemory, oim_loss
from .protonorm import ProtoNorm1d

__all__ = ["REID_HEAD_REGISTRY", "ReIDHead", "build_reid_head", "loim_scores"]

REID_HEAD_REGISTRY = Registry("REID_HEAD")
REID_HEAD_REGISTRY.__doc__ = """Re-id heads of the NAE branch: name -> ``build(cfg) -> ReIDHead``."""


def loim_scores(ious: torch.Tensor, min_iou: float, eps: float) -> torch.Tensor:
    """LOIM localisation scores s_i = clamp(IoU_i, min_iou, 1 - eps).

    The upper clamp keeps a ground-truth box (IoU 1) from replacing its LUT row outright; the lower one
    bounds the smallest update (the public code: min 0.7, eps 0.1 in its released configs).

    Args:
        ious: (N,) IoU of each positive proposal with its matched ground truth.
    Returns:
        (N,) scores in [min_iou, 1 - eps].
    """
    if not 0.0 <= min_iou <= 1.0 - eps <= 1.0:
        raise ValueError(
            f"LOIM: need 0 <= MODEL.NAE.LOIM_MIN_IOU <= 1 - MODEL.NAE.LOIM_EPS <= 1, got min_iou={min_iou}, eps={eps}"
        )
    return ious.clamp(min=min_iou, max=1.0 - eps)


@dataclass(frozen=True)
class ReIDHead:
    """One re-id head choice: which normalisation the embedding projectors use and how the OIM loss
    and table update treat positives.

    Attributes:
        name: the registry name.
        protonorm: ProtoNorm instead of BatchNorm1d in the projectors.
        loim: localization-aware OIM.
        protonorm_momentum: EMA factor of ProtoNorm's running statistics.
        loim_min_iou, loim_eps: the clamp of :func:`loim_scores`.
        loim_weight_loss: weight each OIM term by s_i (LOIM only).
    """

    name: str
    protonorm: bool = False
    loim: bool = False
    protonorm_momentum: float = 0.1
    loim_min_iou: float = 0.7
    loim_eps: float = 0.1
    loim_weight_loss: bool = True

    @classmethod
    def from_config(cls, cfg, name: str, protonorm: bool, loim: bool) -> "ReIDHead":
        nae = cfg.MODEL.NAE
        head = cls(
            name=name,
            protonorm=protonorm,
            loim=loim,
            protonorm_momentum=float(nae.PROTONORM_MOMENTUM),
            loim_min_iou=float(nae.LOIM_MIN_IOU),
            loim_eps=float(nae.LOIM_EPS),
            loim_weight_loss=bool(nae.LOIM_WEIGHT_LOSS),
        )
        if loim:
            loim_scores(torch.zeros(0), head.loim_min_iou, head.loim_eps)  # validates the clamp range
        return head

    def norm_layer(self, dim: int) -> nn.Module:
        """The normalisation after each projector's Linear (dim channels)."""
        return ProtoNorm1d(dim, momentum=self.protonorm_momentum) if self.protonorm else nn.BatchNorm1d(dim)

    def loss_and_queue(
        self, emb: torch.Tensor, pids: torch.Tensor, ious: Optional[torch.Tensor], memory: OIMMemory, scale: float
    ) -> torch.Tensor:
        """The t5 loss of the positive RoIs, and their (deferred) table/queue update.

        Args:
            emb: (P, D) L2-normalised embeddings of the positive (fg) RoIs.
            pids: (P,) their identities (>= 0 labeled, -1 unlabeled).
            ious: (P,) IoU with the matched ground truth (needed by LOIM, else ignored).
            memory: the OIM table + queue.
            scale: OIM logit scale.
        Returns:
            scalar OIM loss (weighted mean for LOIM with loss weighting).
        """
        if not self.loim:
            loss = oim_loss(emb, pids, memory, scale)
            memory.queue_update(emb.detach(), pids)
            return loss
        if ious is None or ious.shape != pids.shape:
            raise ValueError(
                f"ReIDHead {self.name!r}: LOIM needs the IoU of every positive RoI, got "
                f"{None if ious is None else tuple(ious.shape)} for {pids.shape[0]} RoIs"
            )
        s = loim_scores(ious.detach().to(emb.dtype), self.loim_min_iou, self.loim_eps)
        loss = oim_loss(emb, pids, memory, scale, weights=s if self.loim_weight_loss else None)
        memory.queue_update(emb.detach(), pids, keep=1.0 - s)
        return loss


def _register(name: str, protonorm: bool, loim: bool) -> None:
    def build(cfg) -> ReIDHead:
        return ReIDHead.from_config(cfg, name, protonorm, loim)

    # detectron2's Registry keys an object by its __name__; "oimnet++" is not an identifier.
    build.__name__ = name
    build.__doc__ = f"ReIDHead {name!r}: protonorm={protonorm}, loim={loim}."
    REID_HEAD_REGISTRY.register(build)


_register("oim", protonorm=False, loim=False)
_register("protonorm", protonorm=True, loim=False)
_register("loim", protonorm=False, loim=True)
_register("oimnet++", protonorm=True, loim=True)


def build_reid_head(cfg) -> ReIDHead:
    """The :class:`ReIDHead` named by ``cfg.MODEL.NAE.REID_HEAD``."""
    name = str(cfg.MODEL.NAE.REID_HEAD)
    if name not in REID_HEAD_REGISTRY:
        raise ValueError(f"MODEL.NAE.REID_HEAD={name!r}: expected one of {sorted(n for n, _ in REID_HEAD_REGISTRY)}")
    return REID_HEAD_REGISTRY.get(name)(cfg)
