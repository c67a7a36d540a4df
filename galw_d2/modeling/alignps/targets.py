"""FCOS target assignment on one feature level (AlignPS trains only P3, stride 8).

Pure torch: no detectron2 import, so it is easy to test by hand.

A location is the point ``(j * stride + stride // 2, i * stride + stride // 2)`` of feature cell (i, j)
(the convention of mmdet's FCOS, which AlignPS builds on). With one level there is no regression-range
limit: every GT is a candidate at every location (AlignPS's P3 range is (-1, inf)).
Location p is positive for GT g when (FCOS, Tian et al. 2019, with centre sampling):
  1. p is strictly inside box g, and
  2. p is strictly inside the centre region of g: the square of half-side ``radius * stride`` around
     the box centre, clipped to the box.
A location positive for several GTs takes the one of smallest area (FCOS's ambiguity rule); ties go
to the lower GT index.
"""

from typing import Tuple

import torch

__all__ = ["locations", "fcos_targets", "centerness_targets"]


def locations(height: int, width: int, stride: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Image-plane points of an (height, width) feature map.

    Returns:
        (height * width, 2) (x, y), row-major (the order of ``feature.flatten(2)``).
    """
    xs = torch.arange(width, device=device, dtype=dtype) * stride + stride // 2
    ys = torch.arange(height, device=device, dtype=dtype) * stride + stride // 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def fcos_targets(
    points: torch.Tensor, gt_boxes: torch.Tensor, stride: int, radius: float = 1.5
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Assign every location to at most one GT box.

    Args:
        points: (P, 2) (x, y) locations, e.g. from :func:`locations`.
        gt_boxes: (G, 4) XYXY boxes in the same (network-input) coordinates; G may be 0.
        stride: the level's stride (centre region half-side = ``radius * stride``).
        radius: centre sampling radius in strides (paper: 1.5); ``radius <= 0`` disables centre sampling.
    Returns:
        matched: (P,) int64, index of the assigned GT, -1 = background.
        reg_targets: (P, 4) float (left, top, right, bottom) distances to the assigned box, in pixels
            (zeros for background).
    """
    P, G = points.shape[0], gt_boxes.shape[0]
    if G == 0:
        return (torch.full((P,), -1, dtype=torch.long, device=points.device), points.new_zeros((P, 4)))
    gt_boxes = gt_boxes.to(points.dtype)
    xs, ys = points[:, 0:1], points[:, 1:2]  # (P, 1)
    x0, y0, x1, y1 = gt_boxes.unbind(1)  # (G,)
    ltrb = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)  # (P, G, 4)
    ok = ltrb.min(dim=2).values > 0
    if radius > 0:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        r = radius * stride
        cx0, cy0 = torch.maximum(cx - r, x0), torch.maximum(cy - r, y0)
        cx1, cy1 = torch.minimum(cx + r, x1), torch.minimum(cy + r, y1)
        centre = torch.stack([xs - cx0, ys - cy0, cx1 - xs, cy1 - ys], dim=2)
        ok &= centre.min(dim=2).values > 0
    area = ((x1 - x0) * (y1 - y0))[None].expand(P, G)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, matched = area.min(dim=1)  # min returns the first index on ties
    matched = torch.where(torch.isfinite(best_area), matched, torch.full_like(matched, -1))
    reg = ltrb[torch.arange(P, device=points.device), matched.clamp_min(0)]
    reg = torch.where((matched >= 0)[:, None], reg, torch.zeros_like(reg))
    return matched, reg


def centerness_targets(reg_targets: torch.Tensor) -> torch.Tensor:
    """FCOS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``.

    Args:
        reg_targets: (N, 4) (l, t, r, b) of positive locations (all > 0).
    Returns:
        (N,) in (0, 1].
    """
    lr, tb = reg_targets[:, [0, 2]], reg_targets[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return ratio.clamp_min(0).sqrt()
