"""A width- and depth-configurable detectron2 ResNet, and the matching res5 block for a C4 ROI head.

detectron2's ``build_resnet_backbone`` fixes the widths of ResNet-18/34 (res2 = 64 channels) and the
block counts per depth. Tiny CPU configs need narrow, shallow nets, so this backbone reads two extra
keys (``MODEL.PERSON_SEARCH.RESNET_WIDTHS`` / ``RESNET_BLOCKS``); with both empty it builds exactly
detectron2's ResNet of ``MODEL.RESNETS.DEPTH`` (same module names ``stem``, ``res2`` .. ``res5``, so
detectron2 / ImageNet checkpoints load unchanged).
"""

from typing import List, Tuple

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
from torch import nn

__all__ = ["build_person_search_resnet_backbone", "build_res5_head", "resnet_stage_specs"]

_DEFAULT_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def resnet_stage_specs(cfg) -> Tuple[List[int], List[int], bool]:
    """(output channels of res2..res5, blocks per stage, uses BasicBlock) of the configured ResNet."""
    r = cfg.MODEL.RESNETS
    depth = int(r.DEPTH)
    if depth not in _DEFAULT_BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH={depth}: expected one of {sorted(_DEFAULT_BLOCKS)}")
    basic = depth in (18, 34)
    widths = [int(w) for w in cfg.MODEL.PERSON_SEARCH.RESNET_WIDTHS]
    if not widths:
        widths = [r.RES2_OUT_CHANNELS * 2**i for i in range(4)]
    blocks = [int(b) for b in cfg.MODEL.PERSON_SEARCH.RESNET_BLOCKS] or list(_DEFAULT_BLOCKS[depth])
    if len(widths) != 4 or len(blocks) != 4 or min(widths) <= 0 or min(blocks) <= 0:
        raise ValueError(
            f"MODEL.PERSON_SEARCH.RESNET_WIDTHS={widths} / RESNET_BLOCKS={blocks}: expected 4 "
            "positive values each (res2..res5) or [] for the detectron2 defaults"
        )
    return widths, blocks, basic


def _make_stage(cfg, stage: int, in_channels: int, out_channels: int, num_blocks: int, first_stride: int):
    r = cfg.MODEL.RESNETS
    kw = dict(
        num_blocks=num_blocks,
        stride_per_block=[first_stride] + [1] * (num_blocks - 1),
        in_channels=in_channels,
        out_channels=out_channels,
        norm=r.NORM,
    )
    _, _, basic = resnet_stage_specs(cfg)
    if basic:
        kw["block_class"] = BasicBlock
    else:
        # Bottleneck width: res2 bottleneck = NUM_GROUPS * WIDTH_PER_GROUP, doubling per stage, scaled
        # with the output width when RESNET_WIDTHS narrows the net (bottleneck = out / 4 by default).
        default_out = r.RES2_OUT_CHANNELS * 2 ** (stage - 2)
        bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP * 2 ** (stage - 2) * out_channels // default_out
        kw.update(
            block_class=BottleneckBlock,
            bottleneck_channels=max(bottleneck, 1),
            num_groups=r.NUM_GROUPS,
            stride_in_1x1=r.STRIDE_IN_1X1,
        )
    return ResNet.make_stage(**kw)


@BACKBONE_REGISTRY.register()
def build_person_search_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """detectron2 ResNet with configurable stage widths / block counts (see module docstring).

    Stages after the last of ``MODEL.RESNETS.OUT_FEATURES`` are not built (detectron2's ResNet drops
    them), so an NAE-only model (OUT_FEATURES [res4]) has no backbone res5.
    """
    r = cfg.MODEL.RESNETS
    if any(r.DEFORM_ON_PER_STAGE) or r.RES5_DILATION != 1:
        raise ValueError(
            "build_person_search_resnet_backbone: MODEL.RESNETS.DEFORM_ON_PER_STAGE and "
            "RES5_DILATION are not supported (use all False / 1)"
        )
    widths, blocks, _ = resnet_stage_specs(cfg)
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    stages, in_ch = [], r.STEM_OUT_CHANNELS
    for i, stage in enumerate(range(2, 6)):
        stages.append(_make_stage(cfg, stage, in_ch, widths[i], blocks[i], 1 if i == 0 else 2))
        in_ch = widths[i]
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def build_res5_head(cfg, in_channels: int) -> Tuple[nn.Sequential, int]:
    """A fresh res5 stage (stride 2) for a C4 ROI head, same block type/width as the backbone's res5.

    NAE and ROI-AlignPS give the ROI head its own res5 (mmdet ``shared_head=ResLayer(stage=3)``, built
    apart from the backbone, both initialised from the same ImageNet res5); it is not weight-shared
    with the backbone's res5 that feeds the AFA neck.

    Returns:
        (module mapping (R, in_channels, S, S) -> (R, out, S/2, S/2), out channels)
    """
    widths, blocks, _ = resnet_stage_specs(cfg)
    return nn.Sequential(*_make_stage(cfg, 5, in_channels, widths[3], blocks[3], 2)), widths[3]
