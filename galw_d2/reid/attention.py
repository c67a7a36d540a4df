"""Fully attentional block (FAB) of Mancs (Wang et al. ECCV 2018, Sec. 3.2). Pure torch.

An SE block without the global pooling: two 1x1 convs keep the spatial layout, so the mask attends
to channels *and* positions,

    M = sigmoid(conv1x1(ReLU(conv1x1(F))))      (same shape as F)
    F_out = F * M + F

The attended map ``F * M`` is also returned: the attention branch (deep supervision, Sec. 3.5) pools
and classifies it.
"""

from typing import Tuple

import torch
from torch import nn

__all__ = ["FullyAttentionalBlock"]


class FullyAttentionalBlock(nn.Module):
    """Args:
    channels: C of the input map.
    reduction: channel reduction of the hidden 1x1 conv (as SE's r; hidden = max(C // r, 1)).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"FullyAttentionalBlock: channels ({channels}) and reduction ({reduction}) must be >= 1")
        hidden = max(channels // reduction, 1)
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1)
        self.channels = channels

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the attention mask M in (0, 1), (N, C, H, W)."""
        return torch.sigmoid(self.expand(self.relu(self.reduce(x))))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: (N, C, H, W) feature map F.
        Returns:
            (F * M + F, F * M), both (N, C, H, W).
        """
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"FullyAttentionalBlock: expected (N, {self.channels}, H, W), got {tuple(x.shape)}")
        attended = x * self.mask(x)
        return attended + x, attended
