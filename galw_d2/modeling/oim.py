"""Online Instance Matching (OIM) memory and losses (Xiao et al. 2017; focal variant of AlignPS).

The memory holds a lookup table (LUT) with one L2-normalised row per labeled training identity and a
circular queue (CQ) of features of unlabeled persons. Logits of a feature x are ``x @ [LUT; CQ]^T``;
labeled persons are classified against every row, unlabeled persons are not targets.

Updates are deferred (SPEC §1, ``galw_d2.utils.state``): ``forward``-time code calls
:meth:`OIMMemory.queue_update`; :meth:`OIMMemory.apply_pending_updates` runs once after the optimizer
step, gathers the pending features of every rank (so every rank's table stays identical) and applies
them in rank order, sample by sample: ``LUT[y] <- normalise(m * LUT[y] + (1 - m) * x)`` for a labeled
person, push x into the CQ for an unlabeled one. The LUT and CQ are buffers: saved in checkpoints.

Localization-aware OIM (OIMNet++, Lee et al. 2022, Sec. 3.3) changes two things, both optional
arguments here: a per-sample keep factor of the LUT update (``1 - s_i`` with s_i from the proposal's
IoU instead of the fixed m, :meth:`OIMMemory.queue_update`) and per-sample loss weights
(:func:`oim_loss`).
"""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OIMMemory", "oim_loss", "all_gather_objects"]


