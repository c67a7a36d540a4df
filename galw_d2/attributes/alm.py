"""Attribute Localization Module (ALM; Tang et al., ICCV 2019) and a multi-level ALM head.

One ALM predicts all A attributes from one feature map, with one independent set of parameters per
attribute (the modules are batched over attributes, which is mathematically the same as A separate
modules):

1. SE channel attention: ``g_a = 1 + sigmoid(W2_a relu(W1_a avgpool(x)))`` (residual attention,
   the attended map is ``x * g_a``).
2. Localisation: a linear layer on ``maxpool(x * g_a)`` predicts a box as an affine transform with
   scale and translation only, ``theta_a = [[s_x, 0, t_x], [0, s_y, t_y]]``, ``s = sigmoid(.)``,
   ``t = tanh(.)`` (normalised coordinates of ``F.affine_grid``).
3. The attended map is resampled inside that box (``F.grid_sample``, a ``SAMPLE_SIZE`` square grid,
   zeros outside the map), max-pooled to a C-vector and a linear layer gives one logit.

Because the channel attention is a positive per-channel gain, it commutes with the resampling and
with the max-pool; the implementation samples the raw map once per attribute and applies the gain to
the pooled vector, so memory is N x C x A x S^2 instead of N x A x C x H x W.

:class:`MultiLevelALM` holds one ALM per pyramid level. Training supervises every level
(deep supervision); prediction is the max over levels of the logits (= of the probabilities).
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ALM", "MultiLevelALM", "combine_levels"]


class ALM(nn.Module):
    def __init__(
        self, in_channels: int, num_attributes: int, reduction: int = 16, sample_size: int = 8, init_scale: float = 0.8
    ):
        super().__init__()
        if in_channels <= 0 or num_attributes <= 0:
            raise ValueError(f"ALM needs in_channels > 0 and num_attributes > 0, got {in_channels}, {num_attributes}")
        if sample_size <= 0:
            raise ValueError(f"ALM sample_size must be > 0, got {sample_size}")
        if not 0.0 < init_scale < 1.0:
            raise ValueError(f"ALM init_scale must be in (0, 1), got {init_scale}")
        A, C = num_attributes, in_channels
        R = max(1, C // max(1, reduction))
        self.num_attributes = A
        self.in_channels = C
        self.sample_size = sample_size
        # SE block per attribute.
        self.se_w1 = nn.Parameter(torch.empty(A, C, R))
        self.se_b1 = nn.Parameter(torch.zeros(A, R))
        self.se_w2 = nn.Parameter(torch.empty(A, R, C))
        self.se_b2 = nn.Parameter(torch.zeros(A, C))
        # Box predictor per attribute: (s_x, s_y, t_x, t_y) pre-activations. Zero weights: every box
        # starts centred with scale init_scale.
        self.loc_w = nn.Parameter(torch.zeros(A, C, 4))
        s0 = float(torch.logit(torch.tensor(init_scale)))
        self.loc_b = nn.Parameter(torch.tensor([s0, s0, 0.0, 0.0]).repeat(A, 1))
        # Classifier per attribute.
        self.cls_w = nn.Parameter(torch.empty(A, C))
        self.cls_b = nn.Parameter(torch.zeros(A))
        for w, fan_in in ((self.se_w1, C), (self.se_w2, R), (self.cls_w, C)):
            nn.init.uniform_(w, -(fan_in**-0.5), fan_in**-0.5)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> channel gains (N, A, C) in (1, 2)."""
        s = x.mean(dim=(2, 3))
        h = F.relu(torch.einsum("nc,acr->nar", s, self.se_w1) + self.se_b1)
        return 1.0 + torch.sigmoid(torch.einsum("nar,arc->nac", h, self.se_w2) + self.se_b2)

    def boxes(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """Affine parameters (N, A, 4) = (s_x, s_y, t_x, t_y)."""
        m = x.amax(dim=(2, 3))  # (N, C)
        raw = torch.einsum("nac,ack->nak", gain * m[:, None, :], self.loc_w) + self.loc_b
        return torch.cat([torch.sigmoid(raw[..., :2]), torch.tanh(raw[..., 2:])], dim=-1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) -> (logits (N, A), boxes (N, A, 4) as (s_x, s_y, t_x, t_y))."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ALM expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        N, C = x.shape[:2]
        A, S = self.num_attributes, self.sample_size
        if N == 0:
            return x.new_zeros((0, A)), x.new_zeros((0, A, 4))
        gain = self.attention(x)
        box = self.boxes(x, gain)
        theta = x.new_zeros((N * A, 2, 3))
        flat = box.reshape(N * A, 4)
        theta[:, 0, 0] = flat[:, 0]
        theta[:, 1, 1] = flat[:, 1]
        theta[:, 0, 2] = flat[:, 2]
        theta[:, 1, 2] = flat[:, 3]
        grid = F.affine_grid(theta, [N * A, 1, S, S], align_corners=False)  # (N*A, S, S, 2)
        # All A grids of a sample side by side along the output height: one grid_sample call.
        grid = grid.reshape(N, A * S, S, 2)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        pooled = sampled.reshape(N, C, A, S * S).amax(dim=-1).transpose(1, 2)  # (N, A, C)
        logits = (gain * pooled * self.cls_w).sum(dim=-1) + self.cls_b
        return logits, box


def combine_levels(level_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Test-time prediction: element-wise max over the levels' logits (N, A)."""
    if len(level_logits) == 0:
        raise ValueError("combine_levels needs at least one level")
    return torch.stack(list(level_logits), dim=0).amax(dim=0)


class MultiLevelALM(nn.Module):
    """One :class:`ALM` per input level; ``forward`` returns the list of per-level logits."""

    def __init__(self, in_channels: Sequence[int], num_attributes: int, reduction: int = 16, sample_size: int = 8):
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("MultiLevelALM needs at least one level")
        self.alms = nn.ModuleList([ALM(c, num_attributes, reduction, sample_size) for c in in_channels])
        self.num_attributes = num_attributes

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(feats) != len(self.alms):
            raise ValueError(f"MultiLevelALM has {len(self.alms)} levels, got {len(feats)} feature maps")
        return [alm(f)[0] for alm, f in zip(self.alms, feats)]

    def predict(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Probabilities (N, A): sigmoid of the max over levels."""
        return torch.sigmoid(combine_levels(self(feats)))
