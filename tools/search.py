#!/usr/bin/env python
"""Person search on your own photos: find a query person in a folder of scene images.

    # the query is a box in a photo (x1 y1 x2 y2, pixels)
    python tools/search.py --config-file output/demo/configs/phase2.yaml \
        --weights output/demo/phase2/model_final.pth \
        --query-image me.jpg --query-box 120 40 260 400 --gallery photos/ --topk 5 --output output/search
    # the query is already a crop of the person
    python tools/search.py --config-file CFG --weights W --query-crop person.jpg --gallery photos/

The model detects every person in every gallery image, embeds them, and ranks all detections by
cosine similarity to the query's embedding (the embedding of the query box itself, the NAE/SeqNet
query mode). Writes ``OUTPUT/topk.json`` (query, then the hits: image, box, detection score,
similarity, rank) and ``OUTPUT/topk.png`` (query crop + the top-k hits, each gallery image once per
hit). A crop query is embedded as a whole image with its full-frame box.
"""

import argparse
import json
import os
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Search a query person in a folder of gallery images.")
    p.add_argument("--config-file", required=True, help="model config (e.g. output/demo/configs/phase2.yaml)")
    p.add_argument("--weights", required=True, help="checkpoint (.pth) of a trained model")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query-image", help="image that contains the query person (with --query-box)")
    q.add_argument("--query-crop", help="a crop of the query person")
    p.add_argument(
        "--query-box",
        type=float,
        nargs=4,
        metavar=("X1", "Y1", "X2", "Y2"),
        help="query person box in --query-image, pixels",
    )
    p.add_argument("--gallery", required=True, help="folder of gallery images (searched recursively)")
    p.add_argument("--topk", type=int, default=5, help="number of hits to report (default 5)")
    p.add_argument(
        "--det-thresh",
        type=float,
        default=None,
        help="minimum detection score of a gallery person (default cfg.TEST.PERSON_SEARCH.DET_THRESH)",
    )
    p.add_argument("--output", default=os.path.join(ROOT, "output", "search"), help="output folder")
    p.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="run even when --weights does not cover the model (tensors left randomly initialised; "
        "default: an error naming them)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    a = p.parse_args(argv)
    if a.query_image and a.query_box is None:
        p.error("--query-image needs --query-box X1 Y1 X2 Y2")
    if a.topk < 1:
        p.error(f"--topk must be >= 1, got {a.topk}")
    if a.det_thresh is not None:
        from galw_d2.evaluation.search import check_det_thresh

        try:
            a.det_thresh = check_det_thresh(a.det_thresh)
        except ValueError as e:
            p.error(f"--det-thresh: {e}")
    return a


