"""The Mancs network (Wang et al. ECCV 2018, Sec. 3.1-3.5) on torchreid's ResNets.

Backbone: a ResNet trunk (torchreid's resnet18/34/50, or a width-reduced one built from torchreid's
residual blocks for CPU configs) whose last block ends in PReLU instead of ReLU (Sec. 4.3). A
:class:`~.attention.FullyAttentionalBlock` follows each stage of ``fab_stages``; three branches share
the trunk:

- rank branch: global average pool + FC -> ``rank`` (B, rank_dim), the test-time descriptor;
- classification branch: the same pooled feature + FC-BN-ReLU + FC -> ``cls_logits`` (B, C);
- attention branch: every FAB's attended map F*M, average-pooled and concatenated, FC ->
  ``att_logits`` (B, C).

In training mode :meth:`Mancs.forward` returns these three in a dict; in eval mode only ``rank``
(torchreid's ``Engine.extract_features`` convention).

:func:`register_mancs_models` adds ``mancs_resnet18`` / ``mancs_resnet34`` / ``mancs_resnet50`` to
torchreid's model factory (``torchreid.reid.models.build_model``); :func:`build_mancs_from_config`
builds the model of a reid config (:mod:`.config`).
"""

import math
from collections import OrderedDict
from typing import Dict, List, Sequence, Union

import torch
from torch import nn
from torchreid.reid import models as tr_models
from torchreid.reid.models.resnet import BasicBlock, Bottleneck

from .attention import FullyAttentionalBlock

__all__ = [
    "Mancs",
    "build_resnet_trunk",
    "build_mancs",
    "build_mancs_from_config",
    "register_mancs_models",
    "STAGES",
    "MANCS_MODEL_NAMES",
]

STAGES = ("layer1", "layer2", "layer3", "layer4")
_TORCHREID_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
MANCS_MODEL_NAMES = tuple(f"mancs_{n}" for n in ("resnet18", "resnet34", "resnet50"))


class _PReLUOutputBlock(nn.Module):
    """A torchreid residual block whose output activation is PReLU (Mancs Sec. 4.3: the last conv's
    ReLU becomes PReLU); the block's inner ReLUs are unchanged."""

    def __init__(self, block: Union[BasicBlock, Bottleneck]):
        super().__init__()
        if not isinstance(block, (BasicBlock, Bottleneck)):
            raise TypeError(f"PReLU output needs a torchreid BasicBlock/Bottleneck, got {type(block).__name__}")
        self.block = block
        out_ch = (block.bn3 if isinstance(block, Bottleneck) else block.bn2).num_features
        self.prelu = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        identity = x if b.downsample is None else b.downsample(x)
        out = b.relu(b.bn1(b.conv1(x)))
        if isinstance(b, Bottleneck):
            out = b.relu(b.bn2(b.conv2(out)))
            out = b.bn3(b.conv3(out))
        else:
            out = b.bn2(b.conv2(out))
        return self.prelu(out + identity)


def _make_stage(block, inplanes: int, out_channels: int, n_blocks: int, stride: int) -> nn.Sequential:
    planes = out_channels // block.expansion
    if planes * block.expansion != out_channels:
        raise ValueError(f"ResNet width {out_channels} is not a multiple of the block expansion {block.expansion}")
    downsample = None
    if stride != 1 or inplanes != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out_channels, planes) for _ in range(1, n_blocks)]
    return nn.Sequential(*layers)


