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
    "add_nae_config",
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
    # How TRAIN_LONG_SIDE_RANGE is read: "range" = [min, max], uniform integer; "choice" = pick one of
    # the listed long-side lengths.
    _C.INPUT.PERSON_SEARCH.TRAIN_RESIZE_STYLE = "range"
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
    # Test-time embedding of the ROI-AlignPS* model: "alignps" (P3 feature, 256-d), "nae" (NAE
    # re-embedding of the AlignPS boxes, 256-d) or "concat" (both L2-normalised, concatenated,
    # renormalised: 512-d). NAE-only / AlignPS-only models ignore it.
    _C.MODEL.PERSON_SEARCH.EMBEDDING = "concat"
    # Batches are padded to a multiple of this (AlignPS / mmdet pad to 32; the AFA neck needs
    # C3..C5 sizes to halve exactly).
    _C.MODEL.PERSON_SEARCH.SIZE_DIVISIBILITY = 32
    # Width-configurable ResNet (backbone "build_person_search_resnet_backbone", also used for the NAE
    # res5 ROI head): output channels of res2..res5 ([] = detectron2's widths from MODEL.RESNETS) and
    # blocks per stage ([] = by MODEL.RESNETS.DEPTH). Lets tiny CPU configs use narrow, shallow nets.
    _C.MODEL.PERSON_SEARCH.RESNET_WIDTHS = []
    _C.MODEL.PERSON_SEARCH.RESNET_BLOCKS = []