def list_images(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--gallery {folder}: not a folder")
    out = []
    for d, _, files in os.walk(folder):
        out += [os.path.join(d, f) for f in files if f.lower().endswith(IMAGE_EXTS)]
    if not out:
        raise FileNotFoundError(f"--gallery {folder}: no images ({', '.join(IMAGE_EXTS)})")
    return sorted(out)


def load_model(cfg_file: str, weights: str, opts, allow_partial_weights: bool = False):
    """(frozen cfg, model in eval mode); the weights must cover the model (galw_d2.engine.weights)."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from galw_d2 import add_galw_config
    from galw_d2.engine.weights import load_model_weights

    if not os.path.exists(weights):
        raise FileNotFoundError(f"--weights {weights}: no such file")
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(cfg_file)
    cfg.merge_from_list(list(opts))
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    if cfg.MODEL.PERSON_SEARCH.NUM_PIDS == 0:
        # The OIM table size comes from the training set's metadata, which may not be registered
        # here: read it from the checkpoint instead (rows of any lookup table).
        cfg.MODEL.PERSON_SEARCH.NUM_PIDS = _num_pids_from_checkpoint(weights)
    cfg.freeze()
    model = build_model(cfg)
    load_model_weights(model, weights, allow_partial=allow_partial_weights)
    model.eval()
    return cfg, model


def _num_pids_from_checkpoint(path: str) -> int:
    from galw_d2.engine.weights import read_weights_file

    sd = read_weights_file(path)
    sd = sd.get("model", sd)
    for k, v in sd.items():
        if k.endswith(("lut", "lookup_table", "table")) and hasattr(v, "shape") and v.ndim == 2:
            return int(v.shape[0])
    raise ValueError(f"{path}: no OIM lookup table found; pass MODEL.PERSON_SEARCH.NUM_PIDS <K> as an override")


def _inputs(cfg, path: str, boxes=None) -> Dict:
    """The model input for one image through the person-search test mapper (resize, embed_boxes)."""
    import numpy as np
    from detectron2.data import detection_utils as utils

    from galw_d2.data import PersonSearchDatasetMapper

    img = utils.read_image(path, format=cfg.INPUT.FORMAT)
    h, w = img.shape[:2]
    rec = {
        "file_name": path,
        "image_id": 0,
        "image_name": os.path.basename(path),
        "height": h,
        "width": w,
        "camera_id": -1,
        "annotations": [],
    }
    if boxes is not None:
        rec.update(
            is_query=True, query_index=0, query_pid=-1, query_boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        )
    return PersonSearchDatasetMapper(cfg, is_train=False)(rec), (h, w)


def _read_error(path: str, e: Exception) -> str:
    return f"{path}: cannot be read as an image ({type(e).__name__}: {e})"


def search(cfg, model, query: Dict, gallery_paths: List[str], topk: int, det_thresh: float):
    """Returns (query_feat (D,), hits: list of dicts sorted by similarity, number of detections, skipped:
    [(path, reason)] of the gallery images that could not be read; they are skipped with a warning)."""
    import torch
    from tqdm import tqdm

    skipped = []
    with torch.no_grad():
        try:
            inp, _ = _inputs(cfg, query["path"], [query["box"]])
        except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated / unidentified image
            raise ValueError("query image " + _read_error(query["path"], e)) from e
        qf = model([inp])[0]["box_embeddings"][0].float().cpu().numpy()
        cands = []
        for p in tqdm(gallery_paths, desc="gallery", unit="img"):
            try:
                gin = _inputs(cfg, p)[0]
            except (OSError, ValueError, SyntaxError) as e:
                # one bad file must not abort the whole search: skip it, say so, list it in topk.json
                print(f"[search] WARNING: skipping gallery image {_read_error(p, e)}", file=sys.stderr)
                skipped.append((p, f"{type(e).__name__}: {e}"))
                continue
            inst = model([gin])[0]["instances"].to("cpu")
            keep = inst.scores >= det_thresh
            if keep.sum() == 0:
                continue
            boxes = inst.pred_boxes.tensor[keep].numpy()
            scores = inst.scores[keep].numpy()
            sims = inst.embeddings[keep].float().numpy() @ qf
            for b, s, sim in zip(boxes, scores, sims):
                cands.append({"image": p, "box": [float(x) for x in b], "score": float(s), "similarity": float(sim)})
    if len(skipped) == len(gallery_paths):
        raise ValueError(
            f"none of the {len(gallery_paths)} gallery images could be read (first: {skipped[0][0]}: {skipped[0][1]})"
        )
    cands.sort(key=lambda c: -c["similarity"])
    for r, c in enumerate(cands):
        c["rank"] = r + 1
    return qf, cands[:topk], len(cands), skipped


def draw(query: Dict, hits: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt
    from PIL import Image

    n = len(hits) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.6), squeeze=False)
    q = Image.open(query["path"]).convert("RGB")
    x1, y1, x2, y2 = query["box"]
    axes[0, 0].imshow(q.crop((int(x1), int(y1), int(x2), int(y2))))
    axes[0, 0].set_title("query", fontsize=9)
    for ax, h in zip(axes[0, 1:], hits):
        im = Image.open(h["image"]).convert("RGB")
        ax.imshow(im)
        b = h["box"]
        ax.add_patch(patches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color="lime", lw=2))
        ax.set_title(f"#{h['rank']} sim {h['similarity']:.2f}\n{os.path.basename(h['image'])}", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _image_size(path: str, flag: str):
    """(width, height) of an image file; ``ValueError`` naming ``flag`` and the path if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{flag} {_read_error(path, e)}") from e


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")

    gallery = list_images(args.gallery)
    if args.query_crop:
        if not os.path.exists(args.query_crop):
            raise FileNotFoundError(f"--query-crop {args.query_crop}: no such file")
        w, h = _image_size(args.query_crop, "--query-crop")
        query = {"path": args.query_crop, "box": [0.0, 0.0, float(w), float(h)]}
    else:
        if not os.path.exists(args.query_image):
            raise FileNotFoundError(f"--query-image {args.query_image}: no such file")
        w, h = _image_size(args.query_image, "--query-image")
        x1, y1, x2, y2 = args.query_box
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise ValueError(
                f"--query-box {args.query_box}: expected 0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h} "
                f"(the size of {args.query_image})"
            )
        query = {"path": args.query_image, "box": [x1, y1, x2, y2]}
    cfg, model = load_model(args.config_file, args.weights, args.opts, args.allow_partial_weights)
    thr = cfg.TEST.PERSON_SEARCH.DET_THRESH if args.det_thresh is None else args.det_thresh
    _, hits, total, skipped = search(cfg, model, query, gallery, args.topk, thr)
    os.makedirs(args.output, exist_ok=True)
    out = {
        "query": query,
        "gallery": os.path.abspath(args.gallery),
        "num_gallery_images": len(gallery),
        "num_detections": total,
        "det_thresh": float(thr),
        "weights": os.path.abspath(args.weights),
        "hits": hits,
        "skipped_images": [{"image": p, "reason": r} for p, r in skipped],
    }
    with open(os.path.join(args.output, "topk.json"), "w") as f:
        json.dump(out, f, indent=2)
    draw(query, hits, os.path.join(args.output, "topk.png"))
    print(
        f"[search] {total} persons detected in {len(gallery) - len(skipped)} images (score >= {thr}); top {len(hits)}:"
    )
    if skipped:
        print(
            f"[search] WARNING: {len(skipped)} unreadable gallery images were skipped (listed in topk.json)",
            file=sys.stderr,
        )
    for hh in hits:
        print(
            f"[search]   #{hh['rank']} sim {hh['similarity']:.3f}  {hh['image']}  box "
            + " ".join(f"{v:.0f}" for v in hh["box"])
        )
    print(f"[search] wrote {os.path.join(args.output, 'topk.json')} and topk.png")
    return 0


def cli(argv=None) -> int:
    """Command-line entry: bad input (weights, images, config/weights mismatch) ends with a one-line error
    and exit 1, not a traceback (``main`` raises, for callers and tests)."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"search: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
