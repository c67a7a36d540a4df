"""galw_d2 config keys, added to a detectron2 ``CfgNode`` by :func:`add_galw_config`.

Each part of the plugin owns one small ``add_*_config`` function; ``add_galw_config`` combines them.
Every key has a comment; defaults are the paper's settings (SPEC §3, Sec. 4.2) unless stated.
Keys added here exist in detectron2 v0.6 and upstream main alike (no version-specific keys).
"""
from detectron2.config import CfgNode as CN

__all__ = [
    "add_galw_config",
    "add_data_config",
    "add_person_search_config",
    "add_alignps_config",
    "add_loss_weighting_config",
    "add_evaluation_config",
    "add_attribute_config",
]


def add_data_config(cfg: CN) -> None:
    """Dataset mapper and dataset-registration keys."""
    _C = cfg
    _C.INPUT.PERSON_SEARCH = CN()
    # Multi-scale training (Sec. 4.2): the long side is drawn uniformly from this [min, max] range
    # (the paper: 667..2000); the short side is scaled with it, keeping the aspect ratio.
    _C.INPUT.PERSON_SEARCH.TRAIN_LONG_SIDE_RANGE = (667, 2000)
    # Test-time resize: fit the image into (long, short) = 1500x900, keeping the aspect ratio.
    _C.INPUT.PERSON_SEARCH.TEST_SIZE = (1500, 900)
    # Horizontal flip probability during training.
    _C.INPUT.PERSON_SEARCH.FLIP_PROB = 0.5


def add_person_search_config(cfg: CN) -> None:
    """Person-search model keys (NAE, AlignPS, ROI-AlignPS*)."""
    _C = cfg
    _C.MODEL.PERSON_SEARCH = CN()
    # Number of labeled training identities = rows of the OIM lookup tables (CUHK-SYSU 5532, PRW 483).
    # 0 = take it from the training dataset's metadata (``num_train_pids``).
    _C.MODEL.PERSON_SEARCH.NUM_PIDS = 0


def add_alignps_config(cfg: CN) -> None:
    """AlignPS branch keys (AFA neck, FCOS head, focal-OIM, triplet)."""
    _C = cfg
    _C.MODEL.ALIGNPS = CN()
    # Embedding size of the AlignPS re-id feature (= AFA output channels, 256 in the paper).
    _C.MODEL.ALIGNPS.EMBED_DIM = 256
    # Backbone maps fed to the AFA neck, finest first, strides doubling (C3, C4, C5 = 8, 16, 32).
    # The finest one's stride is the stride of P3, the only level with targets / used at test.
    _C.MODEL.ALIGNPS.IN_FEATURES = ["res3", "res4", "res5"]
    # Channels of each AFA lateral conv; the concatenation at P3 has len(IN_FEATURES) x this many.
    _C.MODEL.ALIGNPS.AFA_CHANNELS = 256
    # Deformable 3x3 laterals and output conv in the AFA neck (paper: True). False = plain 3x3 convs
    # (cheaper for tiny CPU configs).
    _C.MODEL.ALIGNPS.NECK_DEFORMABLE = True
    # DCNv2 (modulated) instead of DCNv1 in the neck (the original AFA neck: DCNv1).
    _C.MODEL.ALIGNPS.NECK_MODULATED = False
    # Channels of the FCOS tower convs.
    _C.MODEL.ALIGNPS.HEAD_CONV_DIM = 256
    # Convs per FCOS tower (cls and reg), each conv3x3 + GN + ReLU (paper: 4).
    _C.MODEL.ALIGNPS.NUM_CONVS = 4
    # GroupNorm groups in the towers (paper: 32); must divide HEAD_CONV_DIM.
    _C.MODEL.ALIGNPS.NORM_GROUPS = 32
    # Make the last conv of each tower deformable (FCOS's dcn_on_last_conv, used by AlignPS).
    _C.MODEL.ALIGNPS.HEAD_DEFORMABLE_LAST = True
    # DCNv2 (modulated) for that conv (mmdet's FCOS default).
    _C.MODEL.ALIGNPS.HEAD_MODULATED = True
    # Initial foreground probability of the classifier bias (focal-loss prior).
    _C.MODEL.ALIGNPS.PRIOR_PROB = 0.01
    # FCOS centre sampling radius, in strides (0 = any location inside the box is positive).
    _C.MODEL.ALIGNPS.CENTER_SAMPLING_RADIUS = 1.5
    # Sigmoid focal loss of the classification (t6).
    _C.MODEL.ALIGNPS.FOCAL_ALPHA = 0.25
    _C.MODEL.ALIGNPS.FOCAL_GAMMA = 2.0
    # Focal-OIM (t9): logit scale, focal gamma, circular-queue size (CUHK-SYSU 5000, PRW 500) and LUT momentum.
    _C.MODEL.ALIGNPS.OIM_SCALE = 10.0
    _C.MODEL.ALIGNPS.OIM_FOCAL_GAMMA = 2.0
    _C.MODEL.ALIGNPS.OIM_QUEUE_SIZE = 5000
    _C.MODEL.ALIGNPS.OIM_MOMENTUM = 0.5
    # Margin of the batch-hard triplet loss (t10) on L2-normalised features.
    _C.MODEL.ALIGNPS.TRIPLET_MARGIN = 0.3
    # Inference: minimum classification probability of a candidate location (the ranking score is
    # cls x centerness), candidates kept before NMS, NMS IoU, detections kept per image.
    _C.MODEL.ALIGNPS.TEST_SCORE_THRESH = 0.05
    _C.MODEL.ALIGNPS.TEST_TOPK_CANDIDATES = 1000
    _C.MODEL.ALIGNPS.TEST_NMS_THRESH = 0.5
    _C.MODEL.ALIGNPS.DETECTIONS_PER_IMAGE = 100


