"""Curriculum sampling of triplet negatives (Mancs, Wang et al. ECCV 2018, Sec. 3.3). Pure torch.

For an anchor with ``N_n`` negatives in the batch, the negatives are sorted from hardest (closest to
the anchor) to easiest, and the chosen negative's rank ``r`` in that list is drawn with

    Pr(r) ∝ N(r; mu, sigma),   mu = [N_n - N_n * t / t0]_+,   sigma = a * b ** ((t - t0) / (t1 - t0))

(t = training epoch; the paper: t0 = 30, t1 = 60, a = 15, b = 0.001). At t = 0 the mean sits at the
easiest end and sigma = a / b is huge (nearly uniform choice: random negatives); mu reaches the hardest
rank 0 at t = t0, where sigma = a; at t = t1 sigma = a * b and the choice is the hardest negative
(OHEM). So training moves from easy to hard triplets.

"∝ N(mu, sigma)" is read as a discrete distribution over the valid ranks 0 .. N_n - 1: the Gaussian
density evaluated at each rank, renormalised (a truncated, discretised Gaussian). Nothing is clamped,
so no probability mass piles up at the ends.
"""

from typing import Tuple

import torch

__all__ = ["curriculum_mu_sigma", "curriculum_rank_probs", "sample_curriculum_ranks", "scale_schedule"]


def curriculum_mu_sigma(t: float, num_negatives: int, t0: float, t1: float, a: float, b: float) -> Tuple[float, float]:
    """(mu, sigma) of the rank distribution at epoch ``t`` (Mancs Sec. 3.3).

    Args:
        t: training progress in epochs (may be fractional: epoch + batch / batches_per_epoch).
        num_negatives: N_n, negatives of the anchor in the batch (>= 1).
        t0, t1: epochs where mu reaches 0 and where sigma reaches a * b (0 < t0 < t1).
        a, b: sigma scale and decay (a > 0, 0 < b).
    Returns:
        (mu, sigma) as floats.
    """
    if not (0 < t0 < t1):
        raise ValueError(f"curriculum: need 0 < T0 < T1, got T0={t0}, T1={t1}")
    if a <= 0 or b <= 0:
        raise ValueError(f"curriculum: need A > 0 and B > 0, got A={a}, B={b}")
    if num_negatives < 1:
        raise ValueError(f"curriculum: an anchor needs at least one negative, got {num_negatives}")
    n = float(num_negatives)
    mu = max(n - n * float(t) / float(t0), 0.0)
    sigma = float(a) * float(b) ** ((float(t) - float(t0)) / (float(t1) - float(t0)))
    return mu, sigma


def curriculum_rank_probs(t: float, num_negatives: int, t0: float, t1: float, a: float, b: float) -> torch.Tensor:
    """Probability of each rank 0 (hardest) .. N_n - 1 (easiest) at epoch ``t``.

    Returns:
        (N_n,) float64 tensor summing to 1.
    """
    mu, sigma = curriculum_mu_sigma(t, num_negatives, t0, t1, a, b)
    r = torch.arange(num_negatives, dtype=torch.float64)
    # log-density, shifted by its max before exp: sigma can be ~1e-2, so raw densities underflow
    logp = -((r - mu) ** 2) / (2.0 * sigma * sigma)
    p = torch.exp(logp - logp.max())
    return p / p.sum()


def sample_curriculum_ranks(
    t: float,
    num_negatives: int,
    num_samples: int,
    t0: float,
    t1: float,
    a: float,
    b: float,
    generator: torch.Generator = None,
) -> torch.Tensor:
    """Draw ``num_samples`` ranks (i.i.d.) from :func:`curriculum_rank_probs`.

    Returns:
        (num_samples,) int64 ranks in [0, N_n).
    """
    p = curriculum_rank_probs(t, num_negatives, t0, t1, a, b)
    return torch.multinomial(p.float(), int(num_samples), replacement=True, generator=generator)


def scale_schedule(t0: float, t1: float, paper_epochs: float, epochs: float) -> Tuple[float, float]:
    """t0, t1 of a shorter schedule: the same fractions of training as the paper's (30/160, 60/160).

    Used by the short CPU configs (documented in docs/reid.md): ``scale_schedule(30, 60, 160, 24)``
    = (4.5, 9.0).
    """
    if paper_epochs <= 0 or epochs <= 0:
        raise ValueError(f"scale_schedule: epochs must be > 0, got {paper_epochs}, {epochs}")
    f = float(epochs) / float(paper_epochs)
    return float(t0) * f, float(t1) * f
