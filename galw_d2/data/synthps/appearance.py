"""Identity appearance of SynthPS people and the binary attributes derived from it.

An identity is a stable :class:`Appearance` (body proportions, clothing colours and patterns, hair,
hat, bag, ...). Every instance of the identity is drawn from it with small per-instance variation
(pose, scale, colour noise; see :mod:`.render`). Attributes are a pure function of the appearance.
"""

from dataclasses import dataclass
from typing import List, Sequence, Set, Tuple

import numpy as np

__all__ = [
    "COLOURS",
    "UPPER_COLOURS",
    "LOWER_COLOURS",
    "ATTRIBUTE_NAMES",
    "Appearance",
    "sample_appearance",
    "sample_identities",
    "attributes_of",
]

# name -> (colour group, RGB). Groups drive the colour attributes; several shades share a group so
# that attributes are shared between identities that still look different.
COLOURS = {
    "red": ("red", (200, 30, 35)),
    "maroon": ("red", (120, 20, 35)),
    "pink": ("red", (235, 120, 170)),
    "blue": ("blue", (35, 70, 205)),
    "navy": ("blue", (25, 35, 105)),
    "sky": ("blue", (110, 175, 235)),
    "green": ("green", (35, 155, 55)),
    "olive": ("green", (115, 125, 40)),
    "teal": ("green", (20, 135, 125)),
    "yellow": ("yellow", (235, 210, 40)),
    "orange": ("yellow", (240, 130, 25)),
    "black": ("dark", (28, 28, 30)),
    "gray": ("dark", (115, 115, 118)),
    "brown": ("dark", (105, 62, 32)),
    "white": ("light", (238, 238, 235)),
    "beige": ("light", (215, 195, 150)),
}
UPPER_COLOURS = tuple(COLOURS)
LOWER_COLOURS = ("black", "gray", "brown", "blue", "navy", "sky", "beige", "white", "olive", "maroon")
SKIN_TONES = ((255, 220, 185), (235, 190, 150), (200, 150, 110), (150, 100, 70), (105, 70, 50))
HAIR_COLOURS = ((20, 15, 10), (70, 45, 25), (140, 95, 50), (215, 185, 120), (150, 150, 150))
SHOE_COLOURS = ((25, 25, 25), (240, 240, 240), (110, 70, 40), (60, 60, 150))
UPPER_PATTERNS = ("plain", "stripes", "checks")
LOWER_TYPES = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "handbag")

ATTRIBUTE_NAMES = (
    "hat",
    "long_hair",
    "backpack",
    "handbag",
    "upper_striped",
    "upper_checked",
    "upper_red",
    "upper_blue",
    "upper_green",
    "upper_yellow",
    "upper_dark",
    "lower_dark",
    "lower_blue",
    "lower_light",
    "skirt",
    "shorts",
)


@dataclass(frozen=True)
class Appearance:
    """What stays the same across every picture of one identity (colours are RGB tuples or names)."""

    width_ratio: float  # shoulder width / height
    head_ratio: float  # head radius / height
    torso_ratio: float  # shoulder-to-hip length / height
    skin: Tuple[int, int, int]
    hair: Tuple[int, int, int]
    long_hair: bool
    hat: bool
    hat_colour: str
    upper: str  # colour name (COLOURS)
    upper_pattern: str  # UPPER_PATTERNS
    upper2: str  # second colour of stripes / checks
    lower: str  # colour name
    lower_type: str  # LOWER_TYPES
    bag: str  # BAGS
    bag_colour: str
    shoes: Tuple[int, int, int]

    def signature(self) -> tuple:
        """The coarse look two identities must not share (what tells them apart at 40 px)."""
        return (
            self.upper,
            self.upper_pattern,
            self.upper2 if self.upper_pattern != "plain" else "",
            self.lower,
            self.lower_type,
            self.hat,
            self.bag,
        )


def _pick(rng: np.random.Generator, seq: Sequence, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw one random appearance (identity or distractor)."""
    upper = _pick(rng, UPPER_COLOURS)
    pattern = _pick(rng, UPPER_PATTERNS, p=[0.55, 0.25, 0.20])
    # the second colour must contrast with the first (a different group)
    others = [c for c in UPPER_COLOURS if COLOURS[c][0] != COLOURS[upper][0]]
    upper2 = _pick(rng, others)
    lower_type = _pick(rng, LOWER_TYPES, p=[0.6, 0.2, 0.2])
    long_hair = bool(rng.random() < (0.65 if lower_type == "skirt" else 0.25))
    bag = _pick(rng, BAGS, p=[0.45, 0.3, 0.25])
    hat = bool(rng.random() < 0.25)
    return Appearance(
        width_ratio=float(rng.uniform(0.2, 0.29)),
        head_ratio=float(rng.uniform(0.062, 0.078)),
        torso_ratio=float(rng.uniform(0.28, 0.34)),
        skin=_pick(rng, SKIN_TONES),
        hair=_pick(rng, HAIR_COLOURS),
        long_hair=long_hair,
        hat=hat,
        hat_colour=_pick(rng, UPPER_COLOURS),
        upper=upper,
        upper_pattern=pattern,
        upper2=upper2,
        lower=_pick(rng, LOWER_COLOURS),
        lower_type=lower_type,
        bag=bag,
        bag_colour=_pick(rng, ("black", "brown", "red", "blue", "gray", "yellow", "green")),
        shoes=_pick(rng, SHOE_COLOURS),
    )


def sample_identities(rng: np.random.Generator, n: int, taken: Set[tuple]) -> List[Appearance]:
    """``n`` appearances whose signatures are distinct from each other and from ``taken`` (updated)."""
    out: List[Appearance] = []
    for _ in range(200 * max(n, 1)):
        if len(out) == n:
            break
        app = sample_appearance(rng)
        sig = app.signature()
        if sig in taken:
            continue
        taken.add(sig)
        out.append(app)
    if len(out) != n:
        raise RuntimeError(f"could not draw {n} distinct SynthPS identities")
    return out


def attributes_of(app: Appearance) -> List[int]:
    """Binary attributes (order = :data:`ATTRIBUTE_NAMES`) of an appearance."""
    ug = COLOURS[app.upper][0]
    lg = COLOURS[app.lower][0]
    values = {
        "hat": app.hat,
        "long_hair": app.long_hair,
        "backpack": app.bag == "backpack",
        "handbag": app.bag == "handbag",
        "upper_striped": app.upper_pattern == "stripes",
        "upper_checked": app.upper_pattern == "checks",
        "upper_red": ug == "red",
        "upper_blue": ug == "blue",
        "upper_green": ug == "green",
        "upper_yellow": ug == "yellow",
        "upper_dark": ug == "dark",
        "lower_dark": lg == "dark",
        "lower_blue": lg == "blue",
        "lower_light": lg == "light",
        "skirt": app.lower_type == "skirt",
        "shorts": app.lower_type == "shorts",
    }
    return [int(bool(values[name])) for name in ATTRIBUTE_NAMES]
