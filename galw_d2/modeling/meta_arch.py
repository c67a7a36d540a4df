"""Person-search meta-architectures: ROI-AlignPS* (both branches), NAE alone, AlignPS alone.

:class:`PersonSearchBase` holds what the three share: image normalisation and padding, the backbone,
the optional attribute branch
(t11), the query path (``embed_boxes`` in original pixels -> ``box_embeddings``) and the rescaling of
outputs to the original image size. The training forward returns every task's UNWEIGHTED loss (the
paper's L_ori_i): weighting, fixed or learned, is the loss-weighting method's job
(galw_d2.galw.weighting). Subclasses only say how the branches produce raw losses,
detections and box embeddings. Contract: docs/DESIGN.md (Models).
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import ImageList, Instances
from torch import nn

from .alignps import AlignPSBranch

__all__ = ["PersonSearchBase", "ROIAlignPS", "NAE", "AlignPS", "resolve_num_pids"]

EMBEDDING_CHOICES = ("alignps", "nae", "concat")


def resolve_num_pids(cfg):
    """A copy of ``cfg`` whose ``MODEL.PERSON_SEARCH.NUM_PIDS`` is > 0 (0 = from the train set's metadata)."""
    if int(cfg.MODEL.PERSON_SEARCH.NUM_PIDS) > 0:
        return cfg
    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            "MODEL.PERSON_SEARCH.NUM_PIDS = 0 needs DATASETS.TRAIN to read num_train_pids from; "
            "set NUM_PIDS (CUHK-SYSU 5532, PRW 483) or DATASETS.TRAIN"
        )
    name = cfg.DATASETS.TRAIN[0]
    num = MetadataCatalog.get(name).get("num_train_pids", None)
    if num is None or int(num) <= 0:
        raise ValueError(
            f"MODEL.PERSON_SEARCH.NUM_PIDS = 0 but MetadataCatalog.get({name!r}) has no positive "
            f"'num_train_pids' (got {num!r}); register the dataset (galw_d2.data) or set NUM_PIDS"
        )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.PERSON_SEARCH.NUM_PIDS = int(num)
    return cfg


class PersonSearchBase(nn.Module):
    """Shared meta-architecture code; see the module docstring. Subclasses implement
    :meth:`raw_losses` and :meth:`detect_and_embed`."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_mean,
        pixel_std,
        size_divisibility: int,
        attribute_branch: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.size_divisibility = max(int(size_divisibility), int(getattr(backbone, "size_divisibility", 0)))
        self.attribute_branch = attribute_branch

    @classmethod
    def base_config(cls, cfg, uses_rois: bool):
        """Arguments of :class:`PersonSearchBase` from ``cfg`` (already through :func:`resolve_num_pids`)."""
        backbone = build_backbone(cfg)
        attribute_branch = None
        if cfg.MODEL.ATTRIBUTES.ENABLED:
            if not uses_rois:
                raise ValueError(
                    f"MODEL.ATTRIBUTES.ENABLED needs the NAE branch's sampled RoIs; "
                    f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE} has none (use ROIAlignPS or NAE)"
                )
            # Imported lazily: the attribute branch is optional and owned by another part of the plugin.
            from .attribute_branch import build_attribute_branch

            attribute_branch = build_attribute_branch(cfg, backbone.output_shape())
        return {
            "backbone": backbone,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.MODEL.PERSON_SEARCH.SIZE_DIVISIBILITY,
            "attribute_branch": attribute_branch,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ to implement
    def raw_losses(
        self, images: ImageList, features, gt_instances: List[Instances]
    ) -> Tuple[Dict[str, torch.Tensor], Optional[List[Instances]]]:
        """(unweighted task losses, sampled RoIs of the NAE branch or None)."""
        raise NotImplementedError

    def detect_and_embed(
        self, images: ImageList, features, embed_boxes: Optional[List[torch.Tensor]]
    ) -> Tuple[List[Instances], Optional[List[torch.Tensor]]]:
        """Detections per image (network-input coords; pred_boxes, scores, pred_classes, embeddings) and,
        when ``embed_boxes`` (network-input coords, per image (Q_i, 4)) is given, their embeddings."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """Args:
            batched_inputs: detectron2 dicts with ``image`` (CHW, cfg.INPUT.FORMAT); training: ``instances``
                with gt_boxes, gt_classes, gt_pids (int64, -1 unlabeled) [, gt_attributes]; inference:
                ``height``, ``width`` (output size) and optionally ``embed_boxes`` (Q, 4) in original pixels.
        Returns:
            training: weighted losses, one entry per task (galw_d2/tasks.py names). Inference: per image
            ``{"instances": Instances(pred_boxes, scores, pred_classes, embeddings (N, D))}`` in the
            (height, width) frame, plus ``"box_embeddings"`` (Q, D) when the input had ``embed_boxes``.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if self.training:
            gt = []
            for i, x in enumerate(batched_inputs):
                inst = x.get("instances")
                if inst is None or not inst.has("gt_boxes") or not inst.has("gt_pids"):
                    raise ValueError(
                        f"{type(self).__name__}: training input {i} needs 'instances' with gt_boxes and "
                        "gt_pids (int64, -1 = unlabeled); see galw_d2.data.PersonSearchDatasetMapper"
                    )
                gt.append(inst.to(self.device))
            raw, sampled = self.raw_losses(images, features, gt)
            if self.attribute_branch is not None:
                raw.update(self.attribute_branch(features, sampled))
            return raw
        return self.inference(batched_inputs, images, features)

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict], images: ImageList, features):
        has_q = [x.get("embed_boxes") is not None for x in batched_inputs]
        embed_boxes = None
        if any(has_q):
            embed_boxes = []
            for x, (h, w), q in zip(batched_inputs, images.image_sizes, has_q):
                b = (
                    torch.as_tensor(x["embed_boxes"], dtype=torch.float32, device=self.device).reshape(-1, 4)
                    if q
                    else torch.zeros((0, 4), device=self.device)
                )
                oh, ow = x.get("height", h), x.get("width", w)
                # Original pixels -> network input (the inverse of detector_postprocess's scaling).
                embed_boxes.append(b * b.new_tensor([w / ow, h / oh, w / ow, h / oh]))
        results, box_embs = self.detect_and_embed(images, features, embed_boxes)
        outputs = []
        for i, (x, r) in enumerate(zip(batched_inputs, results)):
            h, w = images.image_sizes[i]
            out = {"instances": detector_postprocess(r, x.get("height", h), x.get("width", w))}
            if has_q[i]:
                out["box_embeddings"] = box_embs[i]
            outputs.append(out)
        return outputs


