"""Re-id data for the Mancs recipe, through torchreid's data managers.

- Market-1501, DukeMTMC-reID, CUHK03: torchreid's own datasets ("market1501", "dukemtmcreid",
  "cuhk03") read their official layouts under ``DATA.ROOT`` (torchreid's folder names).
- SynthPS crops: :func:`export_reid_crops` cuts the labeled person boxes of a person-search root in
  the PRW layout (a SynthPS root written with ``--format prw``, or PRW itself: the frame names carry the
  camera) into the Market-1501 layout::

      <out>/bounding_box_train/<pid>_c<cam>s1_<frame>_<k>.jpg   train ids, relabeled 1..K
      <out>/query/...                                          one random crop per test id seen by
                                                               >= 2 cameras
      <out>/bounding_box_test/...                              the other test crops; unlabeled
                                                               people as distractors, pid 0000
      <out>/export_meta.json                                   source root, counts, settings

  :class:`MarketLayoutDataset` reads such a folder as a torchreid ``ImageDataset``;
  :func:`register_synthps_reid` registers ``synthps_reid_<preset>`` (folder ``DATA.ROOT/<name>``)
  with ``torchreid.reid.data.register_image_dataset``; :func:`ensure_synthps_reid` generates and
  exports the folder when it is missing.
- :func:`build_train_transform`: Mancs augmentation (Sec. 4.3): resize, random resized crop (area
  0.64-1, aspect h/w 2-3) resized back, flip, normalise, random erasing.
- :func:`build_datamanager`: torchreid ``ImageDataManager`` with PK sampling and that transform.
"""

import glob
import json
import os
import re
from collections import defaultdict
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torchvision.transforms as T
from PIL import Image
from torchreid.reid.data import ImageDataManager, register_image_dataset
from torchreid.reid.data.datasets.dataset import ImageDataset

