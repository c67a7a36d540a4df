"""Statistics for comparing training methods paired by seed (numpy + scipy only).

- :func:`paired_difference`: the mean paired difference of a per-query metric (AP, top-1 hit) between
  two arms over seeds, with two 95% intervals:
  ``ci95`` -- a two-level (hierarchical) percentile bootstrap: resample the seeds with replacement,
  then within every drawn seed resample its queries with replacement, the SAME query indices for both
  arms (the pairing), and take the mean difference; it accounts for seed-to-seed (training) variance
  and for the finite test set. ``ci95_t`` -- Student's t interval over the per-seed differences
  (training variance only, the usual "mean +- t s / sqrt(n)").
- :func:`adjusted_rand_index` (Hubert & Arabie 1985) of two partitions, for the stability of GALW's
  groups across seeds. Written here (a contingency table and binomial sums) rather than pulling
  scikit-learn in for one function.
"""

from math import comb
from typing import Dict, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["paired_difference", "adjusted_rand_index", "groups_to_labels", "mean_std"]


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """``{"mean", "std"}`` (sample std, ddof = 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def paired_difference(a: np.ndarray, b: np.ndarray, num_boot: int = 2000, seed: int = 0) -> Dict:
    """Mean paired difference ``a - b`` of a per-query metric over seeds, with 95% intervals.

    Args:
        a, b: (S, Q) per-seed, per-query values of the two arms (same seeds, same queries, same order).
        num_boot: bootstrap resamples.
        seed: RNG seed of the bootstrap (the interval is reproducible).
    Returns:
        ``{"mean": d, "ci95": [lo, hi] (hierarchical bootstrap), "ci95_t": [lo, hi] (t over seeds),
        "per_seed": [d_s], "num_seeds": S, "num_queries": Q, "num_boot": B}``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(
            f"paired_difference: a and b must be equal non-empty (seeds, queries) arrays, got {a.shape} and {b.shape}"
        )
    d = a - b
    s, q = d.shape
    per_seed = d.mean(axis=1)
    rng = np.random.default_rng(seed)
    boot = np.empty(num_boot)
    for r in range(num_boot):
        rows = rng.integers(0, s, size=s)
        cols = rng.integers(0, q, size=(s, q))
        boot[r] = d[rows[:, None], cols].mean()
    lo, hi = np.percentile(boot, [2.5, 97.5])
    if s > 1:
        half = _st.t.ppf(0.975, s - 1) * per_seed.std(ddof=1) / np.sqrt(s)
        ci_t = [float(per_seed.mean() - half), float(per_seed.mean() + half)]
    else:
        ci_t = [float("nan"), float("nan")]
    return {
        "mean": float(d.mean()),
        "ci95": [float(lo), float(hi)],
        "ci95_t": ci_t,
        "per_seed": [float(x) for x in per_seed],
        "num_seeds": int(s),
        "num_queries": int(q),
        "num_boot": int(num_boot),
    }


def groups_to_labels(groups: Sequence[Sequence[str]], tasks: Sequence[str]) -> np.ndarray:
    """Group index of every task of ``tasks`` (each must be in exactly one group)."""
    where = {t: i for i, g in enumerate(groups) for t in g}
    missing = [t for t in tasks if t not in where]
    if missing:
        raise ValueError(f"groups_to_labels: task(s) {missing} are in no group of {list(map(list, groups))}")
    return np.asarray([where[t] for t in tasks], dtype=np.int64)


def adjusted_rand_index(x: Sequence[int], y: Sequence[int]) -> float:
    """Adjusted Rand index of two labelings of the same items (1 = identical partitions, ~0 = chance).

    Two trivial partitions that agree (both all-in-one or both all-singletons) give 1.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"adjusted_rand_index: two 1-D labelings of equal length, got {x.shape}, {y.shape}")
    n = x.size
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    table = np.zeros((xi.max() + 1, yi.max() + 1), dtype=np.int64)
    np.add.at(table, (xi, yi), 1)
    sum_ij = sum(comb(int(v), 2) for v in table.ravel())
    sum_a = sum(comb(int(v), 2) for v in table.sum(axis=1))
    sum_b = sum(comb(int(v), 2) for v in table.sum(axis=0))
    total = comb(int(n), 2)
    expected = sum_a * sum_b / total if total else 0.0
    max_index = (sum_a + sum_b) / 2
    if max_index == expected:  # both partitions trivial in the same way
        return 1.0
    return float((sum_ij - expected) / (max_index - expected))
