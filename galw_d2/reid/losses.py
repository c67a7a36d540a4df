"""The three Mancs losses (Wang et al. ECCV 2018, Sec. 3.3-3.5). Pure torch (+ fvcore's focal loss).

- :class:`CurriculumTripletLoss` (task "loss_rank"): triplet loss on the rank-branch features with
  curriculum-sampled negatives (:mod:`.curriculum`), margin m = 0.5,
  ``L_rank = 1/(P(K-1)K) * sum [m + D(a, p) - D(a, n)]_+`` over every (anchor, positive) pair of the
  PK batch (the paper's normalisation counts P(K-1)K triplets), D = Euclidean distance.
- :func:`identity_focal_loss` (task "loss_cls"): focal loss (gamma = 2) on per-identity sigmoid
  outputs, summed over identities and averaged over the batch.
- :func:`attention_bce_loss` (task "loss_att"): sigmoid cross entropy of the attention (deep
  supervision) classifier, averaged over the batch and the identities, as the paper's 1/(PKC).

Deviation, on purpose: the paper writes the focal loss with the true identity's term only,
``-(1/PK) sum_i (1 - p_i)^gamma log p_i``, p_i = sigmoid of the true class's logit. With sigmoids that
alone is minimised by raising every logit (nothing pushes the other identities down), so we use the
full per-identity sigmoid focal loss (RetinaNet form, no alpha): the true identity's term above plus
``p_c^gamma log(1 - p_c)`` for every other identity c.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss
from torch import nn

from .curriculum import curriculum_rank_probs

__all__ = ["CurriculumTripletLoss", "identity_focal_loss", "attention_bce_loss", "one_hot_targets"]


def one_hot_targets(pids: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """(B,) int64 identity labels in [0, C) -> (B, C) one-hot targets; a clear error for labels out of range."""
    if pids.numel() and (int(pids.min()) < 0 or int(pids.max()) >= num_classes):
        raise ValueError(
            f"identity labels must be in [0, {num_classes}), got min {int(pids.min())}, "
            f"max {int(pids.max())} (is MODEL num_classes the number of training identities?)"
        )
    return F.one_hot(pids.long(), num_classes).to(dtype)


def identity_focal_loss(logits: torch.Tensor, pids: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Per-identity sigmoid focal loss (Mancs Sec. 3.4, see the module note).

    Args:
        logits: (B, C) classification-branch logits.
        pids: (B,) identity labels in [0, C).
        gamma: focusing parameter (the paper: 2).
    Returns:
        scalar: sum over the C identities, mean over the B samples.
    """
    targets = one_hot_targets(pids, logits.shape[1], logits.dtype)
    loss = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=float(gamma), reduction="none")
    return loss.sum(dim=1).mean()


def attention_bce_loss(logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross entropy of the attention branch (Mancs Sec. 3.5, 1/(PKC) normalisation).

    Args:
        logits: (B, C) attention-branch logits.
        pids: (B,) identity labels in [0, C).
    Returns:
        scalar: mean over the B x C entries.
    """
    targets = one_hot_targets(pids, logits.shape[1], logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="mean")


class CurriculumTripletLoss(nn.Module):
    """Triplet loss with curriculum-sampled negatives (Mancs Sec. 3.3).

    Args:
        margin: m (the paper: 0.5).
        t0, t1, a, b: the curriculum schedule (:func:`.curriculum.curriculum_mu_sigma`), in epochs.
        positives: "all" = every other sample of the anchor's identity (P(K-1)K triplets, the paper's
            normalisation) or "random" = one random positive per anchor.
    """

    def __init__(
        self,
        margin: float = 0.5,
        t0: float = 30.0,
        t1: float = 60.0,
        a: float = 15.0,
        b: float = 0.001,
        positives: str = "all",
    ):
        super().__init__()
        if positives not in ("all", "random"):
            raise ValueError(f"CurriculumTripletLoss: positives must be 'all' or 'random', got {positives!r}")
        self.margin = float(margin)
        self.schedule = dict(t0=float(t0), t1=float(t1), a=float(a), b=float(b))
        curriculum_rank_probs(0.0, 1, **self.schedule)  # validates the schedule now, not at the first step
        self.positives = positives

    def sample_triplets(
        self, dist: torch.Tensor, pids: torch.Tensor, t: float, generator: Optional[torch.Generator] = None
    ):
        """(anchor, positive, negative) index tensors, each (T,), for a batch's distance matrix.

        Args:
            dist: (B, B) pairwise distances (only used detached, to rank the negatives).
            pids: (B,) identity labels.
            t: training progress in epochs.
        """
        d = dist.detach()
        same = pids[:, None] == pids[None, :]
        eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        # hardest (closest) negatives first; non-negatives sorted to the end with +inf
        order = torch.sort(d.masked_fill(~neg_mask, float("inf")), dim=1).indices
        n_neg = neg_mask.sum(1)
        anchors, positives = [], []
        for i in range(len(pids)):
            pos = torch.nonzero(pos_mask[i]).flatten()
            if pos.numel() == 0 or int(n_neg[i]) == 0:
                continue  # no triplet for this anchor (singleton identity or one-identity batch)
            if self.positives == "random":
                pos = pos[torch.randint(pos.numel(), (1,), generator=generator)]
            anchors.append(torch.full_like(pos, i))
            positives.append(pos)
        if not anchors:
            empty = torch.zeros(0, dtype=torch.long, device=pids.device)
            return empty, empty, empty
        a_idx = torch.cat(anchors)
        p_idx = torch.cat(positives)
        n_idx = torch.empty_like(a_idx)
        counts = n_neg[a_idx]
        for n in torch.unique(counts).tolist():  # PK batches: one distinct N_n, so one draw
            sel = torch.nonzero(counts == n).flatten()
            probs = curriculum_rank_probs(t, int(n), **self.schedule).float()
            ranks = torch.multinomial(probs, sel.numel(), replacement=True, generator=generator)
            n_idx[sel] = order[a_idx[sel], ranks.to(order.device)]
        return a_idx, p_idx, n_idx

    def forward(
        self, features: torch.Tensor, pids: torch.Tensor, t: float, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Args:
            features: (B, D) rank-branch features.
            pids: (B,) identity labels.
            t: training progress in epochs (fractional allowed).
        Returns:
            scalar loss (0, still attached to ``features``, when the batch has no triplet).
        """
        dist = torch.cdist(features, features)
        a, p, n = self.sample_triplets(dist, pids, t, generator)
        if a.numel() == 0:
            return features.sum() * 0.0
        return F.relu(self.margin + dist[a, p] - dist[a, n]).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, positives={self.positives}, schedule={self.schedule}"
