"""The AlignPS branch: AFA neck + FCOS head + focal-OIM + triplet, as one detectron2 module.

Meta-architectures (AlignPS-only, ROI-AlignPS*) call :class:`AlignPSBranch` with the backbone's
res3..res5 features; the contract is written in docs/DESIGN.md (Models > AlignPS branch).
"""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import nn
from torchvision.ops import nms

from ..oim import OIMMemory, oim_loss
from .afa_neck import AFANeck
from .fcos_head import FCOSHead
from .losses import triplet_with_table_rows
from .targets import centerness_targets, fcos_targets, locations

__all__ = ["AlignPSBranch"]


class AlignPSBranch(nn.Module):
    """AlignPS (Yan et al. 2021) as a branch on a shared backbone (SPEC §1).

    Training returns exactly the five raw (unweighted) task losses ``loss_fcos_cls``,
    ``loss_fcos_giou``, ``loss_fcos_ctr``, ``loss_fcos_oim``, ``loss_triplet`` (galw_d2/tasks.py t6..t10).
    Inference returns detections with their re-id features, and embeddings of given boxes.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        in_channels: List[int],
        stride: int,
        lateral_channels: int,
        embed_dim: int,
        neck_deformable: bool,
        neck_modulated: bool,
        head_conv_dim: int,
        num_convs: int,
        norm_groups: int,
        head_deformable_last: bool,
        head_modulated: bool,
        prior_prob: float,
        center_sampling_radius: float,
        focal_alpha: float,
        focal_gamma: float,
        num_pids: int,
        oim_queue_size: int,
        oim_momentum: float,
        oim_scale: float,
        oim_focal_gamma: float,
        triplet_margin: float,
        score_thresh: float,
        topk_candidates: int,
        nms_thresh: float,
        detections_per_image: int,
    ):
        """See :func:`galw_d2.config.add_alignps_config` for the meaning of each argument."""
        super().__init__()
        self.in_features = list(in_features)
        self.stride = int(stride)
        self.neck = AFANeck(in_channels, lateral_channels, embed_dim, neck_deformable, neck_modulated)
        self.head = FCOSHead(
            embed_dim,
            head_conv_dim,
            num_convs,
            norm_groups,
            self.stride,
            head_deformable_last,
            head_modulated,
            prior_prob,
        )
        self.memory = OIMMemory(num_pids, oim_queue_size, embed_dim, oim_momentum)
        self.center_sampling_radius = center_sampling_radius
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.oim_scale, self.oim_focal_gamma = oim_scale, oim_focal_gamma
        self.triplet_margin = triplet_margin
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_thresh, self.detections_per_image = nms_thresh, detections_per_image

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        a = cfg.MODEL.ALIGNPS
        in_features = list(a.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.ALIGNPS.IN_FEATURES={in_features}: backbone has no {missing} "
                f"(it outputs {sorted(input_shape)}); set MODEL.RESNETS.OUT_FEATURES to include them"
            )
        strides = [input_shape[f].stride for f in in_features]
        if any(strides[i + 1] != 2 * strides[i] for i in range(len(strides) - 1)):
            raise ValueError(
                f"MODEL.ALIGNPS.IN_FEATURES={in_features} must be finest first with strides doubling, "
                f"got strides {strides}"
            )
        num_pids = int(cfg.MODEL.PERSON_SEARCH.NUM_PIDS)
        if num_pids <= 0:
            raise ValueError(
                f"MODEL.PERSON_SEARCH.NUM_PIDS must be > 0 when the AlignPS branch is built "
                f"(rows of its OIM table), got {num_pids}"
            )
        return {
            "in_features": in_features,
            "in_channels": [input_shape[f].channels for f in in_features],
            "stride": strides[0],
            "lateral_channels": a.AFA_CHANNELS,
            "embed_dim": a.EMBED_DIM,
            "neck_deformable": a.NECK_DEFORMABLE,
            "neck_modulated": a.NECK_MODULATED,
            "head_conv_dim": a.HEAD_CONV_DIM,
            "num_convs": a.NUM_CONVS,
            "norm_groups": a.NORM_GROUPS,
            "head_deformable_last": a.HEAD_DEFORMABLE_LAST,
            "head_modulated": a.HEAD_MODULATED,
            "prior_prob": a.PRIOR_PROB,
            "center_sampling_radius": a.CENTER_SAMPLING_RADIUS,
            "focal_alpha": a.FOCAL_ALPHA,
            "focal_gamma": a.FOCAL_GAMMA,
            "num_pids": num_pids,
            "oim_queue_size": a.OIM_QUEUE_SIZE,
            "oim_momentum": a.OIM_MOMENTUM,
            "oim_scale": a.OIM_SCALE,
            "oim_focal_gamma": a.OIM_FOCAL_GAMMA,
            "triplet_margin": a.TRIPLET_MARGIN,
            "score_thresh": a.TEST_SCORE_THRESH,
            "topk_candidates": a.TEST_TOPK_CANDIDATES,
            "nms_thresh": a.TEST_NMS_THRESH,
            "detections_per_image": a.DETECTIONS_PER_IMAGE,
        }

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
        embed_boxes: Optional[List[torch.Tensor]] = None,
    ):
        """Args:
            images: the padded network input (only ``image_sizes`` and the batch size are used).
            features: backbone maps, at least ``in_features`` (res3, res4, res5).
            gt_instances: training only: per image ``gt_boxes`` (network-input XYXY), ``gt_pids`` (int64,
                -1 unlabeled). ``gt_classes`` is not read: the branch has one class (person).
            embed_boxes: inference only, optional: per image (Q_i, 4) XYXY boxes in network-input coordinates.
        Returns:
            training: ``{"loss_fcos_cls", "loss_fcos_giou", "loss_fcos_ctr", "loss_fcos_oim", "loss_triplet"}``
            (raw scalars). Inference: ``(results, box_embeddings)``: ``results[i]`` = Instances(image_size of
            ``images.image_sizes[i]``) with ``pred_boxes`` (R, 4), ``scores`` (R,) in [0, 1],
            ``pred_classes`` (R,) zeros, ``reid_feats`` (R, D) L2-normalised; ``box_embeddings`` = None
            when ``embed_boxes`` is None, else per image (Q_i, D) L2-normalised.
        """
        p3 = self.neck([features[f] for f in self.in_features])
        # AlignPS subtracts P3's spatial mean before the head; its re-id feature is that same centred map.
        p3 = p3 - p3.mean(dim=(2, 3), keepdim=True)
        cls_logits, box_dist, ctr_logits = self.head(p3)
        if self.training:
            if gt_instances is None:
                raise ValueError("AlignPSBranch: gt_instances are required in training")
            # A model also applies updates still pending from the previous step (docs/DESIGN.md).
            if self.memory.has_pending():
                self.memory.apply_pending_updates()
            return self.losses(p3, cls_logits, box_dist, ctr_logits, gt_instances)
        results = self.inference(images, p3, cls_logits, box_dist, ctr_logits)
        box_embs = None if embed_boxes is None else self.embed_boxes(p3, embed_boxes)
        return results, box_embs

    # ------------------------------------------------------------------ training
    def losses(self, p3, cls_logits, box_dist, ctr_logits, gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        N, D, H, W = p3.shape
        points = locations(H, W, self.stride, device=p3.device, dtype=torch.float32)  # (P, 2)
        matched, reg_t, pids = [], [], []
        for inst in gt_instances:
            m, r = fcos_targets(points, inst.gt_boxes.tensor.to(p3.device), self.stride, self.center_sampling_radius)
            gt_pids = inst.gt_pids.to(p3.device).long()
            matched.append(m)
            reg_t.append(r)
            pids.append(torch.where(m >= 0, gt_pids[m.clamp_min(0)] if len(gt_pids) else m, torch.full_like(m, -2)))
        matched = torch.cat(matched)  # (N*P,) image-major, row-major in each image
        reg_t = torch.cat(reg_t)
        pids = torch.cat(pids)
        pos = matched >= 0
        num_pos = int(pos.sum())

        # Flatten image-major then row-major, the order of ``matched`` (one class: cls is (N*P,)).
        cls_flat = cls_logits.reshape(-1)
        box_flat = box_dist.permute(0, 2, 3, 1).reshape(-1, 4)
        ctr_flat = ctr_logits.reshape(-1)
        feat_flat = p3.permute(0, 2, 3, 1).reshape(-1, D)

        # Focal loss over every location, normalised by the number of positives (FCOS; >= 1).
        loss_cls = sigmoid_focal_loss(
            cls_flat, pos.to(cls_flat.dtype), alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        ) / max(num_pos, 1)
        if num_pos == 0:
            zero = box_flat.sum() * 0.0 + ctr_flat.sum() * 0.0
            feat_zero = feat_flat.sum() * 0.0
            return {
                "loss_fcos_cls": loss_cls,
                "loss_fcos_giou": zero,
                "loss_fcos_ctr": zero.clone(),
                "loss_fcos_oim": feat_zero,
                "loss_triplet": feat_zero.clone(),
            }

        pts = points.repeat(N, 1)[pos]
        reg_pos = reg_t[pos]
        ctr_t = centerness_targets(reg_pos)
        pred = box_flat[pos]

        def decode(d):
            return torch.cat([pts - d[:, :2], pts + d[:, 2:]], dim=1)

        # GIoU weighted by the centerness targets, normalised by their sum (FCOS).
        loss_giou = (giou_loss(decode(pred), decode(reg_pos), reduction="none") * ctr_t).sum() / ctr_t.sum()
        loss_ctr = F.binary_cross_entropy_with_logits(ctr_flat[pos], ctr_t, reduction="mean")

        # Re-id: L2-normalised centred-P3 feature at every positive location, labelled with its GT's id.
        feats = F.normalize(feat_flat[pos], dim=1)
        pos_pids = pids[pos]
        loss_oim = oim_loss(feats, pos_pids, self.memory, self.oim_scale, focal_gamma=self.oim_focal_gamma)
        loss_tri = triplet_with_table_rows(feats, pos_pids, self.memory.lut, self.triplet_margin)
        # Table/queue updates are applied after the optimizer step, never inside backward (SPEC §1).
        self.memory.queue_update(feats.detach(), pos_pids)
        return {
            "loss_fcos_cls": loss_cls,
            "loss_fcos_giou": loss_giou,
            "loss_fcos_ctr": loss_ctr,
            "loss_fcos_oim": loss_oim,
            "loss_triplet": loss_tri,
        }

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, images: ImageList, p3, cls_logits, box_dist, ctr_logits) -> List[Instances]:
        N, D, H, W = p3.shape
        points = locations(H, W, self.stride, device=p3.device, dtype=torch.float32)
        results = []
        for i in range(N):
            h, w = images.image_sizes[i]
            cls = cls_logits[i].reshape(-1).sigmoid()
            ctr = ctr_logits[i].reshape(-1).sigmoid()
            # Threshold on the classification probability, rank by cls x centerness (no sqrt: AlignPS's
            # mmdet multiclass_nms multiplies by the centerness score factor; FCOS's own repo takes a sqrt).
            # Locations in the batch padding (beyond the real image) are never detections.
            inside = (points[:, 0] < w) & (points[:, 1] < h)
            keep = torch.nonzero((cls > self.score_thresh) & inside).squeeze(1)
            score = cls[keep] * ctr[keep]
            if score.numel() > self.topk_candidates:
                score, order = score.topk(self.topk_candidates)
                keep = keep[order]
            d = box_dist[i].permute(1, 2, 0).reshape(-1, 4)[keep].float()
            pts = points[keep]
            boxes = Boxes(torch.cat([pts - d[:, :2], pts + d[:, 2:]], dim=1))
            boxes.clip((h, w))
            k = nms(boxes.tensor, score, self.nms_thresh)[: self.detections_per_image]
            feats = p3[i].permute(1, 2, 0).reshape(-1, D)[keep[k]]
            inst = Instances((h, w))
            inst.pred_boxes = boxes[k]
            inst.scores = score[k]
            inst.pred_classes = torch.zeros(len(k), dtype=torch.long, device=p3.device)
            inst.reid_feats = F.normalize(feats, dim=1)
            results.append(inst)
        return results

    @torch.no_grad()
    def embed_boxes(self, p3: torch.Tensor, boxes: List[torch.Tensor]) -> List[torch.Tensor]:
        """Re-id embedding of given boxes: the centred P3 map bilinearly sampled at each box centre.

        Why the centre: with centre sampling (radius 1.5 strides) the positive locations of a person,
        whose features OIM/triplet train, lie around its box centre; AlignPS reads a detection's
        feature at the location that predicted it, which for a good detection is near the centre.

        Args:
            p3: (N, D, H, W) centred P3.
            boxes: N tensors (Q_i, 4) XYXY in network-input coordinates.
        Returns:
            N tensors (Q_i, D), L2-normalised.
        """
        if len(boxes) != p3.shape[0]:
            raise ValueError(f"embed_boxes: {len(boxes)} box lists for a batch of {p3.shape[0]} images")
        N, D, H, W = p3.shape
        out = []
        for i, b in enumerate(boxes):
            b = b.to(device=p3.device, dtype=p3.dtype).reshape(-1, 4)
            if b.numel() == 0:
                out.append(p3.new_zeros((0, D)))
                continue
            # Pixel -> feature-cell coordinate: location (j*s + s//2) is cell j.
            u = ((b[:, 0] + b[:, 2]) / 2 - self.stride // 2) / self.stride
            v = ((b[:, 1] + b[:, 3]) / 2 - self.stride // 2) / self.stride
            # grid_sample with align_corners=False: cell j's centre is at (2j + 1) / W - 1.
            grid = torch.stack([(2 * u + 1) / W - 1, (2 * v + 1) / H - 1], dim=1).view(1, 1, -1, 2)
            f = F.grid_sample(p3[i : i + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
            out.append(F.normalize(f.view(D, -1).t(), dim=1))
        return out
