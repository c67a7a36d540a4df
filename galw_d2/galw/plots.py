"""Figures of the grouping step: per-task gradient-magnitude curves (the paper's Fig. 3) and the
dendrogram of the transformed slopes. matplotlib (Agg) + scipy only."""

import os
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["plot_trends", "plot_dendrogram"]


def _short(name: str) -> str:
    from ..tasks import TASKS_BY_NAME

    t = TASKS_BY_NAME.get(name)
    return f"{t.short} {name}" if t is not None else name


def plot_trends(trends: dict, path: str, groups: Optional[Sequence[Sequence[str]]] = None, log_y: bool = True) -> str:
    """Gradient magnitude per epoch, one line per task (Fig. 3); tasks of one group share a line style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = ["-", "--", "-.", ":"]
    gid = {}
    for gi, g in enumerate(groups or []):
        for t in g:
            gid[t] = gi
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trends["tasks"]:
        vals = trends["gradient_magnitude"][t]
        e = [i + 1 for i, v in enumerate(vals) if v is not None]
        v = [float(x) for x in vals if x is not None]
        if not v:
            continue
        label = _short(t) + (f"  [G{gid[t] + 1}]" if t in gid else "")
        ax.plot(e, v, styles[gid.get(t, 0) % len(styles)], marker="o", ms=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient magnitude over shared params (Eq. 6)")
    if log_y and any(x is not None and float(x) > 0 for c in trends["gradient_magnitude"].values() for x in c):
        ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_dendrogram(transformed: Mapping[str, float], path: str, linkage: str = "average") -> Optional[str]:
    """Dendrogram of the hierarchical clustering of ``s*``; ``None`` when there are < 2 tasks."""
    if len(transformed) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram
    from scipy.cluster.hierarchy import linkage as _linkage

    names = list(transformed)
    x = np.asarray([transformed[n] for n in names], dtype=np.float64).reshape(-1, 1)
    z = _linkage(x, method=linkage)
    fig, ax = plt.subplots(figsize=(7, 4))
    dendrogram(
        z, labels=[f"{_short(n)} ({transformed[n]:+.3f})" for n in names], ax=ax, leaf_rotation=70, leaf_font_size=7
    )
    ax.set_ylabel(f"{linkage} linkage distance of s*")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