def add_loss_weighting_config(cfg: CN) -> None:
    """GALW loss-weighting, gradient-recording and grouping keys."""
    _C = cfg
    _C.GALW = CN()
    # Loss weighting strategy: "fixed" (per-task weights), "ulwf" (Kendall et al.), "rulwf" (Eq. 5),
    # "galw" (grouped RULWF, Eq. 9).
    _C.GALW.STRATEGY = "fixed"


def add_evaluation_config(cfg: CN) -> None:
    """Person-search evaluation keys."""
    _C = cfg
    _C.TEST.PERSON_SEARCH = CN()
    # Detections with score below this are ignored by the search metrics. Always reported with results
    # (published code used 0.5 for NAE/SeqNet, 0.2 CUHK-SYSU / 0.15 PRW for AlignPS).
    _C.TEST.PERSON_SEARCH.DET_THRESH = 0.5
    # Upper-bound mode: the mapper hands the ground-truth boxes of every test image to the model as
    # ``embed_boxes`` and the evaluator scores them as the detections (separates re-id from detection).
    _C.TEST.PERSON_SEARCH.UPPER_BOUND = False


def add_attribute_config(cfg: CN) -> None:
    """Attribute branch (task t11) keys."""
    _C = cfg
    _C.MODEL.ATTRIBUTES = CN()
    # Train the ALM attribute branch (task t11) in the person-search model.
    _C.MODEL.ATTRIBUTES.ENABLED = False


def add_galw_config(cfg: CN) -> CN:
    """Add every galw_d2 key to ``cfg`` (in place) and return it.

    Example::

        from detectron2.config import get_cfg
        from galw_d2 import add_galw_config
        cfg = add_galw_config(get_cfg())
        cfg.merge_from_file("configs/Base-GALW.yaml")
    """
    add_data_config(cfg)
    add_person_search_config(cfg)
    add_alignps_config(cfg)
    add_loss_weighting_config(cfg)
    add_evaluation_config(cfg)
    add_attribute_config(cfg)
    return cfg
