"""Drawing SynthPS scenes with numpy / OpenCV: people, backgrounds, occluders and cameras.

All images are RGB uint8 (converted to BGR only when written). Every function takes an explicit
``numpy.random.Generator`` so a scene is a pure function of its seed.
"""

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

from .appearance import COLOURS, Appearance

__all__ = ["Camera", "sample_camera", "draw_person", "draw_background", "apply_camera", "paste"]

_AA = cv2.LINE_AA


def _rgb(name_or_rgb) -> np.ndarray:
    if isinstance(name_or_rgb, str):
        return np.asarray(COLOURS[name_or_rgb][1], dtype=np.float32)
    return np.asarray(name_or_rgb, dtype=np.float32)


def _jitter(colour: np.ndarray, rng: np.random.Generator, amount: float) -> Tuple[int, int, int]:
    c = colour * (1.0 + rng.normal(0.0, amount)) + rng.normal(0.0, 255.0 * amount * 0.5, size=3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


# ----------------------------------------------------------------------------------------- people
def draw_person(
    app: Appearance, height: int, rng: np.random.Generator, colour_noise: float = 0.04
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one instance of ``app`` about ``height`` px tall.

    Returns (patch (h, w, 3) uint8 RGB, mask (h, w) uint8 0..255), cropped to the drawn pixels.
    Instance variation: pose (leg spread, arm swing, lean), facing (mirror), colour noise.
    """
    H = int(height)
    Wc = int(H * 0.75) + 8
    img = np.zeros((H + 4, Wc, 3), dtype=np.uint8)
    mask = np.zeros((H + 4, Wc), dtype=np.uint8)
    cx = Wc / 2.0 + rng.normal(0, 0.01) * H
    lean = rng.normal(0, 0.02) * H  # horizontal shift of the head relative to the feet

    def col(c):
        return _jitter(_rgb(c), rng, colour_noise)

    skin = col(app.skin)
    upper = col(app.upper)
    upper2 = col(app.upper2)
    lower = col(app.lower)
    hair = col(app.hair)
    bagc = col(app.bag_colour)
    shoes = col(app.shoes)

    def P(x, y):
        return (int(round((cx + x) * 4)), int(round(y * 4)))  # 2 fractional bits (shift=2)

    def poly(points, colour):
        pts = np.array([P(*p) for p in points], dtype=np.int32)
        cv2.fillPoly(img, [pts], colour, _AA, shift=2)
        cv2.fillPoly(mask, [pts], 255, _AA, shift=2)

    def line(p, q, colour, th):
        th = max(1, int(round(th)))
        cv2.line(img, P(*p), P(*q), colour, th, _AA, shift=2)
        cv2.line(mask, P(*p), P(*q), 255, th, _AA, shift=2)

    def ellipse(c, axes, colour, start=0, end=360):
        ax = (max(1, int(round(axes[0] * 4))), max(1, int(round(axes[1] * 4))))
        cv2.ellipse(img, P(*c), ax, 0, start, end, colour, -1, _AA, shift=2)
        cv2.ellipse(mask, P(*c), ax, 0, start, end, 255, -1, _AA, shift=2)

    r = app.head_ratio * H
    top = 0.05 * H if app.hat else 0.01 * H
    head_c = (lean, top + r)
    shoulder_y = top + 2 * r + 0.025 * H
    hip_y = shoulder_y + app.torso_ratio * H
    foot_y = H - 0.02 * H
    sw = app.width_ratio * H / 2.0
    hw = sw * 0.82
    swing = rng.uniform(-0.07, 0.07) * H
    spread = rng.uniform(0.0, 0.07) * H
    arm_th = max(2.0, 0.07 * H)
    leg_th = max(2.0, 0.095 * H)

    # behind the body: long hair, backpack
    if app.long_hair:
        poly(
            [
                (lean - r * 1.05, head_c[1]),
                (lean + r * 1.05, head_c[1]),
                (lean + r * 1.15, shoulder_y + 0.09 * H),
                (lean - r * 1.15, shoulder_y + 0.09 * H),
            ],
            hair,
        )
    if app.bag == "backpack":
        bx0 = -sw - 0.07 * H
        poly(
            [
                (bx0, shoulder_y + 0.02 * H),
                (bx0 + 0.16 * H, shoulder_y + 0.02 * H),
                (bx0 + 0.16 * H, shoulder_y + 0.24 * H),
                (bx0, shoulder_y + 0.24 * H),
            ],
            bagc,
        )

    # legs and lower garment
    lhip, rhip = (lean * 0.5 - hw * 0.5, hip_y), (lean * 0.5 + hw * 0.5, hip_y)
    lfoot, rfoot = (-hw * 0.5 - spread, foot_y - 0.02 * H), (hw * 0.5 + spread, foot_y - 0.02 * H)
    if app.lower_type == "trousers":
        line(lhip, lfoot, lower, leg_th)
        line(rhip, rfoot, lower, leg_th)
    else:
        line(lhip, lfoot, skin, leg_th * 0.8)
        line(rhip, rfoot, skin, leg_th * 0.8)
        if app.lower_type == "shorts":
            t = 0.4
            lk = (lhip[0] + (lfoot[0] - lhip[0]) * t, hip_y + (lfoot[1] - hip_y) * t)
            rk = (rhip[0] + (rfoot[0] - rhip[0]) * t, hip_y + (rfoot[1] - hip_y) * t)
            line(lhip, lk, lower, leg_th * 1.1)
            line(rhip, rk, lower, leg_th * 1.1)
        else:  # skirt
            sk = hip_y + 0.22 * H
            poly(
                [
                    (lean * 0.5 - hw, hip_y - 0.01 * H),
                    (lean * 0.5 + hw, hip_y - 0.01 * H),
                    (hw * 1.35, sk),
                    (-hw * 1.35, sk),
                ],
                lower,
            )
    ellipse((lfoot[0] - 0.02 * H, foot_y - 0.01 * H), (0.05 * H, 0.022 * H), shoes)
    ellipse((rfoot[0] + 0.02 * H, foot_y - 0.01 * H), (0.05 * H, 0.022 * H), shoes)

    # torso with its pattern
    torso = [
        (lean - sw, shoulder_y),
        (lean + sw, shoulder_y),
        (lean * 0.5 + hw, hip_y + 0.01 * H),
        (lean * 0.5 - hw, hip_y + 0.01 * H),
    ]
    tmask = np.zeros_like(mask)
    tpts = np.array([P(*p) for p in torso], dtype=np.int32)
    cv2.fillPoly(tmask, [tpts], 255, _AA, shift=2)
    period = max(2, int(round(0.045 * H)))
    ys = np.arange(mask.shape[0])[:, None]
    xs = np.arange(mask.shape[1])[None, :]
    if app.upper_pattern == "stripes":
        second = np.broadcast_to(((ys - int(shoulder_y)) // period) % 2 == 1, mask.shape)
    elif app.upper_pattern == "checks":
        second = (((ys - int(shoulder_y)) // period + (xs - int(cx)) // period) % 2) == 1
    else:
        second = np.zeros(mask.shape, dtype=bool)
    layer = np.where(second[..., None], np.array(upper2, np.uint8), np.array(upper, np.uint8))
    a = tmask[..., None].astype(np.float32) / 255.0
    img[:] = (img * (1 - a) + layer * a).astype(np.uint8)
    np.maximum(mask, tmask, out=mask)

    # arms (sleeves in the upper colour, skin hands)
    for side in (-1, 1):
        s = (lean + side * (sw - arm_th * 0.3), shoulder_y + arm_th * 0.4)
        h = (side * (sw + 0.02 * H) + side * swing * 0.3 + swing * 0.5, hip_y + 0.02 * H)
        line(s, h, upper, arm_th)
        ellipse(h, (arm_th * 0.45, arm_th * 0.5), skin)
        if app.bag == "handbag" and side == 1:
            line((lean + sw * 0.6, shoulder_y), h, bagc, max(1, 0.012 * H))
            poly(
                [
                    (h[0] - 0.05 * H, h[1]),
                    (h[0] + 0.06 * H, h[1]),
                    (h[0] + 0.07 * H, h[1] + 0.11 * H),
                    (h[0] - 0.06 * H, h[1] + 0.11 * H),
                ],
                bagc,
            )
    if app.bag == "backpack":  # straps on the front
        for side in (-1, 1):
            line(
                (lean + side * sw * 0.55, shoulder_y),
                (lean * 0.7 + side * sw * 0.5, shoulder_y + 0.17 * H),
                bagc,
                max(1, 0.025 * H),
            )

    # head, hair, hat
    line((lean, shoulder_y - 0.03 * H), (lean, head_c[1]), skin, r * 0.9)
    ellipse(head_c, (r * 0.9, r), skin)
    ellipse((head_c[0], head_c[1] - r * 0.15), (r * 0.95, r * 0.9), hair, 180, 360)
    if app.hat:
        hc = col(app.hat_colour)
        poly(
            [
                (lean - r * 0.85, top - 0.04 * H),
                (lean + r * 0.85, top - 0.04 * H),
                (lean + r * 0.95, head_c[1] - r * 0.35),
                (lean - r * 0.95, head_c[1] - r * 0.35),
            ],
            hc,
        )
        line((lean - r * 1.4, head_c[1] - r * 0.35), (lean + r * 1.4, head_c[1] - r * 0.35), hc, max(1, 0.018 * H))

    if rng.random() < 0.5:  # facing left / right
        img = img[:, ::-1]
        mask = mask[:, ::-1]
    ys, xs = np.nonzero(mask > 127)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return np.ascontiguousarray(img[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1])


def paste(canvas: np.ndarray, patch: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend ``patch`` at top-left (x, y) into ``canvas`` (in place; must fit)."""
    h, w = mask.shape
    a = mask[..., None].astype(np.float32) / 255.0
    region = canvas[y : y + h, x : x + w].astype(np.float32)
    canvas[y : y + h, x : x + w] = (region * (1 - a) + patch.astype(np.float32) * a).astype(np.uint8)


# ----------------------------------------------------------------------------------------- cameras
@dataclass
class Camera:
    """A fixed camera: its scene style and its image formation (colour cast, exposure, blur, noise)."""

    index: int
    style: str  # "street" | "plaza" | "park" | "wall"
    top_colours: Tuple[tuple, tuple]
    ground_colour: tuple
    horizon: float  # fraction of the image height
    gains: Tuple[float, float, float]
    brightness: float
    contrast: float
    blur: float  # Gaussian sigma in px, 0 = sharp
    noise: float  # Gaussian noise std in grey levels


STYLES = ("street", "plaza", "park", "wall")


def sample_camera(index: int, rng: np.random.Generator) -> Camera:
    style = STYLES[index % len(STYLES)]
    base = {
        "street": ((150, 180, 215), (205, 215, 230), (95, 95, 100)),
        "plaza": ((175, 160, 140), (220, 205, 185), (170, 160, 145)),
        "park": ((120, 170, 220), (190, 215, 235), (80, 125, 60)),
        "wall": ((150, 110, 90), (175, 140, 115), (130, 125, 120)),
    }[style]
    j = lambda c: tuple(int(v) for v in np.clip(np.asarray(c) + rng.normal(0, 18, 3), 0, 255))  # noqa: E731
    return Camera(
        index=index,
        style=style,
        top_colours=(j(base[0]), j(base[1])),
        ground_colour=j(base[2]),
        horizon=float(rng.uniform(0.28, 0.45)),
        gains=tuple(float(g) for g in np.clip(1.0 + rng.normal(0, 0.1, 3), 0.8, 1.2)),
        brightness=float(rng.uniform(-22, 22)),
        contrast=float(rng.uniform(0.82, 1.12)),
        blur=float(rng.choice([0.0, 0.0, 0.6, 1.0])),
        noise=float(rng.uniform(2.0, 7.0)),
    )


def _noise_texture(h: int, w: int, rng: np.random.Generator, cell: int) -> np.ndarray:
    small = rng.normal(0, 1, size=(max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def draw_background(cam: Camera, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A background for ``cam``: gradient sky/wall, style-specific shapes, a textured ground."""
    hy = int(h * (cam.horizon + rng.uniform(-0.04, 0.04)))
    t = np.linspace(0, 1, hy, dtype=np.float32)[:, None, None]
    c0, c1 = np.asarray(cam.top_colours[0], np.float32), np.asarray(cam.top_colours[1], np.float32)
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:hy] = c0 * (1 - t) + c1 * t
    g = np.asarray(cam.ground_colour, np.float32)
    tg = np.linspace(0.85, 1.15, h - hy, dtype=np.float32)[:, None, None]
    img[hy:] = g * tg
    img[hy:] += 14 * _noise_texture(h - hy, w, rng, 6)[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)

    if cam.style in ("street", "plaza"):  # buildings with windows
        x = int(rng.integers(-20, 10))
        while x < w:
            bw = int(rng.integers(w // 8, w // 3))
            bh = int(rng.uniform(0.35, 0.95) * hy)
            bc = tuple(int(v) for v in np.clip(rng.normal(150, 40, 3), 40, 230))
            cv2.rectangle(img, (x, hy - bh), (x + bw, hy), bc, -1)
            wc = tuple(int(v * 0.55) for v in bc)
            step = max(6, bw // 5)
            for wy in range(hy - bh + 5, hy - 8, step):
                for wx in range(x + 4, x + bw - 6, step):
                    cv2.rectangle(img, (wx, wy), (wx + step // 2, wy + step // 2), wc, -1)
            x += bw + int(rng.integers(0, 12))
    if cam.style == "street":  # road markings
        for k in range(int(rng.integers(2, 5))):
            yy = int(rng.uniform(hy + 0.2 * (h - hy), h - 4))
            x0 = int(rng.uniform(0, w * 0.6))
            cv2.line(img, (x0, yy), (x0 + int(rng.uniform(20, w * 0.4)), yy), (225, 225, 215), 2, _AA)
    if cam.style == "plaza":  # paving grid
        step = int(rng.integers(14, 26))
        for yy in range(hy + step // 2, h, step):
            cv2.line(img, (0, yy), (w, yy), tuple(int(v * 0.8) for v in cam.ground_colour), 1)
        for xx in range(int(rng.integers(0, step)), w, step * 2):
            cv2.line(img, (xx, hy), (xx, h), tuple(int(v * 0.8) for v in cam.ground_colour), 1)
    if cam.style == "park":  # trees on the horizon
        for k in range(int(rng.integers(3, 8))):
            tx = int(rng.uniform(0, w))
            tr = int(rng.uniform(0.08, 0.2) * h)
            cv2.line(img, (tx, hy), (tx, hy - tr), (80, 55, 35), max(2, tr // 6))
            tc = tuple(int(v) for v in np.clip(rng.normal((50, 110, 45), 15), 0, 255))
            cv2.circle(img, (tx, hy - tr), tr, tc, -1, _AA)
    if cam.style == "wall":  # brick texture
        step = int(rng.integers(8, 14))
        dark = tuple(int(v * 0.7) for v in cam.top_colours[0])
        for yy in range(0, hy, step):
            cv2.line(img, (0, yy), (w, yy), dark, 1)
            off = (yy // step) % 2 * step
            for xx in range(off, w, 2 * step):
                cv2.line(img, (xx, yy), (xx, min(hy, yy + step)), dark, 1)
    return img


def draw_occluder(img: np.ndarray, box: Tuple[int, int, int, int], rng: np.random.Generator) -> float:
    """Draw a pole or a low obstacle over part of the person box (x, y, w, h); returns the box
    fraction covered (approximate)."""
    x, y, w, h = box
    H, W = img.shape[:2]
    colour = tuple(int(v) for v in np.clip(rng.normal(110, 45, 3), 20, 235))
    if rng.random() < 0.5:  # pole crossing the person
        pw = max(2, int(w * rng.uniform(0.15, 0.3)))
        px = int(x + rng.uniform(0.1, 0.9) * w - pw / 2)
        cv2.rectangle(img, (px, 0), (px + pw, H), colour, -1)
        cv2.line(img, (px, 0), (px, H), tuple(int(c * 0.7) for c in colour), 1)
        return min(1.0, pw / max(1, w))
    frac = rng.uniform(0.2, 0.45)  # bench / car / crate over the lower body
    oh = int(h * frac)
    ox0 = int(x - rng.uniform(0.2, 1.0) * w)
    ox1 = int(x + w + rng.uniform(-0.2, 1.0) * w)
    oy0 = y + h - oh
    oy1 = min(H, y + h + int(rng.uniform(0, 0.1) * h))
    cv2.rectangle(img, (ox0, oy0), (ox1, oy1), colour, -1)
    cv2.rectangle(img, (ox0, oy0), (ox1, oy0 + max(1, oh // 8)), tuple(int(c * 0.6) for c in colour), -1)
    cover = max(0, min(ox1, x + w) - max(ox0, x)) / max(1, w)
    return float(frac * cover)


def apply_camera(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Colour cast, contrast/brightness (with a little per-frame jitter), blur and sensor noise."""
    gains = (np.asarray(cam.gains, np.float32) * (1 + rng.normal(0, 0.02, 3))).astype(np.float32)
    offset = np.float32(128.0 * (1 - cam.contrast) + cam.brightness + rng.normal(0, 4))
    f = img.astype(np.float32)
    f *= np.float32(cam.contrast)
    f += offset
    f *= gains
    if cam.blur > 0:
        f = cv2.GaussianBlur(f, (0, 0), cam.blur)
    noise = rng.standard_normal(f.shape, dtype=np.float32)
    noise *= np.float32(cam.noise)
    f += noise
    np.clip(f, 0, 255, out=f)
    return f.astype(np.uint8)


def box_iou(a, b) -> float:
    """IoU of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)
