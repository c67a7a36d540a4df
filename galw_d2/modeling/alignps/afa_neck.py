"""AFA neck of AlignPS (Yan et al., CVPR 2021, Sec. 3.2 "Aligned Feature Aggregation").

Differences to an FPN, each for the re-id feature's sake (SPEC §1):
- laterals are 3x3 deformable convs (not 1x1), so each level can align its sampling to the person;
- the top-down path concatenates the upsampled coarser map with the lateral (not a sum), so the fused
  map keeps every level's information in separate channels: level i carries (L - i) x A channels;
- the output conv is a 3x3 deformable conv back to ``out_channels`` (256 in the paper).
Only P3 (stride 8) gets targets and is used at test time, so only P3's output conv exists (the original
also built P4/P5 output convs whose outputs received only background targets; we drop them).
"""

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .deform_conv import make_conv3x3

__all__ = ["AFANeck"]


class AFANeck(nn.Module):
    """Aligned Feature Aggregation on C3..C5, returning P3 only.

    Args:
        in_channels: channels of the inputs, finest first (ResNet-50: [512, 1024, 2048]).
        lateral_channels: A, channels of every lateral conv (paper: 256).
        out_channels: channels of P3 (= the re-id embedding size, paper: 256).
        deformable: deformable laterals and output conv (paper); False = plain 3x3 convs.
        modulated: DCNv2 instead of DCNv1 (the original neck used DCNv1).
    """

    def __init__(
        self,
        in_channels: List[int],
        lateral_channels: int,
        out_channels: int,
        deformable: bool = True,
        modulated: bool = False,
    ):
        super().__init__()
        if len(in_channels) < 1:
            raise ValueError("AFANeck: need at least one input level")
        self.lateral_convs = nn.ModuleList(
            [make_conv3x3(c, lateral_channels, deformable, modulated) for c in in_channels]
        )
        # Concatenation of all L laterals ends at the finest level.
        self.output_conv = make_conv3x3(len(in_channels) * lateral_channels, out_channels, deformable, modulated)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not _is_offset_conv(m, self):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        """Args: feats: [C3 (N, c3, H, W), C4, C5], finest first. Returns: P3 (N, out_channels, H, W)."""
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        fused = laterals[-1]
        for lat in reversed(laterals[:-1]):
            up = F.interpolate(fused, size=lat.shape[-2:], mode="nearest")
            fused = torch.cat([lat, up], dim=1)
        return self.output_conv(fused)


def _is_offset_conv(m: nn.Module, root: nn.Module) -> bool:
    """True for the zero-initialised offset/mask predictors inside DeformConv (keep them at zero)."""
    for sub in root.modules():
        if getattr(sub, "offset_conv", None) is m:
            return True
    return False
