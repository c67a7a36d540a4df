"""FCOS head of AlignPS on the single level P3 (SPEC §1).

Two towers of ``num_convs`` conv3x3 + GroupNorm + ReLU (the last conv of each tower deformable, as
FCOS's ``dcn_on_last_conv``); classification on the cls tower; box distances and centerness on the
regression tower (FCOS's "centerness on reg" trick); distances = ReLU(conv) x stride (FCOS's
``norm_on_bbox``). The input is P3 minus its spatial mean (AlignPS: removes the image-level component
shared by every location, which helps the re-id feature that is read from the same map).
"""

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .deform_conv import DeformConv, make_conv3x3

__all__ = ["FCOSHead"]


class FCOSHead(nn.Module):
    """Args:
    in_channels: channels of P3.
    conv_dim: channels of the tower convs (paper 256).
    num_convs: convs per tower (paper 4).
    norm_groups: GroupNorm groups (paper 32); must divide ``conv_dim``.
    stride: stride of the input map (8).
    deformable_last: make the last conv of each tower deformable (DCNv2 when ``modulated``).
    modulated: DCNv2 for the deformable tower conv (mmdet's FCOS default).
    prior_prob: initial foreground probability of the classifier (FCOS/RetinaNet: 0.01).
    """

    def __init__(
        self,
        in_channels: int,
        conv_dim: int = 256,
        num_convs: int = 4,
        norm_groups: int = 32,
        stride: int = 8,
        deformable_last: bool = True,
        modulated: bool = True,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"FCOSHead: MODEL.ALIGNPS.NUM_CONVS must be >= 1, got {num_convs}")
        if conv_dim % norm_groups != 0:
            raise ValueError(
                f"FCOSHead: MODEL.ALIGNPS.NORM_GROUPS={norm_groups} must divide MODEL.ALIGNPS.HEAD_CONV_DIM={conv_dim}"
            )
        self.stride = stride

        def tower() -> nn.Sequential:
            layers = []
            for i in range(num_convs):
                deform = deformable_last and i == num_convs - 1
                layers += [
                    make_conv3x3(in_channels if i == 0 else conv_dim, conv_dim, deform, modulated, bias=False),
                    nn.GroupNorm(norm_groups, conv_dim),
                    nn.ReLU(inplace=True),
                ]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.bbox_tower = tower()
        self.cls_logits = nn.Conv2d(conv_dim, 1, 3, padding=1)
        self.bbox_pred = nn.Conv2d(conv_dim, 4, 3, padding=1)
        self.centerness = nn.Conv2d(conv_dim, 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, DeformConv):
                nn.init.normal_(m.weight, std=0.01)
            elif isinstance(m, nn.Conv2d) and not any(getattr(d, "offset_conv", None) is m for d in self.modules()):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Focal-loss prior (Lin et al. 2017): start every location at p = prior_prob.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            x: (N, C, H, W) mean-subtracted P3.
        Returns:
            cls_logits (N, 1, H, W), box distances (N, 4, H, W) (l, t, r, b) in pixels (>= 0),
            centerness logits (N, 1, H, W).
        """
        c = self.cls_tower(x)
        r = self.bbox_tower(x)
        return self.cls_logits(c), F.relu(self.bbox_pred(r)) * self.stride, self.centerness(r)