class OIMMemory(nn.Module):
    """LUT + circular queue of an OIM loss.

    Args:
        num_pids: rows of the lookup table (labeled training identities).
        queue_size: rows of the circular queue of unlabeled features (0 disables it).
        feat_dim: embedding size D.
        momentum: m of the LUT update.
    """

    def __init__(self, num_pids: int, queue_size: int, feat_dim: int, momentum: float = 0.5):
        super().__init__()
        if num_pids <= 0:
            raise ValueError(f"OIMMemory: num_pids must be > 0 (labeled training identities), got {num_pids}")
        if queue_size < 0 or feat_dim <= 0:
            raise ValueError(f"OIMMemory: need queue_size >= 0 and feat_dim > 0, got {queue_size}, {feat_dim}")
        self.num_pids = int(num_pids)
        self.queue_size = int(queue_size)
        self.momentum = float(momentum)
        self.register_buffer("lut", torch.zeros(num_pids, feat_dim))
        self.register_buffer("cq", torch.zeros(queue_size, feat_dim))
        self.register_buffer("cq_ptr", torch.zeros((), dtype=torch.long))
        self._pending: List[tuple] = []

    @property
    def feat_dim(self) -> int:
        return self.lut.shape[1]

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Cosine logits against every memory row.

        Args:
            feats: (N, D) L2-normalised features (gradients flow into them, not into the memory).
        Returns:
            (N, num_pids + queue_size) logits, unscaled.
        """
        memory = torch.cat([self.lut, self.cq], dim=0).detach().to(feats.dtype)
        return feats @ memory.t()

    @torch.no_grad()
    def queue_update(self, feats: torch.Tensor, pids: torch.Tensor, keep: Optional[torch.Tensor] = None) -> None:
        """Remember (feats, pids) for the next :meth:`apply_pending_updates`.

        Args:
            feats: (N, D) features (detached here).
            pids: (N,) int64; >= 0 labeled identity, -1 unlabeled (pushed to the queue); any other
                negative value is ignored (e.g. background).
            keep: optional (N,) keep factors k_i in [0, 1] of the LUT update
                ``LUT[y] <- normalise(k_i * LUT[y] + (1 - k_i) * x_i)``; None = the momentum m for all
                (LOIM passes 1 - s_i, s_i from the proposal's IoU).
        """
        if feats.shape[0] != pids.shape[0]:
            raise ValueError(f"queue_update: {feats.shape[0]} features but {pids.shape[0]} pids")
        if keep is None:
            keep_f = torch.full((pids.shape[0],), self.momentum, dtype=torch.float64)
        else:
            if keep.shape != pids.shape:
                raise ValueError(f"queue_update: keep factors of shape {tuple(keep.shape)} for {pids.shape[0]} pids")
            if bool(((keep < 0) | (keep > 1)).any()):
                raise ValueError(
                    f"queue_update: keep factors must lie in [0, 1], got {keep.min().item()}..{keep.max().item()}"
                )
            keep_f = keep.detach().double().cpu()
        bad = pids >= self.num_pids
        if bool(bad.any()):
            raise ValueError(
                f"queue_update: person id {int(pids[bad][0])} >= num_pids={self.num_pids}; "
                "MODEL.PERSON_SEARCH.NUM_PIDS must match the training set"
            )
        sel = (pids >= -1).cpu()
        self._pending.append((feats.detach().float().cpu()[sel], pids.detach().cpu()[sel], keep_f[sel]))

    @torch.no_grad()
    def apply_pending_updates(self) -> None:
        """Apply the queued updates of every rank, in rank order, then clear the queue."""
        if not self._pending:
            local = (
                torch.zeros(0, self.feat_dim),
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.float64),
            )
        else:
            local = tuple(torch.cat([p[i] for p in self._pending]) for i in range(3))
        self._pending = []
        parts = all_gather_objects(local)
        feats = torch.cat([p[0] for p in parts]).to(self.lut.device)
        pids = torch.cat([p[1] for p in parts]).tolist()
        keeps = torch.cat([p[2] for p in parts]).tolist()
        for x, y, m in zip(feats, pids, keeps):
            if y >= 0:
                row = m * self.lut[y] + (1.0 - m) * x
                self.lut[y] = row / row.norm().clamp_min(1e-12)
            elif self.queue_size > 0:
                i = int(self.cq_ptr)
                self.cq[i] = x
                self.cq_ptr.fill_((i + 1) % self.queue_size)

    def has_pending(self) -> bool:
        return bool(self._pending)


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (just [obj] when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    if torch.distributed.get_world_size() == 1:
        return [obj]
    out: List[Optional[object]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def oim_loss(
    feats: torch.Tensor,
    pids: torch.Tensor,
    memory: OIMMemory,
    scale: float,
    focal_gamma: float = 0.0,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """OIM cross-entropy of labeled persons against the memory (optionally focal, AlignPS).

    Args:
        feats: (N, D) L2-normalised embeddings.
        pids: (N,) identities; only those >= 0 are targets.
        memory: the :class:`OIMMemory` (not updated here: call ``queue_update`` separately).
        scale: logit scale (NAE 30, AlignPS 10).
        focal_gamma: 0 = plain cross-entropy; > 0 = ``(1 - p_t)^gamma * CE`` per sample (focal OIM).
        weights: optional (N,) non-negative per-sample weights (LOIM: from the proposal IoUs); the
            loss is then the weighted mean sum_i w_i l_i / sum_i w_i over labeled samples.
    Returns:
        scalar: (weighted) mean over labeled samples; 0 (still connected to ``feats``) when there is none.
    """
    labeled = pids >= 0
    if not bool(labeled.any()):
        return feats.sum() * 0.0
    logits = scale * memory.logits(feats[labeled])
    logp = F.log_softmax(logits, dim=1)
    logp_t = logp.gather(1, pids[labeled].long().view(-1, 1)).squeeze(1)
    if focal_gamma > 0:
        loss = -((1.0 - logp_t.exp()) ** focal_gamma) * logp_t
    else:
        loss = -logp_t
    if weights is None:
        return loss.mean()
    if weights.shape != pids.shape:
        raise ValueError(f"oim_loss: weights of shape {tuple(weights.shape)} for {pids.shape[0]} samples")
    w = weights[labeled].detach().to(loss.dtype)
    return (w * loss).sum() / w.sum().clamp_min(1e-12)
