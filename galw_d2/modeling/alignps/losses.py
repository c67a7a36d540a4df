"""AlignPS re-id losses that need no detectron2: batch-hard triplet with OIM table rows.

(The focal-OIM loss itself is :func:`galw_d2.modeling.oim.oim_loss` with ``focal_gamma=2``.)
"""

import torch
import torch.nn.functional as F

__all__ = ["batch_hard_triplet_loss", "triplet_with_table_rows"]


def batch_hard_triplet_loss(feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) with Euclidean distances, vectorised.

    For anchor i: ``d_ap = max_{j != i, y_j = y_i} ||f_i - f_j||``, ``d_an = min_{y_j != y_i} ||f_i - f_j||``,
    ``l_i = relu(d_ap - d_an + margin)``. Samples with label < 0 (unlabeled) are dropped first.

    Degenerate cases (defined so that nothing crashes and no gradient is invented):
    - an anchor without another sample of its id (no positive) or without a sample of another id
      (no negative) is not an anchor: it is left out of the mean (it can still be someone's
      positive/negative);
    - no valid anchor at all (e.g. < 2 ids) -> 0, still connected to ``feats`` (zero gradient).
    (The original AlignPS code counted the anchor itself as its positive, d_ap = 0, and returned 0 for
    fewer than 2 ids; we exclude the self-pair: an anchor with no real positive gives no pull.)

    Args:
        feats: (N, D) features (AlignPS: L2-normalised).
        labels: (N,) int64 identities; < 0 ignored.
        margin: the triplet margin (paper 0.3).
    Returns:
        scalar: mean of ``l_i`` over valid anchors.
    """
    keep = labels >= 0
    f, y = feats[keep], labels[keep]
    n = f.shape[0]
    if n < 2:
        return feats.sum() * 0.0
    # Squared distances via the Gram matrix, clamped before sqrt (sqrt'(0) is infinite).
    sq = f.pow(2).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (f @ f.t())
    dist = d2.clamp_min(1e-12).sqrt()
    same = y[:, None] == y[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    pos_mask, neg_mask = same & ~eye, ~same
    # Masked max/min: fill invalid entries with values that never win.
    d_ap = torch.where(pos_mask, dist, torch.full_like(dist, -1.0)).max(dim=1).values
    d_an = torch.where(neg_mask, dist, torch.full_like(dist, float("inf"))).min(dim=1).values
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    if not bool(valid.any()):
        return feats.sum() * 0.0
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()


def triplet_with_table_rows(
    feats: torch.Tensor, pids: torch.Tensor, lut: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """AlignPS's triplet: batch-hard over the positive-location features plus the OIM table rows of the
    identities present (SPEC §1), so a person seen once in the batch still has a positive (its row).

    Table rows are constants (no gradient into the buffer); rows never updated yet (all zeros) are not
    added, as a zero vector is no identity centre.

    Args:
        feats: (N, D) L2-normalised features at positive locations.
        pids: (N,) int64, -1 unlabeled (ignored).
        lut: (K, D) the OIM lookup table.
        margin: triplet margin.
    Returns:
        scalar (see :func:`batch_hard_triplet_loss` for the degenerate cases).
    """
    ids = torch.unique(pids[pids >= 0])
    rows = lut[ids].detach().to(feats.dtype)
    nonzero = rows.norm(dim=1) > 0
    all_feats = torch.cat([feats, rows[nonzero]], dim=0)
    all_ids = torch.cat([pids, ids[nonzero]], dim=0)
    return batch_hard_triplet_loss(all_feats, all_ids, margin)
