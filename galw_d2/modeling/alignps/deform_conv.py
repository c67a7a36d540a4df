"""Deformable 3x3 convolution (DCNv1 / DCNv2) on top of ``torchvision.ops.deform_conv2d``.

AlignPS uses deformable convs in the AFA neck (laterals and outputs, DCNv1) and as the last conv of
each FCOS tower (DCNv2, as mmdet's ``dcn_on_last_conv``). torchvision's op runs on CPU and GPU; this
module only adds the conv that predicts the sampling offsets (and, for DCNv2, the modulation mask).

Offsets and mask logits come from zero-initialised convs, so a freshly built layer samples the regular
grid: with zero offsets DCNv1 equals a plain conv. For DCNv2 the mask is ``2 * sigmoid(logit)``
(not ``sigmoid``), so zero logits give a mask of exactly 1 and the fresh layer also equals a plain conv
(mmcv's DCNv2 starts at mask 0.5, i.e. half the plain conv; the factor is absorbed by the weights
during training, the plain-conv start is easier to reason about).

CPU fast path (:func:`deform_conv2d_cpu_fast`): torchvision's CPU kernel builds its im2col buffer with
scalar code, one channel at a time, which made it most of AlignPS's CPU inference time. The fast path
computes the same function as ``torchvision.ops.deform_conv2d`` from stock ops. Bilinear sampling is
linear in the input, so it transforms first and samples second: one GEMM computes, for each of the
K = k*k taps, ``W_k x`` (the 1x1 conv with that tap's weights) on a zero-bordered copy of the input; then
every output pixel is one ``F.embedding_bag`` bag (mode ``"sum"``, ``per_sample_weights``) over its
K taps x 4 bilinear corners of those C_out-vectors, the DCNv2 mask folded into the corner weights.
Same GEMM FLOPs as im2col at stride 1, but the gather moves C_out- instead of C_in-vectors and no
(K*C_in, H'*W') column buffer is written. The (N, H+2, W+2, K, C_out) table is computed in chunks of
output channels so each chunk stays under :data:`FAST_CPU_CHUNK_BYTES` (one chunk for AlignPS at
1500x900: 9*256 x 115*190 floats = 192 MiB). Every op is differentiable (w.r.t. input, offsets, mask,
weight, bias), so training may use it too; autograd then keeps the table chunks for the backward pass.
It is used for CPU tensors when :data:`FAST_CPU_DEFORM_CONV` is true (or ``DeformConv(fast_cpu=True)``);
CUDA tensors always use torchvision's op (fast there), which also stays the reference in the tests.
Micro-benchmark: ``tools/benchmark_deform_conv.py``.
"""

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "make_conv3x3", "deform_conv2d_cpu_fast", "FAST_CPU_DEFORM_CONV", "FAST_CPU_CHUNK_BYTES"]

# Module-level switch: DeformConv layers built with fast_cpu=None use the fast CPU path when this is true.
FAST_CPU_DEFORM_CONV = True
# Upper bound (bytes) on the fast path's per-chunk table, N*(H+2)*(W+2)*K*co floats for a chunk of co output
# channels (at least one channel per chunk).
FAST_CPU_CHUNK_BYTES = 256 * 2**20

_Pair = Union[int, Tuple[int, int]]


