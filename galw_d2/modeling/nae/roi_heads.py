"""NAE ROI heads on C4: person-search sampling, RoIAlign 14x14 -> res5 -> norm-aware embedding,
BN box regression and OIM (SPEC §1, NAE branch)."""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat, nonzero_tuple
from detectron2.modeling import ROI_HEADS_REGISTRY, ROIHeads
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from torchvision.ops import batched_nms

from ...utils.state import apply_pending_updates
from ..backbone import build_res5_head
from ..oim import OIMMemory
from ..protonorm import BACKGROUND_PID, UNLABELED_PID, prototype_groups
from ..reid_head import ReIDHead, build_reid_head
from .heads import BNBoxRegressor, NormAwareEmbedding, max_pool_flat

__all__ = ["NAEROIHeads"]


@ROI_HEADS_REGISTRY.register()
class NAEROIHeads(Res5ROIHeads):
    """C4 ROI heads of NAE (Chen et al. 2020) as used by ROI-AlignPS.

    Sampling: ``MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.1, 0.5]`` with ``IOU_LABELS = [0, -1, 1]`` (pos
    IoU >= 0.5, neg < 0.1, in between ignored), ``BATCH_SIZE_PER_IMAGE`` (128) RoIs with
    ``POSITIVE_FRACTION`` (0.5), GT boxes appended. Every ``gt_*`` field of the matched GT (gt_pids,
    gt_attributes, ...) is carried to the sampled proposals by :meth:`label_and_sample_proposals`.

    Per RoI: RoIAlign (14x14) on res4 -> own res5 block (stride 2) -> spatial max pool; the pooled
    res4 map and the res5 vector feed :class:`NormAwareEmbedding`, the res5 vector feeds
    :class:`BNBoxRegressor`. Raw losses: ``loss_roi_box_reg`` (L1 on fg deltas, summed, divided by
    the number of sampled RoIs), ``loss_nae_det`` (BCE of the norm logit, mean), ``loss_nae_oim``
    (OIM over labeled fg RoIs; fg RoIs of unlabeled persons are pushed to the queue). The re-id head
    (``MODEL.NAE.REID_HEAD``, :mod:`galw_d2.modeling.reid_head`) chooses BatchNorm1d or ProtoNorm in the
    embedding projectors and plain or localization-aware OIM for ``loss_nae_oim``.
    """

    @configurable
    def __init__(
        self,
        *,
        embedding: NormAwareEmbedding,
        memory: OIMMemory,
        oim_scale: float,
        box2box_transform: Box2BoxTransform,
        test_score_thresh: float,
        test_nms_thresh: float,
        test_detections_per_img: int,
        res4_channels: int,
        res5_name: str = "res5",
        reid_head: Optional[ReIDHead] = None,
        **kwargs,
    ):
        """
        Args:
            embedding: the norm-aware embedding head (inputs "res4", "res5").
            memory: OIM lookup table + circular queue.
            oim_scale: OIM logit scale (30).
            box2box_transform: delta encoding with weights 1 / target stds (10, 10, 5, 5).
            test_score_thresh, test_nms_thresh, test_detections_per_img: NAE-only detection output.
            res4_channels: channels of the pooled C4 map.
            res5_name: attribute name of the per-RoI res5 block. "res5" (detectron2's C4 convention) lets an
                ImageNet checkpoint's ``res5.*`` load into it; when the backbone has its own res5 (ROI-AlignPS)
                that name would match both, so it is "head_res5" there (see ``ROIAlignPS``).
            reid_head: the re-id head choice (its ``norm_layer`` must be the one ``embedding`` was built
                with); None = plain OIM.
            kwargs: :class:`Res5ROIHeads` arguments (in_features, pooler, res5, box_predictor) and
                :class:`ROIHeads` sampling arguments.
        """
        super().__init__(**kwargs)
        self.embedding = embedding
        self.memory = memory
        self.oim_scale = oim_scale
        self.box2box_transform = box2box_transform
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_detections_per_img = test_detections_per_img
        self.res4_channels = res4_channels
        self.res5_name = res5_name
        reid_head = reid_head if reid_head is not None else ReIDHead("oim")
        self.reid_head = reid_head
        if reid_head.protonorm != embedding.uses_protonorm:
            raise ValueError(
                f"NAEROIHeads: re-id head {reid_head.name!r} (protonorm={reid_head.protonorm}) does not "
                f"match the embedding's normalisation (protonorm={embedding.uses_protonorm})"
            )
        if res5_name != "res5":
            block = self.res5
            del self.res5
            self.add_module(res5_name, block)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = ROIHeads.from_config(cfg)
        if ret["num_classes"] != 1:
            raise ValueError(f"NAEROIHeads: MODEL.ROI_HEADS.NUM_CLASSES must be 1 (person), got {ret['num_classes']}")
        ret["proposal_matcher"] = Matcher(
            list(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS),
            list(cfg.MODEL.ROI_HEADS.IOU_LABELS),
            allow_low_quality_matches=False,
        )
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1 or in_features[0] not in input_shape:
            raise ValueError(
                f"NAEROIHeads: MODEL.ROI_HEADS.IN_FEATURES={in_features} must be one backbone map "
                f"(res4); the backbone outputs {sorted(input_shape)}"
            )
        c4 = input_shape[in_features[0]]
        ret["in_features"] = in_features
        ret["pooler"] = ROIPooler(
            output_size=cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
            scales=(1.0 / c4.stride,),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        ret["res5"], c5 = build_res5_head(cfg, c4.channels)
        ret["box_predictor"] = BNBoxRegressor(c5)
        nae = cfg.MODEL.NAE
        ret["reid_head"] = build_reid_head(cfg)
        ret["embedding"] = NormAwareEmbedding(
            {"res4": c4.channels, "res5": c5}, nae.EMBED_DIM, norm_layer=ret["reid_head"].norm_layer
        )
        num_pids = int(cfg.MODEL.PERSON_SEARCH.NUM_PIDS)
        if num_pids <= 0:
            raise ValueError(
                f"MODEL.PERSON_SEARCH.NUM_PIDS must be > 0 when the NAE ROI heads are built "
                f"(rows of its OIM table), got {num_pids}"
            )
        ret["memory"] = OIMMemory(num_pids, nae.OIM_QUEUE_SIZE, nae.EMBED_DIM, nae.OIM_MOMENTUM)
        ret["oim_scale"] = nae.OIM_SCALE
        stds = [float(s) for s in nae.BBOX_REG_STDS]
        if len(stds) != 4 or min(stds) <= 0:
            raise ValueError(f"MODEL.NAE.BBOX_REG_STDS={stds}: expected 4 positive stds")
        ret["box2box_transform"] = Box2BoxTransform(weights=tuple(1.0 / s for s in stds))
        ret["test_score_thresh"] = nae.TEST_SCORE_THRESH
        ret["test_nms_thresh"] = nae.TEST_NMS_THRESH
        ret["test_detections_per_img"] = cfg.TEST.DETECTIONS_PER_IMAGE
        ret["res4_channels"] = c4.channels
        # A backbone that outputs res5 has built its own res5: keep checkpoint names unambiguous.
        ret["res5_name"] = "head_res5" if "res5" in input_shape else "res5"
        return ret

    @property
    def res5_block(self):
        """The per-RoI res5 stage (named ``res5_name``)."""
        return getattr(self, self.res5_name)

    # ------------------------------------------------------------------ per-RoI computation
    def roi_outputs(self, features: Dict[str, torch.Tensor], boxes: List[Boxes], groups: Optional[torch.Tensor] = None):
        """RoIAlign on C4 -> res5 -> pooled; embeddings (R, D), fg logits (R,), deltas (R, 4), R = sum of boxes.
        ``groups`` (R,): ProtoNorm prototype ids of the RoIs (training with ProtoNorm only)."""
        x = self.pooler([features[f] for f in self.in_features], boxes)
        if x.shape[0] == 0:
            z = x.new_zeros((0,))
            return x.new_zeros((0, self.embedding.embed_dim)), z, x.new_zeros((0, 4))
        f5 = max_pool_flat(self.res5_block(x))
        emb, logits = self.embedding({"res4": max_pool_flat(x), "res5": f5}, groups)
        return emb, logits, self.box_predictor(f5)

    @torch.no_grad()
    def embed(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]) -> List[torch.Tensor]:
        """NAE embeddings of given boxes (no RPN): per image (Q_i, 4) network-input XYXY -> (Q_i, D)."""
        dev = features[self.in_features[0]].device
        bxs = [Boxes(b.to(device=dev, dtype=torch.float32).reshape(-1, 4)) for b in boxes]
        emb, _, _ = self.roi_outputs(features, bxs)
        return list(emb.split([len(b) for b in bxs]))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """Returns:
        training: (sampled proposals (List[Instances], with gt_classes 0 person / 1 background and
        the matched GT's gt_* fields), raw losses dict). Inference: (detections per image with
        pred_boxes, scores, pred_classes, embeddings; {}).
        """
        if self.training:
            if targets is None:
                raise ValueError("NAEROIHeads: targets are required in training")
            if self._has_pending():
                # Stand-alone use: the trainer applies them after each optimizer step.
                apply_pending_updates(self)
            proposals = self.label_and_sample_proposals(proposals, targets)
            pids = self.roi_pids(proposals)
            # ProtoNorm: a fg RoI without identity information (-2 on a fg RoI: image without gt_pids)
            # is a prototype of its own, like an unlabeled person.
            fg_no_id = (pids == BACKGROUND_PID) & self._fg_mask(proposals)
            groups = (
                prototype_groups(torch.where(fg_no_id, torch.full_like(pids, UNLABELED_PID), pids))
                if self.reid_head.protonorm
                else None
            )
            out = self.roi_outputs(features, [p.proposal_boxes for p in proposals], groups)
            return proposals, self.losses(out, proposals, pids)
        return self.inference(features, proposals), {}

    def _has_pending(self) -> bool:
        return any(
            m.has_pending() for m in self.modules() if m is not self and callable(getattr(m, "has_pending", None))
        )

    def _fg_mask(self, proposals: List[Instances]) -> torch.Tensor:
        gt_classes = cat([p.gt_classes for p in proposals])
        return (gt_classes >= 0) & (gt_classes < self.num_classes)

    def roi_pids(self, proposals: List[Instances]) -> torch.Tensor:
        """Identity code of every sampled RoI: (R,) int64, >= 0 labeled, -1 unlabeled person, -2 background
        or a fg RoI of an image without ``gt_pids`` (neither a target nor queued)."""
        gt_classes = cat([p.gt_classes for p in proposals])
        fg = self._fg_mask(proposals)
        pids = torch.cat(
            [
                p.gt_pids.long().to(gt_classes.device)
                if p.has("gt_pids")
                else torch.full((len(p),), BACKGROUND_PID, dtype=torch.long, device=gt_classes.device)
                for p in proposals
            ]
        )
        return torch.where(fg, pids, torch.full_like(pids, BACKGROUND_PID))

    def losses(
        self,
        out: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        proposals: List[Instances],
        pids: Optional[torch.Tensor] = None,
    ):
        emb, logits, deltas = out
        gt_classes = cat([p.gt_classes for p in proposals])
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        if pids is None:
            pids = self.roi_pids(proposals)
        loss_det = F.binary_cross_entropy_with_logits(logits, fg.to(logits.dtype))
        fg_idx = nonzero_tuple(fg)[0]
        if fg_idx.numel() > 0:
            props = cat([p.proposal_boxes.tensor for p in proposals])[fg_idx]
            # Images without GT have no gt_boxes on their (all background) RoIs: any placeholder will do.
            gts = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals])[fg_idx]
            targets = self.box2box_transform.get_deltas(props, gts)
            loss_box = F.l1_loss(deltas[fg_idx], targets, reduction="sum") / max(gt_classes.numel(), 1)
            # LOIM: IoU of each positive with its matched GT (= its max IoU over the GT, as matched).
            ious = matched_pairwise_iou(Boxes(props), Boxes(gts)) if self.reid_head.loim else None
        else:
            loss_box = deltas.sum() * 0.0
            ious = emb.new_zeros(0)
        # OIM over the fg RoIs (background RoIs: no id, not queued); the table/queue update is queued
        # for after the optimizer step, never inside backward (SPEC §1).
        loss_oim = self.reid_head.loss_and_queue(emb[fg_idx], pids[fg_idx], ious, self.memory, self.oim_scale)
        return {"loss_roi_box_reg": loss_box, "loss_nae_det": loss_det, "loss_nae_oim": loss_oim}

    @torch.no_grad()
    def inference(self, features: Dict[str, torch.Tensor], proposals: List[Instances]) -> List[Instances]:
        """NAE-only detections: proposals regressed, scored by sigmoid(norm logit), NMS; the embedding of
        a detection is that of its proposal (as NAE does)."""
        boxes = [p.proposal_boxes for p in proposals]
        emb, logits, deltas = self.roi_outputs(features, boxes)
        results = []
        for i, (e, s, d) in enumerate(
            zip(
                emb.split([len(b) for b in boxes]),
                logits.sigmoid().split([len(b) for b in boxes]),
                deltas.split([len(b) for b in boxes]),
            )
        ):
            pred = Boxes(self.box2box_transform.apply_deltas(d, boxes[i].tensor))
            pred.clip(proposals[i].image_size)
            keep = nonzero_tuple((s > self.test_score_thresh) & pred.nonempty())[0]
            k = batched_nms(pred.tensor[keep], s[keep], torch.zeros_like(keep), self.test_nms_thresh)
            keep = keep[k[: self.test_detections_per_img]]
            inst = Instances(proposals[i].image_size)
            inst.pred_boxes = pred[keep]
            inst.scores = s[keep]
            inst.pred_classes = torch.zeros(len(keep), dtype=torch.long, device=s.device)
            inst.embeddings = e[keep]
            results.append(inst)
        return results
