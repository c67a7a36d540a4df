#!/usr/bin/env python
"""Attribute pseudo-labels for the ground-truth person boxes of a person-search dataset.

Runs a recognizer trained by tools/train_attribute_net.py over every GT person box of a registered
dataset and writes one JSON-Lines file (format: galw_d2/attributes/pseudo_labels.py, docs/attributes.md).
Interrupted runs resume: rerun the same command; finished images are skipped.

    # a builtin name (datasets under $DETECTRON2_DATASETS)
    python tools/generate_attribute_pseudo_labels.py --checkpoint out/attr/model_final.pth \
        --dataset cuhk_sysu_train --output datasets/cuhk_sysu/attributes_train.jsonl
    # any root: register it first under a prefix
    python tools/generate_attribute_pseudo_labels.py --checkpoint CKPT --root /data/prw --layout prw \
        --dataset myprw_train --output prw_train_attr.jsonl

Then train the person-search model on the merged dataset (see docs/attributes.md):
    galw_d2.attributes.pseudo_labels.register_pseudo_labeled_dataset("cuhk_sysu_train", PATH)
    -> "cuhk_sysu_train_attr" (annotations carry "attributes"; the mapper makes them gt_attributes).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", required=True, help="recognizer checkpoint (model_final.pth of train_attribute_net.py)"
    )
    p.add_argument("--dataset", required=True, help="registered dataset name, e.g. cuhk_sysu_train, prw_train")
    p.add_argument("--output", required=True, help="pseudo-label file (.jsonl); resumed when it exists")
    p.add_argument("--root", default="", help="register this root first, under the prefix of --dataset")
    p.add_argument("--layout", choices=["cuhk_sysu", "prw"], default="cuhk_sysu", help="layout of --root")
    p.add_argument("--synthps", action="store_true", help="--root is a SynthPS root (register_synthps)")
    p.add_argument("--threshold", type=float, default=0.5, help="binary label = probability >= threshold")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-images", type=int, default=None, help="stop after this many new images (resume later)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import torch
    from detectron2.data import DatasetCatalog

    import galw_d2.data as gd
    from galw_d2.attributes.pseudo_labels import generate_pseudo_labels, load_pseudo_labels
    from galw_d2.attributes.recognizer import load_recognizer

    if args.root:
        prefix = args.dataset.rsplit("_", 1)[0]
        if args.synthps:
            gd.register_synthps(args.root, args.layout, prefix)
        elif args.layout == "cuhk_sysu":
            gd.register_cuhk_sysu(args.root, prefix)
        else:
            gd.register_prw(args.root, prefix)
    if args.dataset not in DatasetCatalog.list():
        raise SystemExit(
            f"dataset {args.dataset!r} is not registered (known: {sorted(DatasetCatalog.list())[:20]}...); "
            "pass --root/--layout to register it"
        )
    device = args.device if (not args.device.startswith("cuda") or torch.cuda.is_available()) else "cpu"
    model, names, sha = load_recognizer(args.checkpoint)
    model.to(device)
    dicts = DatasetCatalog.get(args.dataset)
    stats = generate_pseudo_labels(
        model,
        dicts,
        args.output,
        names,
        os.path.abspath(args.checkpoint),
        sha,
        args.dataset,
        args.threshold,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
        max_images=args.max_images,
    )
    if stats["processed"] + stats["skipped"] == stats["total"]:
        load_pseudo_labels(args.output, dicts, names, sha)  # validate the finished file against the dataset
        stats["validated"] = True
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
