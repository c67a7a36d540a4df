"""SynthPS scene layout: identities -> images -> people, boxes and queries (format independent)."""

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from .appearance import ATTRIBUTE_NAMES, Appearance, attributes_of, sample_appearance, sample_identities
from .render import apply_camera, draw_background, draw_occluder, draw_person, paste, sample_camera

__all__ = ["Preset", "PRESETS", "PersonGT", "SceneGT", "QueryGT", "SynthPSTruth", "build_scenes"]


@dataclass(frozen=True)
class Preset:
    """Size of a SynthPS dataset."""

    train_images: int
    train_ids: int
    test_images: int
    test_ids: int  # = number of queries (one per test identity)
    image_hw: Tuple[int, int]  # (height, width) of every image
    person_height: Tuple[int, int]  # drawn person heights, px (far .. near)
    cameras: int
    labeled_per_image: Tuple[int, int]  # capacity of identity instances per image (min, max)
    distractors_per_image: Tuple[int, int]  # unlabeled people per image (min, max)
    occlusion_prob: float  # chance that a person gets an occluder (pole / obstacle)


PRESETS: Dict[str, Preset] = {
    "tiny": Preset(24, 8, 16, 8, (160, 240), (40, 112), 3, (1, 3), (0, 1), 0.25),
    "small": Preset(360, 64, 120, 60, (240, 360), (44, 160), 6, (1, 3), (0, 2), 0.25),
    # small's scenes and image size, more of them: 400 queries resolve mAP differences of a few points
    # (docs/synthps.md "Presets"); 1200 train scenes / 300 ids so short runs do not just memorise
    "medium": Preset(1200, 300, 500, 400, (240, 360), (44, 160), 6, (1, 3), (0, 2), 0.25),
}


@dataclass
class PersonGT:
    box: Tuple[int, int, int, int]  # x, y, w, h (ints), as written to the annotation files
    identity: int  # global identity index (train ids first, then test ids); -1 = distractor
    attributes: List[int]
    occlusion: float  # approximate fraction of the box hidden by occluders / nearer people
    pid: int = -1  # id in the files (PRW number / CUHK idname number); -1 = unlabeled

    @property
    def ishard(self) -> int:
        return int(self.occlusion > 0.3 or self.box[3] < 50)


@dataclass
class SceneGT:
    index: int
    split: str  # "train" | "test"
    camera: int  # 1-based
    height: int
    width: int
    persons: List[PersonGT]
    name: str = ""  # bare image name, set by the format writer


@dataclass
class QueryGT:
    scene: int  # index into SynthPSTruth.scenes
    person: int  # index into that scene's persons
    identity: int