def build_resnet_trunk(
    arch: str = "resnet50", widths: Sequence[int] = (), blocks: Sequence[int] = (), pretrained: bool = False
) -> nn.ModuleDict:
    """ResNet trunk as ``ModuleDict(stem, layer1..layer4)`` and its stage output channels.

    Args:
        arch: torchreid ResNet name; used as is when ``widths`` is empty (``pretrained`` then loads
            torchreid's ImageNet weights), else it only chooses the block type (resnet18/34: basic,
            others: bottleneck).
        widths: output channels of layer1..layer4 of a width-reduced trunk ([] = torchreid's).
        blocks: residual blocks per stage of the width-reduced trunk ([] = those of ``arch``).
        pretrained: load torchreid's ImageNet weights (torchreid trunks only).
    Returns:
        ``ModuleDict`` with ``stem`` (conv-bn-relu-maxpool, stride 4) and ``layer1``..``layer4``; the
        attribute ``stage_channels`` maps stage name -> output channels.
    """
    if arch not in _TORCHREID_RESNETS:
        raise ValueError(f"MODEL.BACKBONE: unknown ResNet {arch!r}; expected one of {_TORCHREID_RESNETS}")
    if not widths:
        net = tr_models.build_model(arch, num_classes=1, loss="softmax", pretrained=pretrained, use_gpu=False)
        trunk = nn.ModuleDict(
            OrderedDict(
                stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), **{s: getattr(net, s) for s in STAGES}
            )
        )
    else:
        if pretrained:
            raise ValueError("MODEL.PRETRAINED needs torchreid's trunk widths (MODEL.RESNET_WIDTHS = [])")
        if len(widths) != 4:
            raise ValueError(f"MODEL.RESNET_WIDTHS needs 4 values (layer1..layer4), got {list(widths)}")
        default_blocks = {
            "resnet18": [2, 2, 2, 2],
            "resnet34": [3, 4, 6, 3],
            "resnet50": [3, 4, 6, 3],
            "resnet101": [3, 4, 23, 3],
            "resnet152": [3, 8, 36, 3],
        }[arch]
        blocks = list(blocks) or default_blocks
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"MODEL.RESNET_BLOCKS needs 4 values >= 1, got {list(blocks)}")
        block = BasicBlock if arch in ("resnet18", "resnet34") else Bottleneck
        stem_ch = max(int(widths[0]) // block.expansion, 8)
        mods = OrderedDict(
            stem=nn.Sequential(
                nn.Conv2d(3, stem_ch, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(stem_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        inplanes = stem_ch
        for i, s in enumerate(STAGES):
            mods[s] = _make_stage(block, inplanes, int(widths[i]), int(blocks[i]), 1 if i == 0 else 2)
            inplanes = int(widths[i])
        trunk = nn.ModuleDict(mods)
        for m in trunk.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    trunk.stage_channels = {s: _out_channels(trunk[s]) for s in STAGES}
    return trunk


def _out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.bn3 if isinstance(last, Bottleneck) else last.bn2).num_features


class Mancs(nn.Module):
    """Mancs: trunk + FABs + rank / classification / attention branches (module docstring).

    Args:
        trunk: from :func:`build_resnet_trunk`.
        num_classes: C, training identities.
        fab_stages: stages followed by a FAB (the attention branch pools each of them); >= 1.
        fab_reduction: channel reduction of the FABs' hidden conv.
        rank_dim: rank-branch feature size (test descriptor).
        cls_dim: hidden FC size of the classification branch.
        prelu: end the last block of layer4 with PReLU (Mancs Sec. 4.3).
    """

    def __init__(
        self,
        trunk: nn.ModuleDict,
        num_classes: int,
        fab_stages: Sequence[str] = ("layer2", "layer3", "layer4"),
        fab_reduction: int = 16,
        rank_dim: int = 2048,
        cls_dim: int = 2048,
        prelu: bool = True,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"Mancs: needs >= 2 training identities, got {num_classes}")
        fab_stages = list(fab_stages)
        bad = [s for s in fab_stages if s not in STAGES]
        if bad or not fab_stages or len(set(fab_stages)) != len(fab_stages):
            raise ValueError(
                f"MODEL.FAB_STAGES: expected distinct names from {STAGES} (at least one: the attention "
                f"branch pools the FAB outputs), got {fab_stages}"
            )
        channels = dict(trunk.stage_channels)
        if prelu:
            trunk["layer4"][-1] = _PReLUOutputBlock(trunk["layer4"][-1])
        self.backbone = trunk
        self.fab_stages = [s for s in STAGES if s in fab_stages]
        self.fabs = nn.ModuleDict({s: FullyAttentionalBlock(channels[s], fab_reduction) for s in self.fab_stages})
        self.num_classes = int(num_classes)
        c5 = channels["layer4"]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.rank_fc = nn.Linear(c5, rank_dim)
        self.cls_fc = nn.Sequential(nn.Linear(c5, cls_dim), nn.BatchNorm1d(cls_dim), nn.ReLU(inplace=True))
        self.cls_head = nn.Linear(cls_dim, num_classes)
        self.att_head = nn.Linear(sum(channels[s] for s in self.fab_stages), num_classes)
        self.feature_dim = rank_dim
        # sigmoid heads start at the prior 1/C for every identity (as RetinaNet's prior), so the first
        # per-identity sigmoid losses are ~log C instead of C * log 2
        prior = -math.log(num_classes - 1.0)
        for head in (self.cls_head, self.att_head):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.constant_(head.bias, prior)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Args:
            x: (B, 3, H, W) normalised crops.
        Returns:
            training: {"rank": (B, rank_dim), "cls_logits": (B, C), "att_logits": (B, C)};
            eval: the rank feature (B, rank_dim).
        """
        f = self.backbone["stem"](x)
        attended: List[torch.Tensor] = []
        for s in STAGES:
            f = self.backbone[s](f)
            if s in self.fabs:
                f, att = self.fabs[s](f)
                attended.append(self.pool(att).flatten(1))
        pooled = self.pool(f).flatten(1)
        rank = self.rank_fc(pooled)
        if not self.training:
            return rank
        return {
            "rank": rank,
            "cls_logits": self.cls_head(self.cls_fc(pooled)),
            "att_logits": self.att_head(torch.cat(attended, dim=1)),
        }


def build_mancs(
    num_classes: int,
    arch: str = "resnet50",
    pretrained: bool = False,
    widths: Sequence[int] = (),
    blocks: Sequence[int] = (),
    **kwargs,
) -> Mancs:
    """Mancs on a :func:`build_resnet_trunk` trunk; ``kwargs`` go to :class:`Mancs`."""
    return Mancs(build_resnet_trunk(arch, widths, blocks, pretrained), num_classes, **kwargs)


def _factory_entry(arch: str):
    def build(num_classes, loss="mancs", pretrained=True, use_gpu=True, **kwargs):
        # torchreid's build_model signature; the Mancs losses are fixed, use_gpu is the caller's business
        return build_mancs(num_classes, arch, pretrained=pretrained, **kwargs)

    build.__name__ = f"mancs_{arch}"
    build.__doc__ = f"Mancs on torchreid's {arch} (torchreid model-factory entry)."
    return build


def register_mancs_models() -> List[str]:
    """Add ``mancs_resnet18/34/50`` to torchreid's model factory (idempotent); returns the names.

    torchreid 0.2.5 has no public registration call for models; its factory is the module-level dict
    ``torchreid.reid.models.__model_factory`` that ``build_model`` looks names up in.
    """
    factory = vars(tr_models)["__model_factory"]
    for name in MANCS_MODEL_NAMES:
        factory.setdefault(name, _factory_entry(name[len("mancs_") :]))
    return list(MANCS_MODEL_NAMES)


def build_mancs_from_config(cfg, num_classes: int) -> Mancs:
    """The Mancs model of a reid config (``cfg.MODEL``, see :func:`.config.add_reid_config`)."""
    m = cfg.MODEL
    kwargs = dict(
        fab_stages=list(m.FAB_STAGES),
        fab_reduction=int(m.FAB_REDUCTION),
        rank_dim=int(m.RANK_DIM),
        cls_dim=int(m.CLS_DIM),
        prelu=bool(m.PRELU),
    )
    if not m.RESNET_WIDTHS:  # the torchreid factory path: build_model("mancs_<arch>")
        register_mancs_models()
        name = f"mancs_{m.BACKBONE}"
        if name not in MANCS_MODEL_NAMES:
            raise ValueError(
                f"MODEL.BACKBONE {m.BACKBONE!r}: expected one of "
                f"{[n[len('mancs_') :] for n in MANCS_MODEL_NAMES]} (or set MODEL.RESNET_WIDTHS)"
            )
        factory = vars(tr_models)["__model_factory"]
        return factory[name](num_classes, pretrained=bool(m.PRETRAINED), **kwargs)
    return build_mancs(
        num_classes,
        m.BACKBONE,
        pretrained=bool(m.PRETRAINED),
        widths=list(m.RESNET_WIDTHS),
        blocks=list(m.RESNET_BLOCKS),
        **kwargs,
    )
