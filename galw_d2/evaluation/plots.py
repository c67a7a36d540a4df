"""Figures of the paper: mAP vs gallery size (Fig. 4) and top-k search results (Fig. 5). matplotlib, Agg."""

import os
from typing import Callable, Dict, Mapping, Sequence, Union

import numpy as np
from PIL import Image

from .search import score_query

__all__ = ["plot_map_vs_gallery_size", "plot_topk_search"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_map_vs_gallery_size(curves: Mapping[str, Mapping[int, float]], path: str, title: str = "CUHK-SYSU") -> str:
    """One line per method: mAP (fractions, plotted in %) against the gallery size (log x axis).

    Args:
        curves: ``{label: {gallery_size: mAP}}``; sizes <= 0 (the full set) are left out of the line.
        path: output image (png/pdf).
    """
    if not curves:
        raise ValueError("plot_map_vs_gallery_size: no curves to plot")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, pts in curves.items():
        xs = sorted(int(g) for g in pts if int(g) > 0)
        if not xs:
            raise ValueError(f"plot_map_vs_gallery_size: curve {label!r} has no positive gallery size")
        ax.plot(xs, [100.0 * pts[x] for x in xs], marker="o", label=label)
    ax.set_xscale("log")
    allx = sorted({int(g) for pts in curves.values() for g in pts if int(g) > 0})
    ax.set_xticks(allx)
    ax.set_xticklabels([str(x) for x in allx])
    ax.set_xlabel("gallery size")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _crop(img: np.ndarray, box) -> np.ndarray:
    h, w = img.shape[:2]
    x1, y1, x2, y2 = [int(round(v)) for v in np.asarray(box, np.float64)]
    x1, y1 = max(0, min(x1, w - 1)), max(0, min(y1, h - 1))
    x2, y2 = max(x1 + 1, min(x2, w)), max(y1 + 1, min(y2, h))
    return img[y1:y2, x1:x2]


def plot_topk_search(
    protocol,
    gallery: Mapping[str, Mapping[str, np.ndarray]],
    query_feats: np.ndarray,
    query_indices: Sequence[int],
    image_path: Union[str, Callable[[str], str]],
    path: str,
    k: int = 5,
    det_thresh: float = 0.5,
) -> str:
    """A row per query: the query crop, then its k most similar gallery detections, framed green when
    correct (the true positive of that image) and red otherwise, titled with the similarity.

    Args:
        protocol, gallery, query_feats, det_thresh: as :func:`~galw_d2.evaluation.search.evaluate_search`.
        query_indices: protocol query indices to show.
        image_path: image directory, or a function image_name -> file path.
    Returns:
        path.
    """

    if not len(query_indices):
        raise ValueError("plot_topk_search: no queries given")
    resolve = (lambda n: os.path.join(image_path, n)) if isinstance(image_path, str) else image_path
    cache: Dict[str, np.ndarray] = {}

    def load(name):
        if name not in cache:
            p = resolve(name)
            if not os.path.isfile(p):
                raise FileNotFoundError(f"plot_topk_search: image {name} not found at {p}")
            cache[name] = np.asarray(Image.open(p).convert("RGB"))
        return cache[name]

    plt = _plt()
    fig, axes = plt.subplots(
        len(query_indices), k + 1, figsize=(1.6 * (k + 1), 2.6 * len(query_indices)), squeeze=False
    )
    for row, qi in enumerate(query_indices):
        q = protocol.queries[qi]
        r, table = score_query(protocol, gallery, query_feats, qi, det_thresh=det_thresh)
        ax = axes[row, 0]
        ax.imshow(_crop(load(q.image), q.box))
        ax.set_title(f"query {qi}\nAP {100 * r.ap:.1f}%", fontsize=8)
        for j in range(k):
            ax = axes[row, j + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r.rows):
                ax.axis("off")
                continue
            det = r.rows[j]
            name = table.names[table.image[det]]
            ax.imshow(_crop(load(name), table.boxes[det]))
            color = "limegreen" if r.labels[j] else "red"
            for s in ax.spines.values():
                s.set_edgecolor(color)
                s.set_linewidth(4)
            ax.set_title(f"{j + 1}: {r.sims[j]:.2f}", fontsize=8, color=color)
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
