"""Pedestrian attributes: ALM modules, the stand-alone recognizer (pseudo-labeler), metrics, data,
losses and attribute pseudo-labels for person-search datasets (task t11). See docs/attributes.md.

Submodules import torch only; ``recognizer`` imports torchreid lazily when a model is built.
"""

from .alm import ALM, MultiLevelALM, combine_levels  # noqa: F401
from .losses import alm_bce_weights, attribute_bce, multi_level_bce, positive_ratio  # noqa: F401
from .metrics import attribute_metrics, instance_based_metrics, label_based_metrics  # noqa: F401
