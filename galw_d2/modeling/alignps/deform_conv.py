"""Deformable 3x3 convolution (DCNv1 / DCNv2) on top of ``torchvision.ops.deform_conv2d``.

AlignPS uses deformable convs in the AFA neck (laterals and outputs, DCNv1) and as the last conv of
each FCOS tower (DCNv2, as mmdet's ``dcn_on_last_conv``). torchvision's op runs on CPU and GPU; this
module only adds the conv that predicts the sampling offsets (and, for DCNv2, the modulation mask).

Offsets and mask logits come from zero-initialised convs, so a freshly built layer samples the regular
grid: with zero offsets DCNv1 equals a plain conv. For DCNv2 the mask is ``2 * sigmoid(logit)``
(not ``sigmoid``), so zero logits give a mask of exactly 1 and the fresh layer also equals a plain conv
(mmcv's DCNv2 starts at mask 0.5, i.e. half the plain conv; the factor is absorbed by the weights
during training, the plain-conv start is easier to reason about).
"""
import math
from typing import Optional

import torch
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "make_conv3x3"]


class DeformConv(nn.Module):
    """k x k deformable convolution with its own offset (and mask) predictor.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size, stride, padding, dilation: as ``nn.Conv2d`` (square kernels).
        bias: add a learned bias.
        modulated: DCNv2 (offsets + modulation mask) instead of DCNv1 (offsets only).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, bias: bool = True, modulated: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.modulated = modulated
        kk = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Offsets: (dy, dx) per kernel tap; DCNv2 adds one mask logit per tap.
        self.offset_conv = nn.Conv2d(in_channels, (3 if modulated else 2) * kk, kernel_size, stride=stride,
                                     padding=padding, dilation=dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default init
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C_in, H, W). Returns: (N, C_out, H', W')."""
        out = self.offset_conv(x)
        kk = self.kernel_size * self.kernel_size
        mask: Optional[torch.Tensor] = None
        if self.modulated:
            offset, mask = out[:, : 2 * kk], 2.0 * torch.sigmoid(out[:, 2 * kk:])
        else:
            offset = out
        return deform_conv2d(x, offset, self.weight, self.bias, stride=(self.stride, self.stride),
                             padding=(self.padding, self.padding), dilation=(self.dilation, self.dilation),
                             mask=mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, modulated={self.modulated}")


def make_conv3x3(in_channels: int, out_channels: int, deformable: bool, modulated: bool = False,
                 bias: bool = True) -> nn.Module:
    """A 3x3 stride-1 conv: :class:`DeformConv` when ``deformable`` else ``nn.Conv2d`` (tiny CPU configs)."""
    if deformable:
        return DeformConv(in_channels, out_channels, 3, padding=1, bias=bias, modulated=modulated)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
