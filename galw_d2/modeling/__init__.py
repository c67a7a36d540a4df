"""Person-search models: NAE, AlignPS and ROI-AlignPS* as detectron2 meta-architectures.

Importing registers ``build_person_search_resnet_backbone`` (BACKBONE_REGISTRY), ``NAEROIHeads``
(ROI_HEADS_REGISTRY) and the meta-architectures ``ROIAlignPS``, ``NAE``, ``AlignPS``
(META_ARCH_REGISTRY).
"""

from . import backbone  # noqa: F401  (registers the backbone)
from .alignps import AlignPSBranch
from .meta_arch import NAE, AlignPS, PersonSearchBase, ROIAlignPS, resolve_num_pids
from .nae import NAEROIHeads, NormAwareEmbedding
from .oim import OIMMemory, oim_loss
from .protonorm import ProtoNorm1d
from .reid_head import REID_HEAD_REGISTRY, ReIDHead, build_reid_head

__all__ = [
    "ROIAlignPS",
    "NAE",
    "AlignPS",
    "PersonSearchBase",
    "AlignPSBranch",
    "NAEROIHeads",
    "NormAwareEmbedding",
    "OIMMemory",
    "oim_loss",
    "ProtoNorm1d",
    "REID_HEAD_REGISTRY",
    "ReIDHead",
    "build_reid_head",
    "resolve_num_pids",
]