def add_nae_config(cfg: CN) -> None:
    """NAE branch keys (norm-aware embedding ROI head on C4, OIM)."""
    _C = cfg
    _C.MODEL.NAE = CN()
    # Size of the norm-aware embedding: half projected from the pooled res4 RoI feature, half from
    # the pooled res5 output (NAE: 128 + 128 = 256).
    _C.MODEL.NAE.EMBED_DIM = 256
    # OIM (t5): logit scale, circular-queue size (CUHK-SYSU 5000, PRW 500), LUT momentum.
    _C.MODEL.NAE.OIM_SCALE = 30.0
    _C.MODEL.NAE.OIM_QUEUE_SIZE = 5000
    _C.MODEL.NAE.OIM_MOMENTUM = 0.5
    # Re-id head of t5 (galw_d2/modeling/reid_head.py, docs/models.md): "oim" (NAE's BatchNorm1d +
    # OIM), "protonorm" (OIMNet++ ProtoNorm instead of that BatchNorm1d), "loim" (localization-aware
    # OIM: IoU-driven LUT update and loss weights) or "oimnet++" (both). The loss name stays loss_nae_oim.
    _C.MODEL.NAE.REID_HEAD = "oim"
    # ProtoNorm: EMA factor of its running statistics (BatchNorm's 0.1).
    _C.MODEL.NAE.PROTONORM_MOMENTUM = 0.1
    # LOIM: s = clamp(IoU with the matched GT, LOIM_MIN_IOU, 1 - LOIM_EPS) per positive RoI; LUT keep factor
    # 1 - s (OIMNet++ public code: min 0.7, eps 0.1). LOIM_WEIGHT_LOSS: also weight its OIM term by s
    # (the paper's description; the public code does not).
    _C.MODEL.NAE.LOIM_MIN_IOU = 0.7
    _C.MODEL.NAE.LOIM_EPS = 0.1
    _C.MODEL.NAE.LOIM_WEIGHT_LOSS = True
    # Target stds of the ROI box regression (NAE: 0.1, 0.1, 0.2, 0.2) = detectron2 weights 1/std.
    _C.MODEL.NAE.BBOX_REG_STDS = (0.1, 0.1, 0.2, 0.2)
    # NMS IoU of the NAE-only model's test detections (NAE: 0.4).
    _C.MODEL.NAE.TEST_NMS_THRESH = 0.4
    # Minimum detection score (sigmoid of the BN'd norm) of the NAE-only model's test detections.
    _C.MODEL.NAE.TEST_SCORE_THRESH = 0.05


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
    # A training run (resume=False) into an OUTPUT_DIR that already holds checkpoints of an earlier
    # run (last_checkpoint / model_final.pth) is refused unless this is True; then the earlier
    # last_checkpoint and model_*.pth are deleted first (a kill cannot resume into the old run).
    _C.GALW.OVERWRITE_OUTPUT = False
    # Divergence: training stops (FloatingPointError naming the loss and the iteration) when a loss is
    # non-finite, a weight or buffer becomes non-finite, or the sum of the unweighted losses exceeds
    # DIVERGENCE_RATIO x its value at the first iteration, at least 1 (0 disables the ratio test).
    _C.GALW.DIVERGENCE_RATIO = 1000.0
    # Loss weighting strategy, a name of galw_d2.galw.WEIGHTING_REGISTRY: "fixed" (per-task weights),
    # "ulwf" (Kendall et al.), "rulwf" (Eq. 5), "galw" (grouped RULWF, Eq. 9), "ulwf_grouped" (Table 3's
    # ULWF + grouping), and every method registered later (docs/galw.md). Models always return their
    # UNWEIGHTED task losses (the paper's L_ori_i); the strategy alone weights them.
    _C.GALW.STRATEGY = "fixed"
    # Loss names that get a learned log sigma (ulwf/rulwf). [] = every task of galw_d2/tasks.py (galw:
    # the names in GROUPS). A loss of the model missing here is an error naming it.
    _C.GALW.TASKS = []
    # Groups of strategy "galw": a list of lists of loss names covering every task once, e.g.
    # [["loss_roi_box_reg"], ["loss_rpn_cls", "loss_rpn_loc"]]; written by tools/group_tasks.py.
    _C.GALW.GROUPS = []
    # Kind (k of Eq. 5: "cls" k=1, "reg" k=2) of losses not in galw_d2/tasks.py.
    _C.GALW.DEFAULT_KIND = "cls"
    # Per-loss kind overrides, "name=cls" / "name=reg" strings (e.g. ["loss_box_reg=reg"]).
    _C.GALW.TASK_KINDS = []
    # Strategy "fixed": a named row of galw_d2/tasks.py FIXED_WEIGHT_PRESETS (unlisted losses weigh 1):
    # "table1" (default: Table 1's ROI-AlignPS* baseline row w = (1,1,10,1,10,10,10,10,10,1), 50.30 mAP),
    # "table1_w3_1" (49.79), "roi_alignps_code" (public ROI-AlignPS code: t3 = 10 only), "alignps"
    # (AlignPS alone, all ones: Table 1 row 1), "nae" (NAE's code: all ones), "ones".
    _C.GALW.FIXED = CN()
    _C.GALW.FIXED.PRESET = "table1"
    # Strategy "fixed": per-loss overrides of the preset, "name=weight" strings (e.g. ["loss_triplet=2"]).
    _C.GALW.FIXED_WEIGHTS = []
    # lambda of the regulariser lambda * |sigma - 1| (Eq. 5; the paper: 1). Ignored by "ulwf".
    _C.GALW.LAMBDA = 1.0
    # Initial log sigma (0 = sigma 1, the paper).
    _C.GALW.INIT_LOG_SIGMA = 0.0
    # Optional [lo, hi] range log sigma is projected into after every optimizer step; [] = no clamp.
    _C.GALW.LOG_SIGMA_CLAMP = []
    # Learning rate of the learned weights in the model optimizer (log sigma; GradNorm's w) = SOLVER.BASE_LR x
    # this (always without weight decay).
    _C.GALW.LR_FACTOR = 1.0

    # Other multi-task methods (docs/galw.md, "Other multi-task methods"). Each weights one slot per task,
    # or per group of GALW.GROUPS when that is set (the group's loss = the sum of its tasks' losses).
    # Strategy "dwa" (Liu et al., CVPR 2019, Eq. 1): w_k = K softmax_k(r(t-1) / T), r_k = L_k(t-1) / L_k(t-2)
    # of per-epoch average losses; w = 1 in the first two epochs.
    _C.GALW.DWA = CN()
    # Temperature T (the paper: 2).
    _C.GALW.DWA.TEMPERATURE = 2.0
    # Iterations per DWA epoch; 0 = GALW.RECORD.EPOCH_ITERS, and if that is 0 too, one pass over DATASETS.TRAIN.
    _C.GALW.DWA.EPOCH_ITERS = 0
    # Strategy "rlw" (Lin et al., TMLR 2022): weights = WEIGHT_SUM x softmax(p), p ~ N(0, I) every step.
    _C.GALW.RLW = CN()
    # Sum of the random weights (the paper: 1; the number of tasks keeps the plain sum's scale on average).
    _C.GALW.RLW.WEIGHT_SUM = 1.0
    # Strategy "famo" (Liu et al., NeurIPS 2023): weights softmax(xi) of logits learned by their own Adam
    # from the change of the log losses between consecutive steps (not by the model optimizer).
    _C.GALW.FAMO = CN()
    # Adam learning rate of the logits xi (the paper / public code: 0.025).
    _C.GALW.FAMO.LR = 0.025
    # Weight decay gamma of the logits (the public run scripts: 0.001).
    _C.GALW.FAMO.GAMMA = 0.001
    # Added to L - b inside the log (public code: 1e-8).
    _C.GALW.FAMO.EPS = 1e-8
    # Lower bounds b of the losses, "name=value" strings (others 0); every loss must stay above its b.
    _C.GALW.FAMO.MIN_LOSSES = []
    # Strategy "gradnorm" (Chen et al., ICML 2018): learned w_i (model optimizer, lr BASE_LR x LR_FACTOR)
    # trained on sum_i |G_i - mean(G) r_i^alpha|, renormalised to sum T after each step.
    _C.GALW.GRADNORM = CN()
    # Asymmetry alpha (the paper: 1.5 on NYUv2).
    _C.GALW.GRADNORM.ALPHA = 1.5
    # Regexes of the shared weights W whose gradient norms G_i are balanced; [] = GALW.RECORD.SHARED_PARAMS.
    # The paper uses the last shared layer (cheaper: the per-task backward passes stop there).
    _C.GALW.GRADNORM.SHARED_PARAMS = []
    # Floor of w before the renormalisation (our safeguard: a negative weight would ascend that loss).
    _C.GALW.GRADNORM.MIN_WEIGHT = 0.0
    # Gradient-aggregation strategies through torchjd: "upgrad", "pcgrad", "mgda", "imtl_g", "aligned_mtl",
    # "dualproj", "cagrad" (needs cvxpy). The shared parameters get the aggregated per-task Jacobian, the
    # others the plain sum's gradient.
    _C.GALW.AGGREGATION = CN()
    # Regexes of the shared parameters whose Jacobian is aggregated; [] = GALW.RECORD.SHARED_PARAMS.
    _C.GALW.AGGREGATION.SHARED_PARAMS = []
    # How the per-task Jacobian is computed: "rows" = one autograd.grad of each task's loss (works for every
    # op); "vmap" = all rows at once by torchjd.autojac.backward through torch.vmap (not every op supports it).
    _C.GALW.AGGREGATION.JACOBIAN = "rows"
    # c of CAGrad (the paper: 0.4-0.5).
    _C.GALW.AGGREGATION.CAGRAD_C = 0.5
    # Aligned-MTL scale of the aligned rows: "min" (the paper: smallest singular value), "median", "rmse".
    _C.GALW.AGGREGATION.ALIGNED_MTL_SCALE_MODE = "min"

    # Gradient-trend recorder (Eq. 6, Algorithm 1 lines 1-6): probes every task's gradient over the
    # shared parameters with torch.autograd.grad before the main backward (training is unchanged).
    _C.GALW.RECORD = CN()
    # Record the per-epoch gradient magnitudes (phase 1 of the two-phase workflow).
    _C.GALW.RECORD.ENABLED = False
    # Probe every this many iterations (the cost is one partial backward per task per probe).
    _C.GALW.RECORD.PERIOD = 20
    # Regexes (re.search) selecting the shared parameters theta_m by name in the model (not counting
    # the GALW wrapper). Default: ResNet res2..res4 ("backbone.res2" or FPN's "backbone.bottom_up.res2").
    _C.GALW.RECORD.SHARED_PARAMS = [r"^backbone\.(bottom_up\.)?res[234]\."]
    # Iterations per epoch for the per-epoch averages; 0 = ceil(#train images / SOLVER.IMS_PER_BATCH).
    _C.GALW.RECORD.EPOCH_ITERS = 0
    # Trends file written at the end of training, relative to OUTPUT_DIR (format in docs/galw.md).
    _C.GALW.RECORD.OUTPUT = "gradient_trends.json"
    # Which loss of task t the probe differentiates (Eq. 6): "raw" = the unweighted L_ori_t (default:
    # then equal model outputs give equal trends whatever the weighting, and a constant weight c
    # cannot shift log10|slope| by log10(c) and change the groups); "weighted" = the loss as it enters
    # the total (w_t L_t under "fixed", L_t / (k sigma^2) under the uncertainty strategies). Recorded
    # in the trends file. docs/fidelity.md gives the argument.
    _C.GALW.RECORD.PROBE_LOSS = "raw"

    # Task grouping settings (Algorithm 1 lines 7-11), used by online regrouping and the workflow helpers.
    _C.GALW.GROUPING = CN()
    # A name of galw_d2.galw.GROUPING_REGISTRY: "slope" (the paper's Eq. 7-8 + hierarchical
    # clustering), "branch", "semantic", "random", "manual".
    _C.GALW.GROUPING.STRATEGY = "slope"
    # Strategy "manual": "a,b;c" (loss names or t-indices) or a named preset of galw_d2/galw/grouping.py
    # GROUP_PRESETS: the paper's Table 4 rows "table4_g2" .. "table4_g6" and Table 5 rows.
    _C.GALW.GROUPING.MANUAL = ""
    # Seed of strategy "random".
    _C.GALW.GROUPING.SEED = 0
    # Number of groups G (the paper's best: 4 for ROI-AlignPS*, 3 for NAE / AlignPS).
    _C.GALW.GROUPING.NUM_GROUPS = 4
    # Slope of Eq. 7: "mean_diff" (the paper) or "lstsq".
    _C.GALW.GROUPING.SLOPE = "mean_diff"
    # Base of the log in Eq. 8 (10 compresses orders of magnitude; e gives s / (1 + |s|)).
    _C.GALW.GROUPING.LOG_BASE = 10.0
    # scipy linkage method of the hierarchical clustering.
    _C.GALW.GROUPING.LINKAGE = "average"

    # The two-phase workflow (Algorithm 1): the weighting strategy of the first (recording) training.
    # Default "fixed" (the Table 1 baseline): the paper's Fig. 3, whose trends GALW groups by, is titled
    # "Gradient magnitudes of different sub-tasks in ROI-AlignPS*", the fixed-weight baseline; the
    # paper never says the first training uses RULWF (docs/fidelity.md). Every entry point (train_net
    # workflow, tools/demo.py, tools/ablation.py, galw_d2.galw.workflow) uses this one key.
    _C.GALW.PHASE1 = CN()
    _C.GALW.PHASE1.STRATEGY = "fixed"

    # Our extension (off by default, not in the paper): start as RULWF with recording on, and after
    # WARMUP_EPOCHS epochs group the tasks from the trends so far and continue with GALW in the same run.
    _C.GALW.ONLINE_REGROUP = CN()
    _C.GALW.ONLINE_REGROUP.ENABLED = False
    # Epochs of recording before regrouping (>= 2: a slope needs two epochs).
    _C.GALW.ONLINE_REGROUP.WARMUP_EPOCHS = 2


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
    # Query feature: "box" = the model's embedding of the query box itself (NAE/SeqNet/OIM protocol);
    # "best_iou" = the embedding of the detection in the query image with the highest IoU with the
    # query box (the AlignPS protocol; falls back to "box" when no detection overlaps it).
    _C.TEST.PERSON_SEARCH.QUERY_MODE = "box"
    # CUHK-SYSU gallery size of the protocol (TestG{N}.mat: 50, 100, 500, 1000, 2000, 4000; -1 = the
    # whole test set). Ignored for PRW.
    _C.TEST.PERSON_SEARCH.GALLERY_SIZE = 100
    # PRW: search only frames of other cameras than the query's (the cross-camera protocol).
    _C.TEST.PERSON_SEARCH.CROSS_CAMERA = False
    # CUHK-SYSU query subset: "" (all queries), "Occlusion" or "Resolution" (when the dataset has them).
    _C.TEST.PERSON_SEARCH.SUBSET = ""
    # Write search_results.pth into the evaluator's output folder (the trainer's:
    # OUTPUT_DIR/inference/<dataset>/): the saved-results file tools/evaluate_search.py re-scores.
    _C.TEST.PERSON_SEARCH.SAVE_RESULTS = False
    # Order of equal similarities: "standard" (gallery order, as the published protocol code) or
    # "pessimistic" (false positives first). Both are always computed; collapsed or heavily tied
    # embeddings are reported either way (docs/evaluation.md, "Ties and collapsed embeddings").
    _C.TEST.PERSON_SEARCH.TIE_RULE = "standard"