def _pair(v: _Pair) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d_cpu_fast(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _Pair = 1,
    padding: _Pair = 0,
    dilation: _Pair = 1,
    mask: Optional[torch.Tensor] = None,
    max_chunk_bytes: Optional[int] = None,
) -> torch.Tensor:
    """Same function as ``torchvision.ops.deform_conv2d`` (one weight group, one offset group).

    Sampling follows torchvision: tap k = i * kw + j of output pixel (oy, ox) reads the input at
    ``y = oy * stride_h - pad_h + i * dilation_h + offset[:, 2k]`` and
    ``x = ox * stride_w - pad_w + j * dilation_w + offset[:, 2k + 1]`` (offsets are (dy, dx) pairs),
    bilinearly, with zeros outside the image (a sample with y <= -1, y >= H, x <= -1 or x >= W is 0;
    corners outside the image count as 0), scaled by ``mask[:, k]`` when given.

    Args:
        x: (N, C, H, W); offset: (N, 2*K, H', W'); weight: (C_out, C, kh, kw); bias: (C_out,) or None;
        mask: (N, K, H', W') or None; max_chunk_bytes: column-buffer bound per chunk
        (default :data:`FAST_CPU_CHUNK_BYTES`).
    Returns: (N, C_out, H', W').

    Note: the GEMM runs on the whole input grid, so a stride > 1 costs stride**2 times the im2col FLOPs
    (DeformConv in AlignPS only uses stride 1).
    """
    n, c, h, w = x.shape
    c_out, c_w, kh, kw = weight.shape
    kk = kh * kw
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if c_w != c:
        raise ValueError(f"deform_conv2d_cpu_fast: weight has {c_w} input channels, x has {c} (groups unsupported)")
    if tuple(offset.shape) != (n, 2 * kk, ho, wo):
        raise ValueError(
            f"deform_conv2d_cpu_fast: offset shape {tuple(offset.shape)}, expected {(n, 2 * kk, ho, wo)} "
            "(one offset group)"
        )
    if mask is not None and tuple(mask.shape) != (n, kk, ho, wo):
        raise ValueError(f"deform_conv2d_cpu_fast: mask shape {tuple(mask.shape)}, expected {(n, kk, ho, wo)}")
    dev, dt = x.device, x.dtype
    hp, wp = h + 2, w + 2
    # Sample positions of every tap, (N, K, H', W'); offsets are (dy, dx) pairs per tap.
    tap_y = (torch.arange(kh, device=dev) * dh).repeat_interleave(kw).to(dt).view(1, kk, 1, 1)
    tap_x = (torch.arange(kw, device=dev) * dw).repeat(kh).to(dt).view(1, kk, 1, 1)
    off = offset.reshape(n, kk, 2, ho, wo)
    y = off[:, :, 0] + ((torch.arange(ho, device=dev, dtype=dt) * sh - ph).view(1, 1, ho, 1) + tap_y)
    xx = off[:, :, 1] + ((torch.arange(wo, device=dev, dtype=dt) * sw - pw).view(1, 1, 1, wo) + tap_x)
    valid = (y > -1) & (y < h) & (xx > -1) & (xx < w)
    # Top-left corner; clamping only moves the (zero-weighted) invalid samples inside the bordered map.
    y0 = torch.floor(y.detach()).clamp_(-1, h - 1)
    x0 = torch.floor(xx.detach()).clamp_(-1, w - 1)
    ly, lx = y - y0, xx - x0  # fractional parts: the gradients reach the offsets through these
    hy, hx = 1 - ly, 1 - lx
    scale = valid.to(dt) if mask is None else valid.to(dt) * mask
    wts = torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), dim=-1) * scale.unsqueeze(-1)  # (N, K, H', W', 4)
    # Rows of the table below: ((n * hp + y + 1) * wp + x + 1) * K + k holds (W_k x)[n, :, y, x].
    pos = (torch.arange(n, device=dev) * (hp * wp)).view(n, 1, 1, 1) + (y0.long() + 1) * wp + (x0.long() + 1)
    pos = pos * kk + torch.arange(kk, device=dev).view(1, kk, 1, 1)
    idx = torch.stack((pos, pos + kk, pos + wp * kk, pos + (wp + 1) * kk), dim=-1)
    # One bag per output pixel: its K taps x 4 corners.
    idx = idx.permute(0, 2, 3, 1, 4).reshape(n * ho * wo, kk * 4)
    wts = wts.permute(0, 2, 3, 1, 4).reshape(n * ho * wo, kk * 4)
    # Bilinear sampling is linear in the input, so transform first: for every tap k, W_k x (a 1x1 conv
    # with weight[:, :, i, j]) on the zero-bordered input, as one GEMM, then gather and blend C_out-vectors.
    xp = F.pad(x, (1, 1, 1, 1)).reshape(n, c, hp * wp).transpose(1, 2)  # (N, hp*wp, C)
    w_t = weight.permute(1, 2, 3, 0).reshape(c, kk, c_out)  # [c, k, o] = weight[o, c, i, j]
    budget = FAST_CPU_CHUNK_BYTES if max_chunk_bytes is None else max_chunk_bytes
    step = max(1, min(c_out, budget // (n * hp * wp * kk * x.element_size())))  # output channels per chunk
    outs = []
    for o0 in range(0, c_out, step):
        o1 = min(c_out, o0 + step)
        table = torch.matmul(xp, w_t[:, :, o0:o1].reshape(c, kk * (o1 - o0)))  # (N, hp*wp, K*co)
        outs.append(F.embedding_bag(idx, table.reshape(-1, o1 - o0), mode="sum", per_sample_weights=wts))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    out = out.view(n, ho, wo, c_out).permute(0, 3, 1, 2).contiguous()
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class DeformConv(nn.Module):
    """k x k deformable convolution with its own offset (and mask) predictor.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size, stride, padding, dilation: as ``nn.Conv2d`` (square kernels).
        bias: add a learned bias.
        modulated: DCNv2 (offsets + modulation mask) instead of DCNv1 (offsets only).
        fast_cpu: use :func:`deform_conv2d_cpu_fast` for CPU inputs (True), torchvision's op (False), or
            follow the module switch :data:`FAST_CPU_DEFORM_CONV` at call time (None, the default).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        bias: bool = True,
        modulated: bool = False,
        fast_cpu: Optional[bool] = None,
    ):
        super().__init__()
        self.fast_cpu = fast_cpu
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
        self.offset_conv = nn.Conv2d(
            in_channels,
            (3 if modulated else 2) * kk,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=True,
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default init
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C_in, H, W). Returns: (N, C_out, H', W')."""
        out = self.offset_conv(x)
        kk = self.kernel_size * self.kernel_size
        mask: Optional[torch.Tensor] = None
        if self.modulated:
            offset, mask = out[:, : 2 * kk], 2.0 * torch.sigmoid(out[:, 2 * kk :])
        else:
            offset = out
        fast = FAST_CPU_DEFORM_CONV if self.fast_cpu is None else self.fast_cpu
        if fast and x.device.type == "cpu":
            return deform_conv2d_cpu_fast(
                x,
                offset,
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                mask=mask,
            )
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=(self.stride, self.stride),
            padding=(self.padding, self.padding),
            dilation=(self.dilation, self.dilation),
            mask=mask,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, modulated={self.modulated}, fast_cpu={self.fast_cpu}"
        )


def make_conv3x3(
    in_channels: int, out_channels: int, deformable: bool, modulated: bool = False, bias: bool = True
) -> nn.Module:
    """A 3x3 stride-1 conv: :class:`DeformConv` when ``deformable`` else ``nn.Conv2d`` (tiny CPU configs)."""
    if deformable:
        return DeformConv(in_channels, out_channels, 3, padding=1, bias=bias, modulated=modulated)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
