"""Dataset mapper for person search (docs/DESIGN.md "Datasets").

Training: multi-scale resize (long side drawn from ``INPUT.PERSON_SEARCH.TRAIN_LONG_SIDE_RANGE``,
aspect kept, Sec. 4.2) and horizontal flip; boxes follow the image through detectron2's transforms.
Test: fit into ``INPUT.PERSON_SEARCH.TEST_SIZE`` (long, short) = 1500 x 900; query records carry their
query box (original pixels) as ``embed_boxes``.
"""

import copy
import logging
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["PersonSearchDatasetMapper", "RandomLongSideResize", "build_person_search_augmentations"]


class RandomLongSideResize(T.Augmentation):
    """Resize so that the long side is a random length, keeping the aspect ratio.

    Args:
        lengths: ``sample_style="range"``: [min, max] (inclusive, uniform integer);
            ``"choice"``: the lengths to pick from.
    """

    def __init__(self, lengths: Sequence[int], sample_style: str = "range", interp=None):
        super().__init__()

        lengths = [int(v) for v in lengths]
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style {sample_style!r}: expected 'range' or 'choice'")
        if sample_style == "range" and (len(lengths) != 2 or lengths[0] > lengths[1] or lengths[0] <= 0):
            raise ValueError(f"long-side range {lengths}: expected [min, max] with 0 < min <= max")
        if sample_style == "choice" and (not lengths or min(lengths) <= 0):
            raise ValueError(f"long-side choices {lengths}: expected positive lengths")
        self.lengths, self.sample_style = lengths, sample_style
        self.interp = Image.BILINEAR if interp is None else interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        if self.sample_style == "range":
            size = np.random.randint(self.lengths[0], self.lengths[1] + 1)
        else:
            size = int(np.random.choice(self.lengths))
        scale = size / max(h, w)
        newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
        return T.ResizeTransform(h, w, newh, neww, self.interp)


def build_person_search_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """The augmentations of :class:`PersonSearchDatasetMapper` from ``cfg.INPUT.PERSON_SEARCH``."""
    ps = cfg.INPUT.PERSON_SEARCH
    if is_train:
        augs = [RandomLongSideResize(ps.TRAIN_LONG_SIDE_RANGE, ps.get("TRAIN_RESIZE_STYLE", "range"))]
        if ps.FLIP_PROB > 0:
            augs.append(T.RandomFlip(prob=ps.FLIP_PROB, horizontal=True, vertical=False))
        return augs
    long_side, short_side = (int(v) for v in ps.TEST_SIZE)
    # fit into long x short: scale = min(short / min(h, w), long / max(h, w))
    return [T.ResizeShortestEdge(short_side, max_size=long_side, sample_style="choice")]


class PersonSearchDatasetMapper:
    """Map a person-search record (``galw_d2.data`` loaders) to the model input.

    Output: ``image`` uint8 (C, H, W) in ``cfg.INPUT.FORMAT``, ``height``/``width`` (original),
    ``file_name``, ``image_name``, ``image_id``, ``camera_id``, ``is_query``, ``query_index`` (-1 for
    non-queries), and
      * train: ``instances``: Instances(gt_boxes, gt_classes (zeros), gt_pids int64,
        gt_attributes float32 (K, A) when the annotations carry ``attributes``), in resized pixels;
        persons whose box is empty after the transform are removed.
      * test: ``embed_boxes`` float32 (Q, 4) in ORIGINAL pixels: the record's ``query_boxes`` for a
        query record; with ``upper_bound`` the GT boxes (annotation order) of a non-query record.
        Absent otherwise.
    """

    @configurable
    def __init__(self, is_train: bool, *, augmentations: List, image_format: str, upper_bound: bool = False):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.upper_bound = upper_bound
        logger.info("[PersonSearchDatasetMapper] %s augmentations: %s", "train" if is_train else "test", augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ps_test = cfg.TEST.get("PERSON_SEARCH", None)
        return {
            "is_train": is_train,
            "augmentations": build_person_search_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "upper_bound": bool(ps_test.get("UPPER_BOUND", False)) if ps_test is not None else False,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        record = copy.deepcopy(dataset_dict)
        try:
            image = utils.read_image(record["file_name"], format=self.image_format)
        except (OSError, SyntaxError, ValueError) as e:
            # PIL's errors ("image file is truncated ...") do not name the file; a dataset has thousands
            raise OSError(
                f"cannot read {'training' if self.is_train else 'test'} image {record['file_name']}: {e} "
                "(truncated or corrupt file: regenerate or replace it)"
            ) from e
        utils.check_image_size(record, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        out = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": record["height"],
            "width": record["width"],
            "file_name": record["file_name"],
            "image_name": record.get("image_name", record["file_name"]),
            "image_id": record.get("image_id"),
            "camera_id": record.get("camera_id", -1),
            "is_query": bool(record.get("is_query", False)),
            "query_index": int(record.get("query_index", -1)),
        }
        annos = record.get("annotations", [])
        if self.is_train:
            out["instances"] = self._instances(annos, transforms, image.shape[:2], record)
        else:
            if out["is_query"]:
                boxes = np.asarray(record["query_boxes"], dtype=np.float32).reshape(-1, 4)
                out["embed_boxes"] = torch.as_tensor(boxes)
                out["query_pid"] = int(record.get("query_pid", -1))
            elif self.upper_bound:
                boxes = np.asarray([a["bbox"] for a in annos], dtype=np.float32).reshape(-1, 4)
                out["embed_boxes"] = torch.as_tensor(boxes)
        return out

    @staticmethod
    def _instances(annos, transforms, image_size, record) -> Instances:
        for a in annos:  # integer boxes would be truncated in place by the transforms
            a["bbox"] = np.asarray(a["bbox"], dtype=np.float64)
        annos = [utils.transform_instance_annotations(a, transforms, image_size) for a in annos]
        inst = Instances(image_size)
        boxes = np.asarray([a["bbox"] for a in annos], dtype=np.float32).reshape(-1, 4)
        inst.gt_boxes = Boxes(torch.as_tensor(boxes))
        inst.gt_classes = torch.zeros(len(annos), dtype=torch.int64)
        inst.gt_pids = torch.as_tensor([int(a["person_id"]) for a in annos], dtype=torch.int64)
        with_attr = ["attributes" in a for a in annos]
        if any(with_attr):
            if not all(with_attr):
                raise ValueError(
                    f"image {record.get('image_name', record['file_name'])}: "
                    "some persons have 'attributes' and some do not"
                )
            inst.gt_attributes = torch.as_tensor([a["attributes"] for a in annos], dtype=torch.float32)
        return utils.filter_empty_instances(inst)
