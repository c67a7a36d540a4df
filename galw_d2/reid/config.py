"""Config of the Mancs re-id recipe (tools/train_reid.py): a detectron2/yacs ``CfgNode`` with galw_d2's
GALW keys (:func:`galw_d2.config.add_loss_weighting_config`) plus the keys of :func:`add_reid_config`.

Defaults are the Mancs paper's (ECCV 2018, Sec. 4.3): ResNet-50, 256x128 crops, PK = 16 x 4, Adam
3e-4, 160 epochs, curriculum t0 = 30, t1 = 60, a = 15, b = 0.001, margin 0.5, gamma 2,
lambda = (1, 1, 0.2). The short CPU configs scale T0/T1 with the schedule (docs/reid.md).
"""

from detectron2.config import CfgNode as CN

from galw_d2.config import add_loss_weighting_config

__all__ = ["add_reid_config", "get_reid_cfg", "REID_TASKS"]

#: the three Mancs tasks, in the order of the paper's L = l_rank L_rank + l_cls L_cls + l_att L_att
REID_TASKS = ("loss_rank", "loss_cls", "loss_att")


def add_reid_config(cfg: CN) -> CN:
    """Add the Mancs keys to ``cfg`` (in place; needs the GALW keys already there) and return it."""
    _C = cfg
    _C.OUTPUT_DIR = "output/reid"
    # Seed of python/numpy/torch RNGs (torchreid.reid.utils.set_random_seed): init, sampler, augmentation.
    _C.SEED = 0
    # torch CPU threads (torch.set_num_threads; 0 = torch's default).
    _C.NUM_THREADS = 0
    # Device: "cpu" or "cuda" (torchreid's use_gpu); the recipe itself is device agnostic.
    _C.DEVICE = "cpu"

    _C.MODEL = CN()
    # torchreid ResNet of the trunk: resnet18 / resnet34 / resnet50 (the paper: resnet50).
    _C.MODEL.BACKBONE = "resnet50"
    # Load torchreid's ImageNet weights into the trunk (downloads; off for CPU configs without network).
    _C.MODEL.PRETRAINED = False
    # Width-reduced trunk for CPU configs: output channels of layer1..layer4 ([] = torchreid's own
    # trunk, built through torchreid's model factory as "mancs_<BACKBONE>") and blocks per stage.
    _C.MODEL.RESNET_WIDTHS = []
    _C.MODEL.RESNET_BLOCKS = []
    # Stages followed by a fully attentional block; the attention branch pools each one (Sec. 3.2, 3.5).
    _C.MODEL.FAB_STAGES = ["layer2", "layer3", "layer4"]
    # Channel reduction of the FAB's hidden 1x1 conv (as SE's r).
    _C.MODEL.FAB_REDUCTION = 16
    # Rank-branch FC size (the test descriptor) and classification-branch hidden FC size (paper: 2048).
    _C.MODEL.RANK_DIM = 2048
    _C.MODEL.CLS_DIM = 2048
    # Replace the ReLU after the last conv block with PReLU (Sec. 4.3).
    _C.MODEL.PRELU = True

    _C.LOSS = CN()
    # Triplet margin m of the rank loss (Sec. 4.3: 0.5).
    _C.LOSS.MARGIN = 0.5
    # Focal-loss gamma of the classification branch (Sec. 4.3: 2).
    _C.LOSS.FOCAL_GAMMA = 2.0
    # Curriculum sampling of the negatives (Sec. 3.3), in epochs: mu = [N_n - N_n t / T0]_+,
    # sigma = A * B ** ((t - T0) / (T1 - T0)). Short schedules keep T0/T1 at the paper's fractions of
    # training (30/160 and 60/160 of SOLVER.MAX_EPOCH; galw_d2.reid.curriculum.scale_schedule).
    _C.LOSS.CURRICULUM_T0 = 30.0
    _C.LOSS.CURRICULUM_T1 = 60.0
    _C.LOSS.CURRICULUM_A = 15.0
    _C.LOSS.CURRICULUM_B = 0.001
    # Positives per anchor: "all" (P(K-1)K triplets, the paper's normalisation) or "random" (one).
    _C.LOSS.POSITIVES = "all"

    _C.DATA = CN()
    # torchreid data root: datasets are read from ROOT/<dataset folder> (torchreid's layouts:
    # market1501/, dukemtmc-reid/, cuhk03/; SynthPS exports: ROOT/<name>/ in the Market-1501 layout).
    _C.DATA.ROOT = "datasets"
    # torchreid dataset names for training (SOURCES) and evaluation (TARGETS, [] = SOURCES).
    # "synthps_reid_<preset>" names are SynthPS crops (galw_d2.reid.data), registered on demand.
    _C.DATA.SOURCES = ["market1501"]
    _C.DATA.TARGETS = []
    # SynthPS sources missing under ROOT are generated (PRW layout, this seed) and exported.
    _C.DATA.SYNTHPS_SEED = 0
    # CUHK03 (torchreid): labeled boxes instead of detected, and the classic 1367/100 split.
    _C.DATA.CUHK03_LABELED = False
    _C.DATA.CUHK03_CLASSIC_SPLIT = False
    # PK sampling (torchreid RandomIdentitySampler): P identities x K images per batch
    # (Market/Duke 16 x 4, CUHK03 32 x 8).
    _C.DATA.P = 16
    _C.DATA.K = 4
    _C.DATA.BATCH_SIZE_TEST = 128
    _C.DATA.NUM_WORKERS = 0

    _C.INPUT = CN()
    # Crop size (height, width) (the paper: 256 x 128).
    _C.INPUT.SIZE = (256, 128)
    # Random resized crop: area fraction range and height/width aspect range (Sec. 4.3: [0.64, 1],
    # [2, 3]); then resized back to INPUT.SIZE.
    _C.INPUT.CROP_SCALE = (0.64, 1.0)
    _C.INPUT.CROP_ASPECT = (2.0, 3.0)
    _C.INPUT.FLIP_PROB = 0.5
    # Random erasing probability (Zhong et al.; on in the paper).
    _C.INPUT.RANDOM_ERASING_PROB = 0.5

    _C.SOLVER = CN()
    # Adam, lr 3e-4 (Sec. 4.3); weight decay is our choice (torchreid's default 5e-4).
    _C.SOLVER.BASE_LR = 3e-4
    _C.SOLVER.WEIGHT_DECAY = 5e-4
    _C.SOLVER.MAX_EPOCH = 160
    # Epochs where the lr is multiplied by GAMMA ([] = constant lr; the paper does not give a schedule).
    _C.SOLVER.STEPS = []
    _C.SOLVER.GAMMA = 0.1
    # Gradient clipping (Sec. 4.3 clips; the threshold is not given): max total L2 norm (0 = off).
    _C.SOLVER.CLIP_GRAD_NORM = 10.0
    # Write OUTPUT_DIR/last_checkpoint.pth every this many epochs (resume point).
    _C.SOLVER.CHECKPOINT_PERIOD = 1

    _C.TEST = CN()
    # Evaluate every this many epochs (0 = only at the end).
    _C.TEST.EVAL_PERIOD = 0
    # torchreid.reid.metrics.compute_distance_matrix metric and L2-normalisation of the descriptors.
    _C.TEST.DIST_METRIC = "euclidean"
    _C.TEST.NORMALIZE_FEATURE = False
    # CMC ranks reported.
    _C.TEST.RANKS = [1, 5, 10]

    # Loss weighting: the three Mancs tasks; fixed = the paper's lambdas (1, 1, 0.2). Adaptive
    # strategies weight the unweighted losses (as the detectron2 side, GALW Eq. 4-5).
    _C.GALW.TASKS = list(REID_TASKS)
    _C.GALW.FIXED_WEIGHTS = ["loss_rank=1.0", "loss_cls=1.0", "loss_att=0.2"]
    # The person-search presets (Table 1) name no re-id task: start from all ones.
    _C.GALW.FIXED.PRESET = "ones"
    # The shared parameters of the gradient-trend recorder: the trunk's residual stages.
    _C.GALW.RECORD.SHARED_PARAMS = [r"^backbone\.layer[1-4]\."]
    _C.GALW.RECORD.PERIOD = 5
    # With 3 tasks, G = 2 is the only non-trivial grouping (docs/reid.md).
    _C.GALW.GROUPING.NUM_GROUPS = 2
    return cfg


def get_reid_cfg() -> CN:
    """A fresh reid config: GALW keys + :func:`add_reid_config` (paper defaults)."""
    cfg = CN()
    cfg.VERSION = 2  # detectron2's CfgNode.merge_from_file checks the config version
    add_loss_weighting_config(cfg)
    add_reid_config(cfg)
    return cfg
