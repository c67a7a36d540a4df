"""Online Instance Matching (OIM) memory and losses (Xiao et al. 2017; focal variant of AlignPS).

The memory holds a lookup table (LUT) with one L2-normalised row per labeled training identity and a
circular queue (CQ) of features of unlabeled persons. Logits of a feature x are ``x @ [LUT; CQ]^T``;
labeled persons are classified against every row, unlabeled persons are not targets.

Updates are deferred (SPEC §1, ``galw_d2.utils.state``): ``forward``-time code calls
:meth:`OIMMemory.queue_update`; :meth:`OIMMemory.apply_pending_updates` runs once after the optimizer
step, gathers the pending features of every rank (so every rank's table stays identical) and applies
them in rank order, sample by sample: ``LUT[y] <- normalise(m * LUT[y] + (1 - m) * x)`` for a labeled
person, push x into the CQ for an unlabeled one. The LUT and CQ are buffers: saved in checkpoints.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OIMMemory", "oim_loss"]


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
    def queue_update(self, feats: torch.Tensor, pids: torch.Tensor) -> None:
        """Remember (feats, pids) for the next :meth:`apply_pending_updates`.

        Args:
            feats: (N, D) features (detached here).
            pids: (N,) int64; >= 0 labeled identity, -1 unlabeled (pushed to the queue); any other
                negative value is ignored (e.g. background).
        """
        if feats.shape[0] != pids.shape[0]:
            raise ValueError(f"queue_update: {feats.shape[0]} features but {pids.shape[0]} pids")
        bad = pids >= self.num_pids
        if bool(bad.any()):
            raise ValueError(f"queue_update: person id {int(pids[bad][0])} >= num_pids={self.num_pids}; "
                             "MODEL.PERSON_SEARCH.NUM_PIDS must match the training set")
        keep = pids >= -1
        self._pending.append((feats[keep].detach().float().cpu(), pids[keep].detach().cpu()))

    @torch.no_grad()
    def apply_pending_updates(self) -> None:
        """Apply the queued updates of every rank, in rank order, then clear the queue."""
        if not self._pending:
            local = (torch.zeros(0, self.feat_dim), torch.zeros(0, dtype=torch.long))
        else:
            local = (torch.cat([f for f, _ in self._pending]), torch.cat([p for _, p in self._pending]))
        self._pending = []
        parts = _all_gather(local)
        feats = torch.cat([f for f, _ in parts]).to(self.lut.device)
        pids = torch.cat([p for _, p in parts]).tolist()
        m = self.momentum
        for x, y in zip(feats, pids):
            if y >= 0:
                row = m * self.lut[y] + (1.0 - m) * x
                self.lut[y] = row / row.norm().clamp_min(1e-12)
            elif self.queue_size > 0:
                i = int(self.cq_ptr)
                self.cq[i] = x
                self.cq_ptr.fill_((i + 1) % self.queue_size)

    def has_pending(self) -> bool:
        return bool(self._pending)


def _all_gather(obj):
    """[obj of rank 0, obj of rank 1, ...] (just [obj] when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    if torch.distributed.get_world_size() == 1:
        return [obj]
    out: List[Optional[object]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def oim_loss(feats: torch.Tensor, pids: torch.Tensor, memory: OIMMemory, scale: float,
             focal_gamma: float = 0.0) -> torch.Tensor:
    """OIM cross-entropy of labeled persons against the memory (optionally focal, AlignPS).

    Args:
        feats: (N, D) L2-normalised embeddings.
        pids: (N,) identities; only those >= 0 are targets.
        memory: the :class:`OIMMemory` (not updated here: call ``queue_update`` separately).
        scale: logit scale (NAE 30, AlignPS 10).
        focal_gamma: 0 = plain cross-entropy; > 0 = ``(1 - p_t)^gamma * CE`` per sample (focal OIM).
    Returns:
        scalar: mean over labeled samples; 0 (still connected to ``feats``) when there is none.
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
    return loss.mean()
