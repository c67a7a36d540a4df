"""NAE branch (SPEC §1): RPN on C4 (detectron2's RPN, configured by YAML), C4 ROI heads with the
person-search sampling, norm-aware embedding, BN box regression and OIM."""

from .heads import BNBoxRegressor, NormAwareEmbedding
from .roi_heads import NAEROIHeads

__all__ = ["NAEROIHeads", "NormAwareEmbedding", "BNBoxRegressor"]
