"""Attribute pseudo-labels for person-search datasets: file format, generation (resumable), loading,
validation against a dataset, and merging into dataset dicts.

File format (JSON Lines, UTF-8; one JSON object per line):

- line 1, the header::

    {"format": "galw_d2.attribute_pseudo_labels", "version": 1, "dataset": "<registered name>",
     "attribute_names": [...], "checkpoint": "<recognizer path>", "checkpoint_sha256": "<hex>",
     "threshold": 0.5, "num_images": <images of the dataset>}

- then one line per image (in processing order)::

    {"image": "<bare image name>", "boxes": [[x1, y1, x2, y2], ...],      # XYXY original pixels
     "probs": [[p_1, ..., p_A], ...], "labels": [[0/1, ...], ...]}         # one row per box

  ``boxes`` are the image's ground-truth person boxes in dataset order; ``labels = probs >= threshold``.

Resuming: an existing file whose header matches (dataset, attribute names, checkpoint hash,
threshold) is continued; images already in it are skipped, a last line cut by an interruption is
dropped and redone. A header that does not match is an error (choose another output or overwrite).

Loading (:func:`load_pseudo_labels`) validates the header and every record; with ``dataset_dicts``
it also checks that every dataset image with persons is in the file with the same number of boxes,
each within 1 px of the dataset box (:func:`validate_pseudo_labels`).
"""

import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

__all__ = [
    "FORMAT",
    "generate_pseudo_labels",
    "load_pseudo_labels",
    "validate_pseudo_labels",
    "merge_pseudo_labels",
    "register_pseudo_labeled_dataset",
    "register_pseudo_labels_from_config",
    "image_boxes",
]

FORMAT = "galw_d2.attribute_pseudo_labels"
VERSION = 1
BOX_TOL = 1.0
logger = logging.getLogger(__name__)


def _image_name(d: dict) -> str:
    return d.get("image_name") or os.path.basename(d["file_name"])


def image_boxes(d: dict) -> List[List[float]]:
    """XYXY_ABS boxes of a dataset dict's annotations (category 0 = person), in annotation order."""
    from detectron2.structures import BoxMode

    out = []
    for a in d.get("annotations", []):
        if a.get("category_id", 0) != 0:
            continue
        mode = a.get("bbox_mode", BoxMode.XYXY_ABS)
        b = BoxMode.convert(list(a["bbox"]), mode, BoxMode.XYXY_ABS)
        out.append([float(v) for v in b])
    return out


def _read(path: str) -> Tuple[Optional[dict], Dict[str, dict], int]:
    """(header, records by image, byte length of the valid prefix). Tolerates a cut last line."""
    header, recs, good = None, {}, 0
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    lineno = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:  # last line without newline: cut by an interruption
            break
        line = data[pos:nl]
        lineno += 1
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if nl == len(data) - 1:
                break  # a damaged last line
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
        if header is None:
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise ValueError(f"{path}: line 1 is not a '{FORMAT}' header")
            header = obj
        else:
            _check_record(path, lineno, obj, len(header["attribute_names"]))
            if obj["image"] in recs:
                raise ValueError(f"{path}:{lineno}: image {obj['image']!r} appears twice")
            recs[obj["image"]] = obj
        pos = nl + 1
        good = pos
    return header, recs, good


def _check_record(path, lineno, r, A):
    if not isinstance(r, dict) or not all(k in r for k in ("image", "boxes", "probs", "labels")):
        raise ValueError(f"{path}:{lineno}: a record needs keys image, boxes, probs, labels")
    n = len(r["boxes"])
    if len(r["probs"]) != n or len(r["labels"]) != n:
        raise ValueError(
            f"{path}:{lineno}: image {r['image']!r}: {n} boxes but {len(r['probs'])} probs rows / "
            f"{len(r['labels'])} labels rows"
        )
    for b, p, l in zip(r["boxes"], r["probs"], r["labels"]):
        if len(b) != 4 or len(p) != A or len(l) != A:
            raise ValueError(
                f"{path}:{lineno}: image {r['image']!r}: each box needs 4 coordinates and {A} "
                f"probs/labels, got {len(b)}/{len(p)}/{len(l)}"
            )


