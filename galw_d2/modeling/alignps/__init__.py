"""AlignPS branch (SPEC §1): AFA neck, FCOS head on P3, focal-OIM and triplet losses."""

from .afa_neck import AFANeck
from .branch import AlignPSBranch
from .deform_conv import DeformConv, make_conv3x3
from .fcos_head import FCOSHead
from .losses import batch_hard_triplet_loss, triplet_with_table_rows
from .targets import centerness_targets, fcos_targets, locations

__all__ = [
    "AlignPSBranch",
    "AFANeck",
    "FCOSHead",
    "DeformConv",
    "make_conv3x3",
    "batch_hard_triplet_loss",
    "triplet_with_table_rows",
    "fcos_targets",
    "centerness_targets",
    "locations",
]
