"""Registration of person-search datasets in detectron2's catalogs, and protocol look-up by name.

Registering never parses anything: the split loaders run when ``DatasetCatalog.get`` is called, and
metadata that needs the annotations (``num_train_pids``, ``attribute_names``, ``gallery_sizes``) is
computed on first access (then kept). A missing root raises an error telling how to get the data.

Every registration fixes a ``box_convention`` ("standard", the default: the published protocol's
integer boxes; or "geometric"), kept in the metadata and used by the splits and by
:func:`get_search_protocol` alike (docs/datasets.md "Box conventions"). To train / evaluate under the
geometric boxes, register the root under another prefix and name that prefix in ``cfg.DATASETS``.
"""

import functools
import logging
import math
import os
from typing import Callable, Dict, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

from .datasets import (
    cuhk_sysu_gallery_sizes,
    cuhk_sysu_num_train_pids,
    load_cuhk_sysu,
    load_cuhk_sysu_protocol,
    load_prw,
    load_prw_protocol,
    prw_num_train_pids,
)
from .datasets.common import BOX_CONVENTIONS, DatasetNotFoundError, check_box_convention, load_attribute_file
from .protocol import SearchProtocol

logger = logging.getLogger(__name__)

__all__ = [
    "epoch_iters_from_cfg",
    "register_cuhk_sysu",
    "register_prw",
    "register_synthps",
    "get_search_protocol",
    "SPLITS",
    "BOX_CONVENTIONS",
]

#: the registered splits: ``<prefix>_<split>``; "test" = every gallery record, then every query record
SPLITS = ("train", "gallery", "query", "test")

_FORMATS = {
    "cuhk_sysu": (load_cuhk_sysu, cuhk_sysu_num_train_pids),
    "prw": (load_prw, prw_num_train_pids),
}


class _LazyMetadata(Metadata):
    """detectron2 ``Metadata`` whose listed fields are computed on first access (then stored).

    A provider raising AttributeError means "this dataset has no such field" (``meta.get`` -> default).
    """

    def __getattr__(self, key):
        lazy = self.__dict__.get("_lazy_fields")
        if lazy and key in lazy:
            value = lazy[key]()
            self.__dict__[key] = value
            return value
        return super().__getattr__(key)

    def as_dict(self):
        d = dict(self.__dict__)
        d.pop("_lazy_fields", None)
        return d


def _check_root(name: str, root: str, hint: str) -> None:
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"dataset '{name}': root {os.path.abspath(root)} does not exist. {hint}")


def _load_split(name, fmt, root, split, hint, convention):
    _check_root(name, root, hint)
    return _FORMATS[fmt][0](root, split, box_convention=convention)


def _attribute_names(name, root):
    attr = load_attribute_file(root) if os.path.isdir(root) else None
    if attr is None:
        raise AttributeError(f"dataset '{name}' has no attribute labels ({root}/synthps_attributes.json)")
    return attr["attribute_names"]


def _register(fmt: str, root: str, prefix: str, hint: str, extra: Dict, convention: str) -> None:
    check_box_convention(convention)  # at registration: a typo fails before any training starts
    num_pids_fn = _FORMATS[fmt][1]
    for split in SPLITS:
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(_load_split, name, fmt, root, split, hint, convention))
        meta = _LazyMetadata(name=name)
        lazy: Dict[str, Callable] = {
            "num_train_pids": lambda n=name: (_check_root(n, root, hint), num_pids_fn(root, convention))[1],
            "attribute_names": lambda n=name: _attribute_names(n, root),
        }
        if fmt == "cuhk_sysu":
            lazy["gallery_sizes"] = lambda: cuhk_sysu_gallery_sizes(root)
        meta.__dict__["_lazy_fields"] = lazy
        MetadataCatalog[name] = meta
        meta.set(
            thing_classes=["person"],
            dataset_type=fmt,
            root=root,
            split=split,
            dataset_prefix=prefix,
            evaluator_type="person_search",
            protocol_dir=os.path.join(root, "annotation", "test") if fmt == "cuhk_sysu" else root,
            missing_hint=hint,
            box_convention=convention,
            **extra,
        )