def generate_pseudo_labels(
    model,
    dataset_dicts: Sequence[dict],
    output: str,
    attribute_names: Sequence[str],
    checkpoint: str,
    checkpoint_sha256: str,
    dataset_name: str,
    threshold: float = 0.5,
    input_size: Optional[Sequence[int]] = None,
    batch_size: int = 64,
    device="cpu",
    progress: bool = True,
    max_images: Optional[int] = None,
) -> Dict[str, int]:
    """Run ``model`` (an :class:`AttributeRecognizer`) on every GT person box and append to ``output``.

    Returns {"processed": images done in this call, "skipped": images already in the file,
    "total": images of the dataset}. ``max_images`` stops after that many new images (for tests /
    chunked runs); a later call resumes."""
    import torch

    from .data import _crop_resize, _read_rgb

    names = [_image_name(d) for d in dataset_dicts]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset {dataset_name!r}: image names are not unique; pseudo-labels are keyed by image name")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": dataset_name,
        "attribute_names": list(attribute_names),
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_sha256,
        "threshold": float(threshold),
        "num_images": len(dataset_dicts),
    }
    done: Dict[str, dict] = {}
    if os.path.exists(output) and os.path.getsize(output) > 0:
        old, done, good = _read(output)
        if old is None:
            good = 0
        else:
            for k in ("dataset", "attribute_names", "checkpoint_sha256", "threshold"):
                if old.get(k) != header[k]:
                    raise ValueError(
                        f"{output}: existing pseudo-label file has {k}={old.get(k)!r}, this run has "
                        f"{header[k]!r}; use another --output or delete the file to start over"
                    )
        with open(output, "r+b") as f:  # drop a cut last line
            f.truncate(good)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    size = tuple(input_size or model.config["input_size"])
    model.eval()
    todo = [d for d, n in zip(dataset_dicts, names) if n not in done]
    if max_images is not None:
        todo = todo[: max(0, int(max_images))]
    bar = None
    if progress:
        bar = tqdm(
            total=len(dataset_dicts),
            initial=len(dataset_dicts) - len([n for n in names if n not in done]),
            desc="pseudo-labels",
            unit="img",
        )
    with open(output, "a", encoding="utf-8") as f:
        if os.path.getsize(output) == 0:
            f.write(json.dumps(header) + "\n")
        for d in todo:
            boxes = image_boxes(d)
            probs = np.zeros((0, len(attribute_names)), dtype=np.float32)
            if boxes:
                img = _read_rgb(d["file_name"])
                crops = np.stack([_crop_resize(img, b, size) for b in boxes])
                x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
                with torch.no_grad():
                    probs = torch.cat(
                        [model.predict(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
                    ).numpy()
            rec = {
                "image": _image_name(d),
                "boxes": [[round(v, 2) for v in b] for b in boxes],
                "probs": [[round(float(p), 5) for p in row] for row in probs],
                "labels": [[int(p >= threshold) for p in row] for row in probs],
            }
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {"processed": len(todo), "skipped": len(done), "total": len(dataset_dicts)}


def validate_pseudo_labels(
    records: Dict[str, dict], dataset_dicts: Iterable[dict], source: str = "pseudo-labels"
) -> None:
    """Every dataset image with person boxes is in ``records``, with its boxes (same count, |diff| <= 1 px)."""
    for d in dataset_dicts:
        name = _image_name(d)
        boxes = image_boxes(d)
        if not boxes:
            continue
        r = records.get(name)
        if r is None:
            raise ValueError(f"{source}: image {name!r} of the dataset is missing from the pseudo-label file")
        fb = np.asarray(r["boxes"], dtype=np.float64).reshape(-1, 4)
        if len(fb) != len(boxes):
            raise ValueError(
                f"{source}: image {name!r} has {len(boxes)} person boxes in the dataset but {len(fb)} in the file"
            )
        for b in boxes:
            if not (np.abs(fb - np.asarray(b)).max(axis=1) <= BOX_TOL).any():
                raise ValueError(
                    f"{source}: image {name!r}: dataset box {b} has no box within {BOX_TOL} px in the file "
                    f"({fb.tolist()})"
                )


def load_pseudo_labels(
    path: str,
    dataset_dicts: Optional[Sequence[dict]] = None,
    attribute_names: Optional[Sequence[str]] = None,
    checkpoint_sha256: Optional[str] = None,
) -> Tuple[dict, Dict[str, dict]]:
    """(header, {image name: record}); validates the file, and against the dataset / names / hash if given."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pseudo-label file {path!r} not found (make it with tools/generate_attribute_pseudo_labels.py)"
        )
    header, recs, good = _read(path)
    if header is None:
        raise ValueError(f"{path}: empty pseudo-label file")
    if good != os.path.getsize(path):
        raise ValueError(
            f"{path}: the last line is incomplete (an interrupted generation); rerun the generator to resume"
        )
    if attribute_names is not None and list(attribute_names) != list(header["attribute_names"]):
        raise ValueError(
            f"{path}: attribute names {header['attribute_names']} differ from the expected {list(attribute_names)}"
        )
    if checkpoint_sha256 is not None and checkpoint_sha256 != header.get("checkpoint_sha256"):
        raise ValueError(
            f"{path}: made with recognizer sha256 {header.get('checkpoint_sha256')}, expected {checkpoint_sha256}"
        )
    if dataset_dicts is not None:
        validate_pseudo_labels(recs, dataset_dicts, path)
    return header, recs


def merge_pseudo_labels(dataset_dicts: Sequence[dict], path: str, soft: bool = False) -> List[dict]:
    """Copies of ``dataset_dicts`` whose person annotations carry ``"attributes"`` from the file
    (binary labels, or the probabilities with ``soft``), matched by image name and box (<= 1 px).
    The file is validated against the dataset first."""
    _, recs = load_pseudo_labels(path, dataset_dicts)
    out = []
    for d in dataset_dicts:
        d = dict(d)
        anns = [dict(a) for a in d.get("annotations", [])]
        r = recs.get(_image_name(d))
        if r is not None and anns:
            fb = np.asarray(r["boxes"], dtype=np.float64).reshape(-1, 4)
            vals = r["probs"] if soft else r["labels"]
            boxes = image_boxes({"annotations": anns})
            k = 0
            for a in anns:
                if a.get("category_id", 0) != 0:
                    continue
                j = int(np.abs(fb - np.asarray(boxes[k])).max(axis=1).argmin())
                a["attributes"] = [float(v) if soft else int(v) for v in vals[j]]
                k += 1
        d["annotations"] = anns
        out.append(d)
    return out


def register_pseudo_labeled_dataset(
    base_name: str, path: str, new_name: Optional[str] = None, soft: bool = False
) -> str:
    """Register ``new_name`` (default ``<base_name>_attr``) = ``base_name`` with the pseudo-labels of
    ``path`` merged in; its metadata copies the base's and adds ``attribute_names`` and
    ``attribute_pseudo_labels`` (the path). Returns the new name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    new_name = new_name or f"{base_name}_attr"
    with open(path, encoding="utf-8") as f:
        header = json.loads(f.readline())
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a '{FORMAT}' file")
    if new_name in DatasetCatalog.list():
        DatasetCatalog.remove(new_name)
        MetadataCatalog.remove(new_name)
    DatasetCatalog.register(new_name, lambda: merge_pseudo_labels(DatasetCatalog.get(base_name), path, soft))
    meta = {k: v for k, v in MetadataCatalog.get(base_name).as_dict().items() if k != "name"}
    meta.update(attribute_names=list(header["attribute_names"]), attribute_pseudo_labels=path)
    MetadataCatalog.get(new_name).set(**meta)
    return new_name


def register_pseudo_labels_from_config(cfg) -> List[str]:
    """Register every ``MODEL.ATTRIBUTES.PSEUDO_LABELS`` entry "BASE=PATH" as ``BASE_attr``; returns the
    new names (call before building the data loader; DATASETS.TRAIN then names ``BASE_attr``)."""
    names = []
    for entry in cfg.MODEL.ATTRIBUTES.PSEUDO_LABELS:
        base, sep, path = str(entry).partition("=")
        if not sep or not base or not path:
            raise ValueError(f"MODEL.ATTRIBUTES.PSEUDO_LABELS entry {entry!r}: expected 'BASE_DATASET=PATH.jsonl'")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"MODEL.ATTRIBUTES.PSEUDO_LABELS: {path!r} not found (make it with "
                "tools/generate_attribute_pseudo_labels.py)"
            )
        names.append(register_pseudo_labeled_dataset(base, path))
    return names
