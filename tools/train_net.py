#!/usr/bin/env python
"""Train or evaluate a galw_d2 person-search model: the detectron2-standard entry point.

    # one machine, 8 GPUs (paper-scale CUHK-SYSU config)
    python tools/train_net.py --config-file configs/roi_alignps_R50_24e_cuhk_sysu.yaml --num-gpus 8
    # two machines, 8 GPUs each (run on each machine with its rank)
    python tools/train_net.py --config-file CFG --num-gpus 8 --num-machines 2 --machine-rank 0 \
        --dist-url tcp://HOST0:29500
    # resume the last checkpoint in OUTPUT_DIR exactly (model, optimizer, scheduler, GALW state)
    python tools/train_net.py --config-file CFG --resume
    # evaluate a checkpoint with the standard person-search protocol (the weights must cover the
    # model: a config/weights mismatch is an error unless --allow-partial-weights)
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth

Trailing ``KEY VALUE`` pairs override the config (detectron2's ``opts``).
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import detectron2.utils.comm as comm  # noqa: E402
import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402

from galw_d2 import add_galw_config  # noqa: E402
from galw_d2.attributes.pseudo_labels import register_pseudo_labels_from_config  # noqa: E402
from galw_d2.engine.person_search import PersonSearchTrainer  # noqa: E402
from galw_d2.engine.weights import WeightsMismatchError, load_model_weights  # noqa: E402

logger = logging.getLogger("galw_d2.train_net")


class Trainer(PersonSearchTrainer):
    """GALW + person-search data, evaluator and exact resume (see galw_d2/engine/person_search.py)."""


def setup(args):
    """Config from ``args.config_file`` and ``args.opts`` on top of every galw_d2 key; logging, seed."""
    cfg = add_galw_config(get_cfg())
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"  # configs say cuda for paper scale; run on CPU where there is none
    cfg.freeze()
    default_setup(cfg, args)
    # Datasets with attribute pseudo-labels (task t11): MODEL.ATTRIBUTES.PSEUDO_LABELS "BASE=FILE" -> BASE_attr.
    register_pseudo_labels_from_config(cfg)
    return cfg


def load_eval_weights(cfg, model, args):
    """--eval-only: the last checkpoint of OUTPUT_DIR (--resume) or MODEL.WEIGHTS, which must cover the
    model (``--allow-partial-weights`` loads anyway). Returns the coverage report."""
    ckp = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    path = ckp.get_checkpoint_file() if args.resume and ckp.has_checkpoint() else cfg.MODEL.WEIGHTS
    if not path:
        raise ValueError(
            "--eval-only needs trained weights: MODEL.WEIGHTS <file.pth> (or --resume with a "
            f"checkpoint in OUTPUT_DIR {cfg.OUTPUT_DIR})"
        )
    logger.info(f"[eval-only] loading {path}")
    # getattr: callers may build args with detectron2's own default_argument_parser()
    return load_model_weights(model, path, allow_partial=getattr(args, "allow_partial_weights", False))


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_eval_weights(cfg, model, args)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_argument_parser():
    """detectron2's standard parser plus ``--allow-partial-weights`` (eval-only)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="--eval-only: evaluate even when the weights do not cover the model (tensors left "
        "randomly initialised; default: an error naming them)",
    )
    return parser


def invoke_main() -> None:
    args = build_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except WeightsMismatchError as e:  # --eval-only with weights that do not fit the config
        sys.exit(f"train_net: error: {e}")


if __name__ == "__main__":
    invoke_main()