def register_cuhk_sysu(root: str, prefix: str = "cuhk_sysu", box_convention: str = "standard", **metadata) -> None:
    """Register ``<prefix>_{train,gallery,query,test}`` for a CUHK-SYSU root (replacing earlier ones).

    Args:
        box_convention: "standard" (published protocol: integer boxes) or "geometric" (float, clipped
            at 0); see :func:`galw_d2.data.datasets.common.convert_boxes`.
        metadata: added to the metadata of every split.
    """
    hint = metadata.pop("missing_hint", None) or (
        "Download CUHK-SYSU and unpack it there (see datasets/README.md), set $DETECTRON2_DATASETS, or "
        "call galw_d2.data.register_cuhk_sysu(ROOT, prefix) for another location."
    )
    _register("cuhk_sysu", root, prefix, hint, metadata, box_convention)


def register_prw(root: str, prefix: str = "prw", box_convention: str = "standard", **metadata) -> None:
    """Register ``<prefix>_{train,gallery,query,test}`` for a PRW root (replacing earlier ones).

    Args:
        box_convention: "standard" (published protocol: annotation rows clipped at 0 before
            x2 = x + w, integer boxes; queries converted, truncated, then clipped) or "geometric"
            (float, clipped at 0 after the conversion).
        metadata: added to the metadata of every split.
    """
    hint = metadata.pop("missing_hint", None) or (
        "Download PRW and unpack it there (see datasets/README.md), set $DETECTRON2_DATASETS, or "
        "call galw_d2.data.register_prw(ROOT, prefix) for another location."
    )
    _register("prw", root, prefix, hint, metadata, box_convention)


def register_synthps(
    root: str, fmt: str, prefix: str, preset: Optional[str] = None, box_convention: str = "standard", **metadata
) -> None:
    """Register a generated SynthPS root written in the ``fmt`` layout ("cuhk_sysu" | "prw").

    The metadata gets ``synthps=True`` (and ``synthps_preset`` when given). SynthPS boxes are
    integers inside the image, so both box conventions give the same boxes.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"SynthPS format {fmt!r}: expected 'cuhk_sysu' or 'prw'")
    cmd = f"python tools/make_synthps.py --output {root} --format {fmt} --preset {preset or 'tiny'} --seed 0"
    metadata.setdefault("missing_hint", f"Generate it with: {cmd}")
    metadata["synthps"] = True
    if preset is not None:
        metadata["synthps_preset"] = preset
    (register_cuhk_sysu if fmt == "cuhk_sysu" else register_prw)(root, prefix, box_convention, **metadata)


def get_search_protocol(
    dataset_name: str, gallery_size: int = 100, subset: Optional[str] = None, cross_camera: bool = False
) -> SearchProtocol:
    """The search protocol of a registered dataset (any of its splits' names).

    Args:
        gallery_size: CUHK-SYSU layout: N of TestG{N}.mat, -1 = full test set.
        subset: CUHK-SYSU layout: "Occlusion" / "Resolution".
        cross_camera: PRW layout: gallery = other cameras only.
    """
    meta = MetadataCatalog.get(dataset_name)
    fmt = meta.get("dataset_type")
    if fmt not in _FORMATS:
        raise KeyError(
            f"dataset '{dataset_name}' is not a person-search dataset registered by galw_d2 "
            f"(metadata dataset_type={fmt!r}); register it with galw_d2.data.register_cuhk_sysu / register_prw"
        )
    _check_root(dataset_name, meta.root, meta.get("missing_hint", ""))
    convention = meta.get("box_convention", "standard")  # the splits' convention: same boxes in both
    if fmt == "cuhk_sysu":
        if cross_camera:
            raise ValueError(f"dataset '{dataset_name}': cross_camera applies to the PRW layout only")
        return load_cuhk_sysu_protocol(meta.root, gallery_size=gallery_size, subset=subset, box_convention=convention)
    if subset is not None:
        raise ValueError(f"dataset '{dataset_name}': subsets ({subset!r}) exist for the CUHK-SYSU layout only")
    return load_prw_protocol(meta.root, cross_camera=cross_camera, box_convention=convention)


def epoch_iters_from_cfg(cfg) -> int:
    """GALW.RECORD.EPOCH_ITERS, or ceil(#images of DATASETS.TRAIN / SOLVER.IMS_PER_BATCH)."""
    if cfg.GALW.RECORD.EPOCH_ITERS > 0:
        return int(cfg.GALW.RECORD.EPOCH_ITERS)
    n = sum(len(DatasetCatalog.get(d)) for d in cfg.DATASETS.TRAIN)
    if n == 0:
        raise ValueError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} is empty; set GALW.RECORD.EPOCH_ITERS")
    return max(1, math.ceil(n / cfg.SOLVER.IMS_PER_BATCH))