@dataclass
class SynthPSTruth:
    """Everything the generator decided, for previews and round-trip tests."""

    fmt: str
    preset: str
    seed: int
    attribute_names: List[str]
    scenes: List[SceneGT]
    queries: List[QueryGT]
    identity_split: List[str]  # per identity: "train" | "test"
    galleries: Dict[int, List[List[Tuple[str, Optional[Tuple[int, int, int, int]]]]]] = field(default_factory=dict)
    # CUHK-SYSU layout: subset name -> (query indices, gallery size used for their lists)
    subsets: Dict[str, Tuple[List[int], int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["galleries"] = {str(k): v for k, v in self.galleries.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SynthPSTruth":
        scenes = []
        for s in d["scenes"]:
            persons = [
                PersonGT(tuple(p["box"]), p["identity"], p["attributes"], p["occlusion"], p["pid"])
                for p in s["persons"]
            ]
            scenes.append(SceneGT(s["index"], s["split"], s["camera"], s["height"], s["width"], persons, s["name"]))
        galleries = {
            int(k): [[(n, tuple(b) if b is not None else None) for n, b in g] for g in v]
            for k, v in d.get("galleries", {}).items()
        }
        subsets = {k: (list(v[0]), int(v[1])) for k, v in d.get("subsets", {}).items()}
        return cls(
            d["fmt"],
            d["preset"],
            d["seed"],
            list(d["attribute_names"]),
            scenes,
            [QueryGT(**q) for q in d["queries"]],
            list(d["identity_split"]),
            galleries,
            subsets,
        )


def _assign(
    rng: np.random.Generator, n_images: int, ids: List[int], cameras: np.ndarray, cap_range: Tuple[int, int]
) -> List[List[int]]:
    """Distribute identity instances over images: each id >= 2 instances, spread over cameras,
    never twice in one image, round-robin so every id gets about the same number."""
    caps = rng.integers(cap_range[0], cap_range[1] + 1, size=n_images)
    if caps.sum() < 2 * len(ids):
        raise ValueError(f"SynthPS preset too small: {n_images} images cannot hold 2 instances of {len(ids)} ids")
    per_id = max(2, -(-int(caps.sum()) // len(ids)))  # ceil: fill every image up to its capacity
    content: List[List[int]] = [[] for _ in range(n_images)]
    counts = np.zeros(n_images, dtype=np.int64)
    present = {i: np.zeros(n_images, dtype=bool) for i in ids}
    used_cam = {i: np.zeros(n_images, dtype=bool) for i in ids}  # image's camera already seen by id
    for _ in range(per_id):
        for i in rng.permutation(ids):
            i = int(i)
            free = (counts < caps) & ~present[i]
            if not free.any():
                continue
            # prefer a camera the id was not seen by, then the emptiest image, then at random
            key = used_cam[i] * 100.0 + (counts - caps) * 2.0 + rng.random(n_images)
            key[~free] = np.inf
            j = int(np.argmin(key))
            content[j].append(i)
            counts[j] += 1
            present[i][j] = True
            used_cam[i] |= cameras == cameras[j]
    for i in ids:
        n = sum(i in c for c in content)
        if n < 2:  # cannot happen with caps.sum() >= 2 * ids, kept as a guard
            raise RuntimeError(f"identity {i} got only {n} instances")
    return content


def _cover(a, b) -> float:
    """Largest fraction of either (x, y, w, h) box covered by the other."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / float(min(a[2] * a[3], b[2] * b[3]))


def _render_scene(
    scene_rng: np.random.Generator, preset: Preset, cam, labeled: List[int], identities: List[Appearance]
):
    H, W = preset.image_hw
    img = draw_background(cam, H, W, scene_rng)
    n_dis = int(scene_rng.integers(preset.distractors_per_image[0], preset.distractors_per_image[1] + 1))
    if not labeled and n_dis == 0:
        n_dis = 1
    who = [(i, identities[i]) for i in labeled] + [(-1, sample_appearance(scene_rng)) for _ in range(n_dis)]
    hmin, hmax = preset.person_height
    horizon = cam.horizon * H
    y_lo = horizon + 0.3 * (H - horizon)
    placed = []  # (foot_y, box, patch, mask, identity, app)
    for ident, app in who:
        best = None
        for attempt in range(30):
            foot = float(scene_rng.uniform(y_lo, H))
            t = (foot - y_lo) / max(1.0, H - y_lo)
            ht = (hmin + t * (hmax - hmin)) * scene_rng.uniform(0.92, 1.08)
            ht = int(np.clip(ht, hmin, min(hmax, foot - 1)))
            if best is None or attempt % 10 == 0:
                patch, mask = draw_person(app, ht, scene_rng)
            ph, pw = mask.shape
            if pw >= W or ph > H:
                continue
            x = int(scene_rng.integers(0, W - pw + 1))
            y = int(min(H - ph, max(0, round(foot) - ph)))
            box = (x, y, pw, ph)
            overlap = max([_cover(box, p[1]) for p in placed] + [0.0])
            if any(box == p[1] for p in placed):
                continue
            if best is None or overlap < best[0]:
                best = (overlap, (y + ph, box, patch, mask, ident, app))
            if overlap < 0.25:
                break
        if best is None:
            if ident >= 0:
                raise RuntimeError("could not place a labeled person")
            continue
        if ident < 0 and best[0] >= 0.25:
            continue  # distractors are optional
        placed.append(best[1])
    placed.sort(key=lambda p: p[0])  # far (small foot y) first: near people occlude far ones
    for _, (x, y, w, h), patch, mask, _, _ in placed:
        paste(img, patch, mask, x, y)
    occl = [0.0] * len(placed)
    for k, p in enumerate(placed):  # box fraction covered by nearer people (painted later)
        bx = p[1]
        for q in placed[k + 1 :]:
            qb = q[1]
            ix = max(0, min(bx[0] + bx[2], qb[0] + qb[2]) - max(bx[0], qb[0]))
            iy = max(0, min(bx[1] + bx[3], qb[1] + qb[3]) - max(bx[1], qb[1]))
            occl[k] += 0.6 * ix * iy / float(bx[2] * bx[3])  # people are ~60% of their box
    for k, p in enumerate(placed):
        if occl[k] < 0.25 and scene_rng.random() < preset.occlusion_prob:
            occl[k] += draw_occluder(img, p[1], scene_rng)
    img = apply_camera(img, cam, scene_rng)
    persons = [
        PersonGT(tuple(int(v) for v in p[1]), int(p[4]), attributes_of(p[5]), round(float(min(1.0, o)), 3))
        for p, o in zip(placed, occl)
    ]
    return img, persons


def build_scenes(preset_name: str, seed: int, progress: bool = False):
    """Lay out and render every scene of a preset.

    Returns (truth without names/pids/galleries, images: list of RGB uint8 arrays, same order).
    """
    if preset_name not in PRESETS:
        raise ValueError(f"unknown SynthPS preset {preset_name!r}; expected one of {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    root_ss = np.random.SeedSequence(int(seed))
    id_ss, cam_ss, layout_ss, scene_ss = root_ss.spawn(4)
    taken = set()
    id_rng = np.random.default_rng(id_ss)
    identities = sample_identities(id_rng, preset.train_ids + preset.test_ids, taken)
    identity_split = ["train"] * preset.train_ids + ["test"] * preset.test_ids
    cam_rng = np.random.default_rng(cam_ss)
    cameras = [sample_camera(c, cam_rng) for c in range(preset.cameras)]
    lay = np.random.default_rng(layout_ss)

    plan = []  # (split, camera index, labeled ids)
    for split, n_img, ids in (
        ("train", preset.train_images, list(range(preset.train_ids))),
        ("test", preset.test_images, list(range(preset.train_ids, preset.train_ids + preset.test_ids))),
    ):
        cams = np.resize(np.arange(preset.cameras), n_img)
        cams = cams[lay.permutation(n_img)]
        content = _assign(lay, n_img, ids, cams, preset.labeled_per_image)
        plan += [(split, int(c), lab) for c, lab in zip(cams, content)]

    scene_seeds = scene_ss.spawn(len(plan))
    scenes, images = [], []
    it = enumerate(plan)
    if progress:
        it = tqdm(it, total=len(plan), desc="SynthPS scenes", unit="img")
    for k, (split, c, lab) in it:
        rng = np.random.default_rng(scene_seeds[k])
        img, persons = _render_scene(rng, preset, cameras[c], lab, identities)
        scenes.append(SceneGT(k, split, c + 1, preset.image_hw[0], preset.image_hw[1], persons))
        images.append(img)

    queries = []
    for ident in range(preset.train_ids, preset.train_ids + preset.test_ids):
        occ = [
            (p.occlusion, -p.box[3], s.index, j)
            for s in scenes
            if s.split == "test"
            for j, p in enumerate(s.persons)
            if p.identity == ident
        ]
        _, _, si, pj = min(occ)  # least occluded, then tallest instance
        queries.append(QueryGT(si, pj, ident))
    truth = SynthPSTruth("", preset_name, int(seed), list(ATTRIBUTE_NAMES), scenes, queries, identity_split)
    return truth, images