def _combine(a: torch.Tensor, n: torch.Tensor, choice: str) -> torch.Tensor:
    if choice == "alignps":
        return F.normalize(a, dim=1)
    if choice == "nae":
        return F.normalize(n, dim=1)
    # Both L2-normalised, concatenated (512-d), renormalised: cosine = mean of the two cosines.
    return F.normalize(torch.cat([F.normalize(a, dim=1), F.normalize(n, dim=1)], dim=1), dim=1)


def _init_head_res5_from_backbone(model, incompatible_keys) -> None:
    """After ``load_state_dict``: if the checkpoint had the backbone's res5 but no ROI-head res5 (an
    ImageNet checkpoint), start the ROI head's res5 from the same weights, as ROI-AlignPS does."""
    name = f"roi_heads.{model.roi_heads.res5_name}."
    missing = incompatible_keys.missing_keys
    head_missing = [k for k in missing if k.startswith(name)]
    if not head_missing or any(k.startswith("backbone.res5.") for k in missing):
        return
    src = model.backbone.res5.state_dict()
    dst = model.roi_heads.res5_block.state_dict()
    if set(src) != set(dst) or any(src[k].shape != dst[k].shape for k in src):
        return  # different architectures: leave the head as initialised
    with torch.no_grad():
        for k, v in dst.items():
            if name + k in head_missing:
                v.copy_(src[k])
    for k in head_missing:
        missing.remove(k)
    logging.getLogger(__name__).info(f"{name[:-1]} initialised from backbone.res5 (not in the checkpoint)")


def _check_embedding(cfg) -> str:
    choice = str(cfg.MODEL.PERSON_SEARCH.EMBEDDING).lower()
    if choice not in EMBEDDING_CHOICES:
        raise ValueError(
            f"MODEL.PERSON_SEARCH.EMBEDDING={cfg.MODEL.PERSON_SEARCH.EMBEDDING!r}: expected one of {EMBEDDING_CHOICES}"
        )
    return choice