def add_attribute_config(cfg: CN) -> None:
    """Attribute branch (task t11) keys."""
    _C = cfg
    _C.MODEL.ATTRIBUTES = CN()
    # Train the ALM attribute branch (task t11) in the person-search model.
    _C.MODEL.ATTRIBUTES.ENABLED = False
    # Number of attributes A. 0 = len(MetadataCatalog.get(DATASETS.TRAIN[0]).attribute_names).
    _C.MODEL.ATTRIBUTES.NUM_ATTRIBUTES = 0
    # Backbone maps whose RoI features feed one ALM each (the pyramid levels of the branch).
    _C.MODEL.ATTRIBUTES.IN_FEATURES = ["res3", "res4", "res5"]
    # RoIAlign output size per level (the paper: proposals cropped and reshaped to 32x32).
    _C.MODEL.ATTRIBUTES.POOLER_RESOLUTION = 32
    # RoIAlign sampling ratio (0 = adaptive, as torchvision).
    _C.MODEL.ATTRIBUTES.POOLER_SAMPLING_RATIO = 2
    # Channels of the 1x1 conv (+ReLU) that reduces each level's RoI features before its ALM.
    _C.MODEL.ATTRIBUTES.CHANNELS = 64
    # Side of the grid each ALM resamples inside its predicted box (then max-pooled to one vector).
    _C.MODEL.ATTRIBUTES.SAMPLE_SIZE = 8
    # Channel reduction of each ALM's SE block.
    _C.MODEL.ATTRIBUTES.SE_REDUCTION = 16
    # At most this many foreground proposals per image enter the branch (random subset; 0 = all).
    _C.MODEL.ATTRIBUTES.MAX_PROPOSALS_PER_IMAGE = 64
    # Attribute BCE weighting: "none" (plain BCE, the paper's t11) or "alm" (positives weighted
    # exp(1 - p_j), negatives exp(p_j), p_j = positive ratio of attribute j in the batch targets).
    _C.MODEL.ATTRIBUTES.LOSS_WEIGHTING = "none"
    # Pseudo-label files to merge: entries "BASE_DATASET=PATH.jsonl"; each registers BASE_DATASET_attr
    # (galw_d2.attributes.pseudo_labels.register_pseudo_labels_from_config, called by the entry point)
    # for DATASETS.TRAIN.
    _C.MODEL.ATTRIBUTES.PSEUDO_LABELS = []

    # Stand-alone attribute recognizer (the pseudo-labeler; tools/train_attribute_net.py).
    _C.ATTRIBUTE_NET = CN()
    # torchreid model name of the backbone (torchreid.reid.models.build_model), e.g. osnet_x0_25, resnet50.
    _C.ATTRIBUTE_NET.BACKBONE = "osnet_x0_25"
    # Backbone children whose outputs are the pyramid levels, finest first ([] = family default:
    # osnet conv2/conv3/conv5, resnet layer2/layer3/layer4).
    _C.ATTRIBUTE_NET.IN_FEATURES = []
    # Path of backbone weights to load (torchreid/ImageNet state dict; "" = random init).
    _C.ATTRIBUTE_NET.BACKBONE_WEIGHTS = ""
    # Path of a full recognizer checkpoint to load before training / for evaluation ("" = none).
    _C.ATTRIBUTE_NET.WEIGHTS = ""
    # Channels of the top-down pyramid (1x1 laterals + upsample-and-add) feeding the ALMs.
    _C.ATTRIBUTE_NET.PYRAMID_CHANNELS = 64
    # ALM resampling grid side and SE reduction (as MODEL.ATTRIBUTES.*).
    _C.ATTRIBUTE_NET.SAMPLE_SIZE = 8
    _C.ATTRIBUTE_NET.SE_REDUCTION = 16
    # Crop input size (height, width).
    _C.ATTRIBUTE_NET.INPUT_SIZE = (128, 64)
    # Weighted BCE of the ALM paper (exp(1-p_j) positives / exp(p_j) negatives, p_j from the train set).
    _C.ATTRIBUTE_NET.WEIGHTED_BCE = True
    # Probability threshold for binary predictions (metrics and pseudo-labels).
    _C.ATTRIBUTE_NET.THRESHOLD = 0.5
    # Training length, batch size and data-loader workers (LR = SOLVER.BASE_LR, weight decay =
    # SOLVER.WEIGHT_DECAY, Adam).
    _C.ATTRIBUTE_NET.EPOCHS = 30
    _C.ATTRIBUTE_NET.BATCH_SIZE = 32
    _C.ATTRIBUTE_NET.NUM_WORKERS = 0
    # torch CPU threads of tools/train_attribute_net.py (torch.set_num_threads; 0 = torch's default).
    # Small crops gain little from threads, and oversubscribed CPUs slow multi-threaded small convs down.
    _C.ATTRIBUTE_NET.NUM_THREADS = 0
    # Horizontal-flip probability of training crops.
    _C.ATTRIBUTE_NET.FLIP_PROB = 0.5
    _C.ATTRIBUTE_NET.DATA = CN()
    # Training data: "synthps" (crops of a SynthPS root with its ground-truth attributes), "pa100k"
    # (ROOT/annotation.mat + images), "list" (TRAIN_LIST / TEST_LIST files of "path 0 1 0 ...").
    _C.ATTRIBUTE_NET.DATA.TYPE = "synthps"
    # Dataset root (synthps: the generated root; pa100k: folder of annotation.mat).
    _C.ATTRIBUTE_NET.DATA.ROOT = "datasets/synthps_tiny_cuhk"
    # synthps only: layout of ROOT ("cuhk_sysu" | "prw"), and the preset/seed used to generate ROOT
    # with galw_d2.data.synthps.generate_synthps when it does not exist ("" = never generate).
    _C.ATTRIBUTE_NET.DATA.SYNTHPS_FORMAT = "cuhk_sysu"
    _C.ATTRIBUTE_NET.DATA.SYNTHPS_PRESET = ""
    _C.ATTRIBUTE_NET.DATA.SYNTHPS_SEED = 0
    # pa100k only: folder of the images ("" = ROOT/data, else ROOT/release_data/release_data) and the
    # splits used for training ("train" or "train+val"); the held-out split is always "test".
    _C.ATTRIBUTE_NET.DATA.IMAGE_DIR = ""
    _C.ATTRIBUTE_NET.DATA.PA100K_TRAIN_SPLITS = "train"
    # list only: train / held-out list files; relative image paths are resolved against the list's folder.
    _C.ATTRIBUTE_NET.DATA.TRAIN_LIST = ""
    _C.ATTRIBUTE_NET.DATA.TEST_LIST = ""


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
    add_nae_config(cfg)
    add_alignps_config(cfg)
    add_loss_weighting_config(cfg)
    add_evaluation_config(cfg)
    add_attribute_config(cfg)
    return cfg
