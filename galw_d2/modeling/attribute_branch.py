"""ALM attribute branch of the person-search model (task t11, loss ``loss_attr``).

For the foreground RoIs sampled by the NAE branch (``gt_classes == 0``, i.e. matched to a GT person)
the branch RoIAligns each level of ``MODEL.ATTRIBUTES.IN_FEATURES`` to
``POOLER_RESOLUTION`` x ``POOLER_RESOLUTION`` (32x32), reduces it with a 1x1 conv + ReLU to
``CHANNELS`` channels and feeds one ALM per level (:mod:`galw_d2.attributes.alm`). The loss is BCE
against the matched GT's ``gt_attributes`` (pseudo-labels; 0/1 or soft in [0, 1]; entries < 0 are
ignored), averaged over the levels (deep supervision). Background RoIs, RoIs of images without
``gt_attributes`` and RoIs whose GT has no label are excluded; without any valid RoI the loss is a
graph-connected 0. At test time :meth:`AttributeBranch.predict` gives probabilities, max over levels.
"""

import os
from typing import Dict, List

import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Instances
from torch import nn
from torchvision.ops import roi_align

from galw_d2.attributes.alm import MultiLevelALM, combine_levels
from galw_d2.attributes.losses import multi_level_bce, positive_ratio

__all__ = ["AttributeBranch", "build_attribute_branch", "resolve_num_attributes"]


def resolve_num_attributes(cfg) -> int:
    """MODEL.ATTRIBUTES.NUM_ATTRIBUTES, or (when 0) the number of ``attribute_names`` of the training
    dataset's metadata (or of ``<root>/synthps_attributes.json`` for a SynthPS root)."""
    n = int(cfg.MODEL.ATTRIBUTES.NUM_ATTRIBUTES)
    if n > 0:
        return n
    from detectron2.data import MetadataCatalog

    if not cfg.DATASETS.TRAIN:
        raise ValueError("MODEL.ATTRIBUTES.NUM_ATTRIBUTES = 0 needs DATASETS.TRAIN to read attribute_names from")
    name = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(name)
    names = meta.get("attribute_names", None)
    if names is None and meta.get("root", None):
        if os.path.isfile(os.path.join(meta.root, "synthps_attributes.json")):
            from galw_d2.attributes.data import load_synthps_attributes

            names = load_synthps_attributes(meta.root)[0]
    if not names:
        raise ValueError(
            f"MODEL.ATTRIBUTES.NUM_ATTRIBUTES = 0 but MetadataCatalog.get({name!r}) has no "
            "'attribute_names'; set NUM_ATTRIBUTES or train on a dataset with pseudo-labels "
            "(galw_d2.attributes.pseudo_labels.register_pseudo_labeled_dataset)"
        )
    return len(names)


