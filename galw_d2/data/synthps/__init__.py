"""SynthPS: a synthetic person-search benchmark written in the official CUHK-SYSU / PRW layouts.

``generate_synthps(output, fmt, preset, seed)`` draws procedurally rendered people (identity =
stable appearance, see :mod:`.appearance`) into varied scenes seen by several cameras
(:mod:`.render`), and writes them with :mod:`.writers`. See docs/synthps.md.
"""

import json
import os
import shutil
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from .appearance import ATTRIBUTE_NAMES
from .generator import PRESETS, Preset, SynthPSTruth, build_scenes
from .writers import write_attributes, write_cuhk_sysu, write_meta, write_prw

__all__ = [
    "ATTRIBUTE_NAMES",
    "FORMATS",
    "PRESETS",
    "Preset",
    "SynthPSTruth",
    "generate_synthps",
    "load_truth",
    "render_preview",
    "summarize",
]

FORMATS = ("cuhk_sysu", "prw")
# what a previous SynthPS run may have left in a root (removed before writing a new one)
_OWNED = {
    "cuhk_sysu": ["Image", "annotation"],
    "prw": ["frames", "annotations", "frame_train.mat", "frame_test.mat", "query_info.txt"],
}
_MARKERS = ("synthps_meta.json", "synthps_attributes.json")


def _check_root(root: str) -> None:
    if os.path.exists(root) and not os.path.isdir(root):
        raise FileExistsError(f"SynthPS output {root!r} is a file; expected a directory")
    if os.path.isdir(root) and os.listdir(root):
        if not any(os.path.exists(os.path.join(root, m)) for m in _MARKERS):
            raise FileExistsError(
                f"SynthPS output {root!r} exists, is not empty and is not a SynthPS root "
                f"(no {_MARKERS[0]}); choose an empty or new directory"
            )


def _prepare_root(root: str) -> None:
    _check_root(root)
    if os.path.isdir(root) and os.listdir(root):
        for names in _OWNED.values():
            for n in names:
                p = os.path.join(root, n)
                if os.path.isdir(p):
                    shutil.rmtree(p)
                elif os.path.exists(p):
                    os.remove(p)
        for m in _MARKERS + ("preview.jpg",):
            if os.path.exists(os.path.join(root, m)):
                os.remove(os.path.join(root, m))
    os.makedirs(root, exist_ok=True)


def generate_synthps(
    output: str,
    fmt: str = "cuhk_sysu",
    preset: str = "tiny",
    seed: int = 0,
    *,
    progress: bool = False,
    return_truth: bool = False,
) -> Union[str, Tuple[str, SynthPSTruth]]:
    """Generate a SynthPS dataset at ``output`` (the dataset root) in layout ``fmt``.

    Args:
        output: dataset root to create (must be new, empty, or a previous SynthPS root, which is replaced).
        fmt: "cuhk_sysu" or "prw" (the official file layout to write).
        preset: "tiny" (tests), "small" (demo) or "medium" (studies: 400 queries); see :data:`PRESETS`.
        seed: the same seed gives the same bytes (images, .mat, .txt, .json).
        progress: show a tqdm bar while rendering.
        return_truth: also return the :class:`SynthPSTruth` (every box, file id, camera, attribute).

    Returns:
        the absolute root, or (root, truth) with ``return_truth``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown SynthPS format {fmt!r}; expected one of {FORMATS}")
    if preset not in PRESETS:
        raise ValueError(f"unknown SynthPS preset {preset!r}; expected one of {sorted(PRESETS)}")
    root = os.path.abspath(output)
    _check_root(root)  # before rendering: fail fast
    truth, images = build_scenes(preset, seed, progress=progress)
    truth.fmt = fmt
    _prepare_root(root)
    naming_rng = np.random.default_rng(np.random.SeedSequence([int(seed), FORMATS.index(fmt), 7]))
    (write_cuhk_sysu if fmt == "cuhk_sysu" else write_prw)(root, truth, images, naming_rng)
    write_attributes(root, truth)
    write_meta(root, truth)
    return (root, truth) if return_truth else root


def load_truth(root: str) -> SynthPSTruth:
    """The generator truth saved in ``<root>/synthps_meta.json``."""
    path = os.path.join(root, "synthps_meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {root!r} is not a SynthPS root (run tools/make_synthps.py)")
    with open(path) as f:
        return SynthPSTruth.from_json(json.load(f))


def summarize(truth: SynthPSTruth) -> dict:
    """Counts per split (images, labeled ids, boxes, unlabeled boxes) and queries / galleries."""
    out = {
        "format": truth.fmt,
        "preset": truth.preset,
        "seed": truth.seed,
        "attributes": len(truth.attribute_names),
        "queries": len(truth.queries),
        "gallery_sizes": sorted(truth.galleries),
    }
    for split in ("train", "test"):
        sc = [s for s in truth.scenes if s.split == split]
        boxes = [p for s in sc for p in s.persons]
        out[split] = {
            "images": len(sc),
            "ids": len({p.identity for p in boxes if p.identity >= 0}),
            "boxes": len(boxes),
            "unlabeled": sum(p.identity < 0 for p in boxes),
            "cameras": len({s.camera for s in sc}),
            "person_height": [min(p.box[3] for p in boxes), max(p.box[3] for p in boxes)],
        }
    return out


def render_preview(root: str, path: Optional[str] = None, n: int = 12, cols: int = 4, scale: float = 1.0) -> str:
    """A grid of ``n`` scenes (train and test) with their boxes: green = labeled (file id),
    red = unlabeled, yellow = a query. Written to ``path`` (default ``<root>/preview.jpg``; a .png
    path is saved as a 128-colour palette PNG). ``scale`` resizes every tile."""
    import cv2

    truth = load_truth(root)
    img_dir = os.path.join(root, "Image", "SSM") if truth.fmt == "cuhk_sysu" else os.path.join(root, "frames")
    query_keys = {(truth.scenes[q.scene].name, q.person) for q in truth.queries}
    train = [s for s in truth.scenes if s.split == "train"]
    test = [s for s in truth.scenes if s.split == "test"]
    chosen = train[: (n + 1) // 2] + test[: n // 2]
    tiles = []
    for s in chosen:
        img = cv2.imread(os.path.join(img_dir, s.name))
        if img is None:
            raise FileNotFoundError(os.path.join(img_dir, s.name))
        if scale != 1.0:  # resize first, draw after: labels stay readable
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for j, p in enumerate(s.persons):
            x, y, w, h = (int(round(v * scale)) for v in p.box)
            colour = (0, 220, 255) if (s.name, j) in query_keys else ((60, 220, 60) if p.pid >= 0 else (60, 60, 230))
            cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), colour, 1)
            label = str(p.pid) if p.pid >= 0 else "-"
            cv2.putText(img, label, (x + 1, max(9, y - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1, cv2.LINE_AA)
        cam = f"{s.split} cam{s.camera} {s.name}" if truth.fmt == "prw" else f"{s.split} {s.name}"
        cv2.putText(img, cam, (3, img.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    if not tiles:
        raise ValueError(f"{root}: no scenes to preview")
    th, tw = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    grid = np.full((rows * th, cols * tw, 3), 255, dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * th : r * th + t.shape[0], c * tw : c * tw + t.shape[1]] = t
    path = path or os.path.join(root, "preview.jpg")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".png"):  # palette PNG: small enough to commit / show in docs
        Image.fromarray(grid[:, :, ::-1]).quantize(
            colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        ).save(path, optimize=True)
    elif not cv2.imwrite(path, grid):
        raise RuntimeError(f"could not write preview {path}")
    return path
