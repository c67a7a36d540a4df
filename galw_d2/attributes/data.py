"""Attribute-recognition data: sample lists from PA-100K, list files, SynthPS, and a crop dataset.

A *sample* is a dict ``{"file_name": str, "box": [x1, y1, x2, y2] or None (whole image),
"attributes": [0/1, ...]}`` (plus optional keys, e.g. ``image_name``). Every loader returns
``(samples, attribute_names)``.

- **PA-100K** (``ROOT/annotation.mat``, the official file): keys ``attributes`` (A x 1 cell of names),
  ``{train,val,test}_images_name`` (N x 1 cell of file names) and ``{train,val,test}_label`` (N x A,
  0/1). Images in ``ROOT/data`` or ``ROOT/release_data/release_data`` (or an explicit folder).
- **List file**: one sample per line, ``<image path> <a_1> ... <a_A>`` with a_j in {0, 1} (-1 =
  unlabeled); relative paths are relative to the list file's folder. An optional first line
  ``# attributes: name_1 ... name_A`` names the attributes (else ``attr_0..``). Blank lines and other
  ``#`` lines are skipped.
- **SynthPS**: ``<root>/synthps_attributes.json`` (the SynthPS ground truth, format in docs/DESIGN.md)
  cropped from the images of one split of the person-search layout, as the dataset loaders read it
  (:func:`galw_d2.data.datasets.load_cuhk_sysu` / ``load_prw``: train, and gallery = test).
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from galw_d2.data.datasets.common import mat_str_list

__all__ = [
    "load_pa100k",
    "load_attribute_list",
    "write_attribute_list",
    "load_synthps_attributes",
    "load_synthps_crops",
    "synthps_split_images",
    "load_attribute_samples",
    "CropDataset",
    "samples_to_targets",
]


def load_pa100k(root: str, split: str = "train", image_dir: str = "") -> Tuple[List[dict], List[str]]:
    """Samples of one or more splits of PA-100K (``split`` "train", "val", "test" or joined by "+")."""
    from scipy.io import loadmat

    path = os.path.join(root, "annotation.mat")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PA-100K annotation {path!r} not found (expected the official annotation.mat)")
    mat = loadmat(path)
    if "attributes" not in mat:
        raise ValueError(f"{path}: no key 'attributes' (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    names = mat_str_list(mat["attributes"], f"{path}: attributes")
    if not image_dir:
        cands = [os.path.join(root, "data"), os.path.join(root, "release_data", "release_data"), root]
        image_dir = next((c for c in cands if os.path.isdir(c)), cands[0])
    samples = []
    for sp in split.split("+"):
        kn, kl = f"{sp}_images_name", f"{sp}_label"
        if kn not in mat or kl not in mat:
            raise ValueError(f"{path}: split {sp!r} needs keys {kn!r} and {kl!r}")
        files = mat_str_list(mat[kn], f"{path}: {kn}")
        labels = np.asarray(mat[kl])
        if labels.shape != (len(files), len(names)):
            raise ValueError(
                f"{path}: {kl} has shape {labels.shape}, expected ({len(files)}, {len(names)}) "
                f"= ({kn} entries, attributes)"
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{path}: {kl} must be 0/1")
        for f, l in zip(files, labels):
            samples.append({"file_name": os.path.join(image_dir, f), "box": None, "attributes": [int(v) for v in l]})
    return samples, names


def load_attribute_list(path: str, attribute_names: Optional[Sequence[str]] = None) -> Tuple[List[dict], List[str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"attribute list file {path!r} not found")
    base = os.path.dirname(os.path.abspath(path))
    names = list(attribute_names) if attribute_names else None
    samples: List[dict] = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                body = line[1:].strip()
                if body.lower().startswith("attributes:") and not samples:
                    header = body.split(":", 1)[1].split()
                    if names is not None and list(names) != header:
                        raise ValueError(
                            f"{path}:{lineno}: header attributes {header} differ from the given {list(names)}"
                        )
                    names = header
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: expected '<image path> <0/1> ...', got {line!r}")
            try:
                vals = [int(v) for v in parts[1:]]
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: attribute values must be integers 0/1/-1, got {parts[1:]}"
                ) from None
            if any(v not in (-1, 0, 1) for v in vals):
                raise ValueError(f"{path}:{lineno}: attribute values must be 0, 1 or -1 (unlabeled), got {vals}")
            if names is None:
                names = [f"attr_{j}" for j in range(len(vals))]
            if len(vals) != len(names):
                raise ValueError(f"{path}:{lineno}: {len(vals)} attribute values, expected {len(names)}")
            p = parts[0] if os.path.isabs(parts[0]) else os.path.join(base, parts[0])
            samples.append({"file_name": p, "box": None, "attributes": vals})
    if not samples:
        raise ValueError(f"attribute list file {path!r} has no samples")
    return samples, names


def write_attribute_list(path: str, samples: Sequence[dict], attribute_names: Sequence[str]) -> None:
    """Inverse of :func:`load_attribute_list` (whole-image samples; paths written as given)."""
    with open(path, "w") as f:
        f.write("# attributes: " + " ".join(attribute_names) + "\n")
        for s in samples:
            if s.get("box") is not None:
                raise ValueError("write_attribute_list: list files hold whole-image samples (box must be None)")
            f.write(s["file_name"] + " " + " ".join(str(int(v)) for v in s["attributes"]) + "\n")


def load_synthps_attributes(root: str) -> Tuple[List[str], List[dict]]:
    """(attribute_names, persons) of ``<root>/synthps_attributes.json``, validated by the dataset
    loaders' parser (:func:`galw_d2.data.datasets.common.load_attribute_file`); persons as
    ``{"image", "box" (XYXY floats), "attributes"}``."""
    from galw_d2.data.datasets.common import ATTRIBUTE_FILE, load_attribute_file

    attr = load_attribute_file(root)
    if attr is None:
        raise FileNotFoundError(
            f"SynthPS attribute file {os.path.join(root, ATTRIBUTE_FILE)!r} not found "
            "(generate the root with tools/make_synthps.py)"
        )
    persons = [
        {"image": image, "box": [float(v) for v in box], "attributes": labels}
        for image, entries in attr["persons"].items()
        for box, labels in entries
    ]
    return attr["attribute_names"], persons


def synthps_split_images(root: str, fmt: str) -> Dict[str, List[str]]:
    """{"train": [...], "test": [...]} bare image names of a SynthPS root in layout ``fmt`` (train and
    gallery splits of the real loaders), and the image folder under "image_dir" (a one-element list)."""
    from galw_d2.data.datasets import load_cuhk_sysu, load_prw

    loaders = {"cuhk_sysu": (load_cuhk_sysu, ("Image", "SSM")), "prw": (load_prw, ("frames",))}
    if fmt not in loaders:
        raise ValueError(f"SynthPS format must be 'cuhk_sysu' or 'prw', got {fmt!r}")
    load, image_dir = loaders[fmt]
    return {
        "train": [r["image_name"] for r in load(root, "train")],
        "test": [r["image_name"] for r in load(root, "gallery")],
        "image_dir": [os.path.join(root, *image_dir)],
    }


def load_synthps_crops(root: str, split: str, fmt: str = "cuhk_sysu") -> Tuple[List[dict], List[str]]:
    """Person crops (samples with boxes) of the images of ``split`` ("train" | "test") of a SynthPS root."""
    if split not in ("train", "test"):
        raise ValueError(f"SynthPS crop split must be 'train' or 'test', got {split!r}")
    names, persons = load_synthps_attributes(root)
    sp = synthps_split_images(root, fmt)
    keep = set(sp[split])
    image_dir = sp["image_dir"][0]
    samples = [
        {
            "file_name": os.path.join(image_dir, p["image"]),
            "image_name": p["image"],
            "box": [float(v) for v in p["box"]],
            "attributes": [int(v) for v in p["attributes"]],
        }
        for p in persons
        if p["image"] in keep
    ]
    if not samples:
        raise ValueError(f"SynthPS root {root!r} ({fmt}): no person of {split!r} images in synthps_attributes.json")
    return samples, names


def load_attribute_samples(cfg, split: str) -> Tuple[List[dict], List[str]]:
    """Samples of ``split`` ("train" | "test" = held out) for the recognizer config ``cfg.ATTRIBUTE_NET.DATA``."""
    d = cfg.ATTRIBUTE_NET.DATA
    if d.TYPE == "synthps":
        root = d.ROOT
        if not os.path.exists(os.path.join(root, "synthps_attributes.json")):
            if not d.SYNTHPS_PRESET:
                raise FileNotFoundError(
                    f"SynthPS root {root!r} not found; generate it with python tools/make_synthps.py "
                    f"--output {root} --format {d.SYNTHPS_FORMAT} --preset tiny, or set "
                    "ATTRIBUTE_NET.DATA.SYNTHPS_PRESET to generate it automatically"
                )
            from galw_d2.data.synthps import generate_synthps

            generate_synthps(root, d.SYNTHPS_FORMAT, d.SYNTHPS_PRESET, int(d.SYNTHPS_SEED))
        return load_synthps_crops(root, split, d.SYNTHPS_FORMAT)
    if d.TYPE == "pa100k":
        return load_pa100k(d.ROOT, d.PA100K_TRAIN_SPLITS if split == "train" else "test", d.IMAGE_DIR)
    if d.TYPE == "list":
        path = d.TRAIN_LIST if split == "train" else d.TEST_LIST
        if not path:
            raise ValueError(f"ATTRIBUTE_NET.DATA.{'TRAIN' if split == 'train' else 'TEST'}_LIST is empty")
        return load_attribute_list(path)
    raise ValueError(f"ATTRIBUTE_NET.DATA.TYPE must be 'synthps', 'pa100k' or 'list', got {d.TYPE!r}")


def samples_to_targets(samples: Sequence[dict]) -> torch.Tensor:
    return torch.tensor([s["attributes"] for s in samples], dtype=torch.float32)


def _read_rgb(path: str) -> np.ndarray:

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} not found")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _crop_resize(img: np.ndarray, box, size_hw) -> np.ndarray:

    H, W = img.shape[:2]
    if box is not None:
        x1, y1, x2, y2 = box
        x1, y1 = int(np.floor(max(0, x1))), int(np.floor(max(0, y1)))
        x2, y2 = int(np.ceil(min(W, x2))), int(np.ceil(min(H, y2)))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"box {list(box)} is empty inside the {W}x{H} image")
        img = img[y1:y2, x1:x2]
    out = Image.fromarray(np.ascontiguousarray(img)).resize((int(size_hw[1]), int(size_hw[0])), Image.BILINEAR)
    return np.array(out)  # a writable copy


class CropDataset(Dataset):
    """Crops resized to ``input_size`` (H, W) -> (float RGB tensor (3, H, W) in [0, 1], targets (A,)).

    ``cache=True`` keeps the resized uint8 crops in memory (images are decoded once per file).
    Training mode flips horizontally with probability ``flip_prob``. Samples without "attributes"
    get targets of -1 (used for inference)."""

    def __init__(
        self,
        samples: Sequence[dict],
        input_size=(128, 64),
        train: bool = False,
        flip_prob: float = 0.5,
        cache: Optional[bool] = None,
        seed: int = 0,
    ):
        self.samples = list(samples)
        self.size = tuple(int(s) for s in input_size)
        self.train = train
        self.flip_prob = flip_prob
        self.cache = len(self.samples) <= 20000 if cache is None else cache
        self._crops: Optional[List[np.ndarray]] = None
        self._rng = np.random.default_rng(seed)
        if self.cache:
            self._crops = self._load_all()

    def _load_all(self) -> List[np.ndarray]:
        crops, last_path, last_img = [], None, None
        order = sorted(range(len(self.samples)), key=lambda i: self.samples[i]["file_name"])
        out: List[Optional[np.ndarray]] = [None] * len(self.samples)
        for i in order:
            s = self.samples[i]
            if s["file_name"] != last_path:
                last_path, last_img = s["file_name"], _read_rgb(s["file_name"])
            out[i] = _crop_resize(last_img, s.get("box"), self.size)
        crops.extend(out)
        return crops

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        crop = (
            self._crops[i]
            if self._crops is not None
            else _crop_resize(_read_rgb(s["file_name"]), s.get("box"), self.size)
        )
        if self.train and self.flip_prob > 0 and self._rng.random() < self.flip_prob:
            crop = crop[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 255.0
        attrs = s.get("attributes")
        y = torch.tensor(attrs, dtype=torch.float32) if attrs is not None else torch.zeros(0)
        return x, y