class AttributeBranch(nn.Module):
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        in_features: List[str],
        num_attributes: int,
        pooler_resolution: int = 32,
        sampling_ratio: int = 2,
        channels: int = 64,
        sample_size: int = 8,
        se_reduction: int = 16,
        max_per_image: int = 64,
        loss_weighting: str = "none",
    ):
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing or not in_features:
            raise ValueError(
                f"MODEL.ATTRIBUTES.IN_FEATURES={list(in_features)}: {missing or 'empty'} not among the "
                f"backbone outputs {sorted(input_shape)} (set MODEL.ATTRIBUTES.IN_FEATURES or "
                "MODEL.RESNETS.OUT_FEATURES)"
            )
        if loss_weighting not in ("none", "alm"):
            raise ValueError(f"MODEL.ATTRIBUTES.LOSS_WEIGHTING must be 'none' or 'alm', got {loss_weighting!r}")
        self.in_features = list(in_features)
        self.scales = [1.0 / float(input_shape[f].stride) for f in in_features]
        self.resolution = int(pooler_resolution)
        self.sampling_ratio = int(sampling_ratio)
        self.max_per_image = int(max_per_image)
        self.loss_weighting = loss_weighting
        self.num_attributes = int(num_attributes)
        self.reduce = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(input_shape[f].channels, channels, 1), nn.ReLU(inplace=True)) for f in in_features]
        )
        self.alm = MultiLevelALM([channels] * len(in_features), num_attributes, se_reduction, sample_size)

    def level_logits(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per-level logits (R, A) of the boxes (network-input XYXY, one tensor per image)."""
        out = []
        for f, s, red in zip(self.in_features, self.scales, self.reduce):
            x = roi_align(
                features[f],
                [b.to(features[f].dtype) for b in boxes],
                self.resolution,
                spatial_scale=s,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            )
            out.append(red(x))
        return self.alm(out)

    @torch.no_grad()
    def predict(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]) -> List[torch.Tensor]:
        """Attribute probabilities per image (R_i, A), max over levels."""
        n = [len(b) for b in boxes]
        if sum(n) == 0:
            return [features[self.in_features[0]].new_zeros((0, self.num_attributes)) for _ in boxes]
        probs = torch.sigmoid(combine_levels(self.level_logits(features, boxes)))
        return list(probs.split(n))

    def _zero(self, features) -> torch.Tensor:
        z = sum(p.sum() for p in self.parameters()) * 0.0
        return z + sum(features[f].sum() for f in self.in_features) * 0.0

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        boxes, targets = [], []
        any_attr, any_fg = False, False
        for p in proposals:
            dev = p.proposal_boxes.tensor.device
            fg = (p.gt_classes == 0) if p.has("gt_classes") else torch.ones(len(p), dtype=torch.bool, device=dev)
            any_fg = any_fg or bool(fg.any())
            if not p.has("gt_attributes") or len(p) == 0:
                boxes.append(p.proposal_boxes.tensor[:0])
                continue
            any_attr = True
            t = p.gt_attributes.to(torch.float32)
            if t.dim() != 2 or t.shape[1] != self.num_attributes:
                raise ValueError(
                    f"attribute branch: gt_attributes has shape {tuple(t.shape)}, expected (R, "
                    f"{self.num_attributes}) (MODEL.ATTRIBUTES.NUM_ATTRIBUTES)"
                )
            keep = fg & (t >= 0).any(dim=1)  # foreground, matched GT has at least one label
            idx = keep.nonzero().flatten()
            if self.training and self.max_per_image > 0 and len(idx) > self.max_per_image:
                idx = idx[torch.randperm(len(idx), device=idx.device)[: self.max_per_image]]
            boxes.append(p.proposal_boxes.tensor[idx])
            targets.append(t[idx])
        if any_fg and not any_attr:
            raise ValueError(
                "MODEL.ATTRIBUTES.ENABLED but no training image has gt_attributes: train on a dataset "
                "with attribute labels (SynthPS) or pseudo-labels "
                "(galw_d2.attributes.pseudo_labels.register_pseudo_labeled_dataset)"
            )
        if sum(len(b) for b in boxes) == 0:
            return {"loss_attr": self._zero(features)}
        y = torch.cat(targets)
        pos_ratio = positive_ratio(y).to(y.device) if self.loss_weighting == "alm" else None
        loss = multi_level_bce(self.level_logits(features, boxes), y, pos_ratio)
        return {"loss_attr": loss + self._zero(features)}


def build_attribute_branch(cfg, input_shape: Dict[str, ShapeSpec]) -> AttributeBranch:
    a = cfg.MODEL.ATTRIBUTES
    return AttributeBranch(
        input_shape,
        list(a.IN_FEATURES),
        resolve_num_attributes(cfg),
        a.POOLER_RESOLUTION,
        a.POOLER_SAMPLING_RATIO,
        a.CHANNELS,
        a.SAMPLE_SIZE,
        a.SE_REDUCTION,
        a.MAX_PROPOSALS_PER_IMAGE,
        a.LOSS_WEIGHTING,
    )
