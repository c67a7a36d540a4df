"""Per-RoI heads of the NAE branch: norm-aware embedding and BN box regression (Chen et al. 2020)."""

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..protonorm import ProtoNorm1d

__all__ = ["NormAwareEmbedding", "BNBoxRegressor"]


class NormAwareEmbedding(nn.Module):
    """Norm-aware embedding (NAE, SPEC §1): the L2 norm decides person vs background, the direction
    is the re-id feature.

    Each pooled feature map (res4: 1024-d, res5: 2048-d for ResNet-50) is projected by Linear + BN1d
    to its share of ``embed_dim`` (128 + 128); the concatenation x has norm r = ||x||. The fg/bg logit
    is BN1d(1)(r) (a learned affine calibration of the norm); the embedding is x / r.

    Args:
        in_channels: channels per input, e.g. ``{"res4": 1024, "res5": 2048}`` (order = concatenation order).
        embed_dim: total embedding size D (split evenly; the last part takes the remainder).
        norm_layer: builds the normalisation after each projector's Linear from its width (NAE:
            BatchNorm1d; OIMNet++: :class:`ProtoNorm1d`, which needs the RoIs' prototype groups in training).
    """

    def __init__(
        self, in_channels: Dict[str, int], embed_dim: int = 256, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm1d
    ):
        super().__init__()
        if embed_dim < len(in_channels):
            raise ValueError(f"NormAwareEmbedding: embed_dim={embed_dim} < {len(in_channels)} inputs")
        self.names = list(in_channels)
        part = embed_dim // len(self.names)
        dims = [part] * (len(self.names) - 1) + [embed_dim - part * (len(self.names) - 1)]
        self.projectors = nn.ModuleDict()
        for name, d in zip(self.names, dims):
            lin = nn.Linear(in_channels[name], d)
            nn.init.normal_(lin.weight, std=0.01)
            nn.init.zeros_(lin.bias)
            self.projectors[name] = nn.Sequential(lin, norm_layer(d))
        self.rescaler = nn.BatchNorm1d(1)
        self.embed_dim = embed_dim

    @property
    def uses_protonorm(self) -> bool:
        return any(isinstance(p[1], ProtoNorm1d) for p in self.projectors.values())

    def _project(self, name: str, x: torch.Tensor, groups: Optional[torch.Tensor]) -> torch.Tensor:
        lin, norm = self.projectors[name]
        x = lin(x)
        return norm(x, groups) if isinstance(norm, ProtoNorm1d) else norm(x)

    def forward(
        self, feats: Dict[str, torch.Tensor], groups: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Args:
            feats: name -> (R, C) pooled features.
            groups: (R,) prototype ids of the RoIs (``prototype_groups``); needed in training with ProtoNorm.
        Returns:
            embeddings (R, D) L2-normalised, logits (R,) fg/bg logit from the norm.
        """
        x = torch.cat([self._project(n, feats[n], groups) for n in self.names], dim=1)
        norms = x.norm(dim=1, keepdim=True)
        emb = x / norms.clamp_min(1e-12)
        return emb, self.rescaler(norms).squeeze(1)


class BNBoxRegressor(nn.Module):
    """Class-agnostic box deltas Linear(C -> 4) + BN1d(4) (NAE / ROI-AlignPS ``...BNBBoxHead``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        lin = nn.Linear(in_channels, 4)
        nn.init.normal_(lin.weight, std=0.01)
        nn.init.zeros_(lin.bias)
        self.net = nn.Sequential(lin, nn.BatchNorm1d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C) -> (R, 4) deltas (dx, dy, dw, dh) in units of the target stds."""
        return self.net(x)


def max_pool_flat(x: torch.Tensor) -> torch.Tensor:
    """(R, C, H, W) -> (R, C) spatial max (NAE pools both res4 and res5 RoI maps by max)."""
    return F.adaptive_max_pool2d(x, 1).flatten(1)