@META_ARCH_REGISTRY.register()
class NAE(PersonSearchBase):
    """NAE alone (Chen et al. 2020): RPN on C4 + :class:`~galw_d2.modeling.nae.NAEROIHeads` (t1..t5)."""

    @configurable
    def __init__(self, *, proposal_generator: nn.Module, roi_heads: nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads

    @classmethod
    def from_config(cls, cfg):
        cfg = resolve_num_pids(cfg)
        ret = cls.base_config(cfg, uses_rois=True)
        shape = ret["backbone"].output_shape()
        ret["proposal_generator"] = build_proposal_generator(cfg, shape)
        ret["roi_heads"] = build_roi_heads(cfg, shape)
        return ret

    def nae_losses(self, images, features, gt_instances):
        proposals, rpn_losses = self.proposal_generator(images, features, gt_instances)
        sampled, roi_losses = self.roi_heads(images, features, proposals, gt_instances)
        # detectron2's RPN already names its losses loss_rpn_cls / loss_rpn_loc (t1, t2).
        return {**rpn_losses, **roi_losses}, sampled

    def raw_losses(self, images, features, gt_instances):
        return self.nae_losses(images, features, gt_instances)

    def detect_and_embed(self, images, features, embed_boxes):
        proposals, _ = self.proposal_generator(images, features, None)
        results, _ = self.roi_heads(images, features, proposals)
        box_embs = None if embed_boxes is None else self.roi_heads.embed(features, embed_boxes)
        return results, box_embs


@META_ARCH_REGISTRY.register()
class AlignPS(PersonSearchBase):
    """AlignPS alone (Yan et al. 2021): :class:`~galw_d2.modeling.alignps.AlignPSBranch` on C3..C5 (t6..t10)."""

    @configurable
    def __init__(self, *, alignps: AlignPSBranch, **kwargs):
        super().__init__(**kwargs)
        self.alignps = alignps

    @classmethod
    def from_config(cls, cfg):
        cfg = resolve_num_pids(cfg)
        ret = cls.base_config(cfg, uses_rois=False)
        ret["alignps"] = AlignPSBranch(cfg, ret["backbone"].output_shape())
        return ret

    def raw_losses(self, images, features, gt_instances):
        return self.alignps(images, features, gt_instances), None

    def alignps_detect(self, images, features, embed_boxes):
        results, box_embs = self.alignps(images, features, embed_boxes=embed_boxes)
        for r in results:
            r.embeddings = r.reid_feats
            r.remove("reid_feats")
        return results, box_embs

    def detect_and_embed(self, images, features, embed_boxes):
        return self.alignps_detect(images, features, embed_boxes)


@META_ARCH_REGISTRY.register()
class ROIAlignPS(NAE, AlignPS):
    """ROI-AlignPS* (SPEC §1): AlignPS and NAE branches on one backbone, without the mutual-learning loss.

    Training: all ten task losses (t1..t10). Test: AlignPS detections, re-embedded by the NAE branch
    (RoIAlign on C4 -> res5 -> norm-aware embedding; no RPN); ``MODEL.PERSON_SEARCH.EMBEDDING`` picks
    the AlignPS, NAE or concatenated embedding, for detections and query boxes alike.
    """

    @configurable
    def __init__(self, *, embedding: str, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding
        self.register_load_state_dict_post_hook(_init_head_res5_from_backbone)

    @classmethod
    def from_config(cls, cfg):
        cfg = resolve_num_pids(cfg)
        ret = super().from_config(cfg)  # NAE's: backbone, RPN on C4, NAE ROI heads
        ret["alignps"] = AlignPSBranch(cfg, ret["backbone"].output_shape())
        ret["embedding"] = _check_embedding(cfg)
        return ret

    def raw_losses(self, images, features, gt_instances):
        losses, sampled = self.nae_losses(images, features, gt_instances)
        a = self.alignps(images, features, gt_instances)
        clash = set(a) & set(losses)
        if clash:  # never sum same-named losses of two branches
            raise RuntimeError(f"ROIAlignPS: both branches return {sorted(clash)}")
        losses.update(a)
        return losses, sampled

    def detect_and_embed(self, images, features, embed_boxes):
        results, a_box = self.alignps_detect(images, features, embed_boxes)
        if self.embedding != "alignps":
            n_det = self.roi_heads.embed(features, [r.pred_boxes.tensor for r in results])
            for r, n in zip(results, n_det):
                r.embeddings = _combine(r.embeddings, n, self.embedding)
        elif embed_boxes is None:
            return results, None
        box_embs = None
        if embed_boxes is not None:
            n_box = self.roi_heads.embed(features, embed_boxes) if self.embedding != "alignps" else a_box
            box_embs = [_combine(a, n, self.embedding) for a, n in zip(a_box, n_box)]
        return results, box_embs