__all__ = [
    "export_reid_crops",
    "MarketLayoutDataset",
    "register_synthps_reid",
    "ensure_synthps_reid",
    "synthps_reid_preset",
    "build_train_transform",
    "build_datamanager",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_NAME = re.compile(r"^(-?\d+)_c(\d+)s\d+_\d+_\d+\.jpg$")
SYNTHPS_PREFIX = "synthps_reid_"


def _crop(image, box):
    """PIL crop of an XYXY box clipped to the image; None when nothing is left."""
    x1, y1, x2, y2 = [float(v) for v in box]
    w, h = image.size
    x1, y1, x2, y2 = max(0, round(x1)), max(0, round(y1)), min(w, round(x2)), min(h, round(y2))
    if x2 <= x1 or y2 <= y1:
        return None
    return image.crop((x1, y1, x2, y2))


def export_reid_crops(ps_root: str, output: str, seed: int = 0, min_height: int = 0) -> dict:
    """Write the person crops of a PRW-layout person-search root as a Market-1501-layout folder.

    Args:
        ps_root: PRW-layout root (read by :func:`galw_d2.data.datasets.load_prw`).
        output: folder to create (must not hold a previous export's images).
        seed: picks which crop of each (test id, camera) is the query.
        min_height: skip boxes lower than this many pixels (0 = keep all).
    Returns:
        summary dict (also written to ``output/export_meta.json``).
    """

    from galw_d2.data.datasets import load_prw

    subdirs = ("bounding_box_train", "query", "bounding_box_test")
    for s in subdirs:
        d = os.path.join(output, s)
        if os.path.isdir(d) and os.listdir(d):
            raise FileExistsError(f"re-id export: {d!r} is not empty; remove {output!r} or choose another output")
        os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(int(seed))

    def crops_of(split):
        out = []  # (pid, cam, frame index, k, image path, box)
        for r in load_prw(ps_root, split):
            cam = int(r["camera_id"])
            if not 1 <= cam <= 9:
                raise ValueError(
                    f"re-id export: camera {cam} of {r['image_name']} does not fit the Market-1501 "
                    "name pattern (one digit, 1..9)"
                )
            for k, a in enumerate(r["annotations"]):
                x1, y1, x2, y2 = a["bbox"]
                if y2 - y1 < min_height:
                    continue
                out.append((int(a["person_id"]), cam, int(r["image_id"]), k, r["file_name"], a["bbox"]))
        return out

    train = [c for c in crops_of("train") if c[0] >= 0]
    test = crops_of("gallery")
    if not train:
        raise ValueError(f"re-id export: {ps_root!r} has no labeled training box")
    bad = sorted({c[0] for c in train + test if c[0] + 1 > 9999})
    if bad:
        raise ValueError(f"re-id export: person ids {bad[:5]} do not fit 4 digits")
    labeled = [c for c in test if c[0] >= 0]
    cams_of = defaultdict(set)
    for c in labeled:
        cams_of[c[0]].add(c[1])
    by_id = defaultdict(list)
    for i, c in enumerate(labeled):
        if len(cams_of[c[0]]) >= 2:  # a query needs a true match in another camera (Market protocol)
            by_id[c[0]].append(i)
    # one query per test identity (SynthPS ids have ~1 crop per camera, so Market's one query per
    # (id, camera) would leave almost no true match in the gallery)
    query_idx = {int(v[rng.integers(len(v))]) for _, v in sorted(by_id.items())}
    if not query_idx:
        raise ValueError(f"re-id export: no test identity of {ps_root!r} is seen by two cameras; no query possible")

    cache = {}

    def write(items, folder, pid_of):
        n = 0
        for c in items:
            pid, cam, frame, k, path, box = c
            if path not in cache:
                cache.clear()  # crops are grouped by frame: keep one decoded frame
                with Image.open(path) as im:
                    cache[path] = im.convert("RGB")
            patch = _crop(cache[path], box)
            if patch is None:
                continue
            name = f"{pid_of(pid):04d}_c{cam}s1_{frame:06d}_{k:02d}.jpg"
            patch.save(os.path.join(output, folder, name), quality=95)
            n += 1
        return n

    counts = {
        "train": write(train, "bounding_box_train", lambda p: p + 1),  # Market: 0 = distractor
        "query": write([labeled[i] for i in sorted(query_idx)], "query", lambda p: p + 1),
        "gallery": write(
            [c for i, c in enumerate(labeled) if i not in query_idx] + [c for c in test if c[0] < 0],
            "bounding_box_test",
            lambda p: p + 1 if p >= 0 else 0,
        ),
    }
    meta = {
        "source": os.path.abspath(ps_root),
        "layout": "market1501",
        "seed": int(seed),
        "min_height": min_height,
        "images": counts,
        "train_ids": len({c[0] for c in train}),
        "query_ids": len({labeled[i][0] for i in query_idx}),
        "gallery_distractors": sum(c[0] < 0 for c in test),
    }
    with open(os.path.join(output, "export_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


class MarketLayoutDataset(ImageDataset):
    """A torchreid ``ImageDataset`` of a Market-1501-layout folder ``root/<dataset_dir>`` (subclasses set
    ``dataset_dir``). Names ``<pid>_c<cam>s<seq>_<frame>_<k>.jpg``; pid -1 = junk (skipped), 0 =
    distractor (gallery only); train ids are relabeled 0..K-1, cameras 0-based."""

    dataset_dir = ""

    def __init__(self, root: str = "", **kwargs):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.data_dir = os.path.join(self.root, self.dataset_dir)
        dirs = [os.path.join(self.data_dir, s) for s in ("bounding_box_train", "query", "bounding_box_test")]
        missing = [d for d in dirs if not os.path.isdir(d)]
        if missing:
            raise FileNotFoundError(
                f"re-id dataset {self.dataset_dir!r}: missing {missing}; expected the Market-1501 "
                "layout (export SynthPS crops with tools/export_synthps_reid.py)"
            )
        train = self.parse_dir(dirs[0], relabel=True)
        query = self.parse_dir(dirs[1])
        gallery = self.parse_dir(dirs[2])
        super().__init__(train, query, gallery, **kwargs)

    @staticmethod
    def parse_dir(path: str, relabel: bool = False) -> List[Tuple[str, int, int]]:
        """[(image path, pid, camid)] of one folder, sorted by name."""
        items = []
        for p in sorted(glob.glob(os.path.join(path, "*.jpg"))):
            m = _NAME.match(os.path.basename(p))
            if m is None:
                raise ValueError(f"{p}: file name does not match '<pid>_c<cam>s<seq>_<frame>_<k>.jpg'")
            pid, cam = int(m.group(1)), int(m.group(2))
            if pid == -1:
                continue
            items.append((p, pid, cam - 1))
        if not items:
            raise ValueError(f"re-id dataset folder {path!r} has no images")
        if relabel:
            label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
            items = [(p, label[pid], c) for p, pid, c in items]
        return items


def synthps_reid_preset(name: str) -> Optional[str]:
    """``"synthps_reid_small"`` -> ``"small"``; None for other names."""
    return name[len(SYNTHPS_PREFIX) :] if name.startswith(SYNTHPS_PREFIX) else None


def register_synthps_reid(name: str) -> type:
    """Register ``name`` (folder ``DATA.ROOT/<name>``) with torchreid's image-dataset registry (idempotent)."""
    cls = type(f"MarketLayout_{name}", (MarketLayoutDataset,), {"dataset_dir": name})
    try:
        register_image_dataset(name, cls)
    except ValueError:  # torchreid refuses names it already has; ours map to the same folder
        pass
    return cls


def ensure_synthps_reid(root: str, name: str, seed: int = 0) -> str:
    """Make ``root/<name>`` exist: generate SynthPS ``<preset>`` (PRW layout, ``seed``) under
    ``root/synthps_<preset>_prw_s<seed>`` if needed and export its crops. Returns the folder."""
    from galw_d2.data.synthps import PRESETS, generate_synthps

    preset = synthps_reid_preset(name)
    if preset not in PRESETS:
        raise ValueError(f"DATA.SOURCES {name!r}: expected {SYNTHPS_PREFIX}<preset>, preset one of {sorted(PRESETS)}")
    out = os.path.join(root, name)
    if os.path.isfile(os.path.join(out, "export_meta.json")):
        return out
    ps_root = os.path.join(root, f"synthps_{preset}_prw_s{seed}")
    if not os.path.isfile(os.path.join(ps_root, "synthps_meta.json")):
        generate_synthps(ps_root, "prw", preset, int(seed))
    export_reid_crops(ps_root, out, seed=int(seed))
    return out


def build_train_transform(
    size_hw: Sequence[int], crop_scale=(0.64, 1.0), crop_aspect=(2.0, 3.0), flip_prob=0.5, erasing_prob=0.5
) -> T.Compose:
    """Mancs training augmentation (Sec. 4.3) on PIL crops -> (3, H, W) normalised tensors.

    ``crop_aspect`` is height / width (torchvision's ratio is width / height, hence the inversion).
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    lo, hi = float(crop_aspect[0]), float(crop_aspect[1])
    if not (0 < lo <= hi):
        raise ValueError(f"INPUT.CROP_ASPECT must be 0 < lo <= hi, got {crop_aspect}")
    return T.Compose(
        [
            T.Resize((h, w)),
            T.RandomResizedCrop((h, w), scale=tuple(float(s) for s in crop_scale), ratio=(1.0 / hi, 1.0 / lo)),
            T.RandomHorizontalFlip(flip_prob),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            T.RandomErasing(p=erasing_prob, value=0),
        ]
    )


def build_datamanager(cfg) -> ImageDataManager:
    """torchreid ``ImageDataManager`` of a reid config: PK sampler, Mancs augmentation, test loaders.

    SynthPS sources/targets (``synthps_reid_<preset>``) are registered and, when missing, generated.
    """
    d = cfg.DATA
    names = list(d.SOURCES) + list(d.TARGETS)
    if not d.SOURCES:
        raise ValueError("DATA.SOURCES is empty; name at least one torchreid dataset")
    for n in names:
        if synthps_reid_preset(n) is not None:
            ensure_synthps_reid(d.ROOT, n, int(d.SYNTHPS_SEED))
            register_synthps_reid(n)
    h, w = cfg.INPUT.SIZE
    dm = ImageDataManager(
        root=d.ROOT,
        sources=list(d.SOURCES),
        targets=list(d.TARGETS) or None,
        height=int(h),
        width=int(w),
        transforms=None,
        norm_mean=IMAGENET_MEAN,
        norm_std=IMAGENET_STD,
        use_gpu=cfg.DEVICE != "cpu",
        batch_size_train=int(d.P) * int(d.K),
        batch_size_test=int(d.BATCH_SIZE_TEST),
        workers=int(d.NUM_WORKERS),
        num_instances=int(d.K),
        train_sampler="RandomIdentitySampler",
        cuhk03_labeled=bool(d.CUHK03_LABELED),
        cuhk03_classic_split=bool(d.CUHK03_CLASSIC_SPLIT),
    )
    # ImageDataManager only knows torchreid's named transforms; the Mancs crop is set on its train set
    dm.train_loader.dataset.transform = build_train_transform(
        cfg.INPUT.SIZE, cfg.INPUT.CROP_SCALE, cfg.INPUT.CROP_ASPECT, cfg.INPUT.FLIP_PROB, cfg.INPUT.RANDOM_ERASING_PROB
    )
    return dm
