"""Stand-alone pedestrian-attribute recognizer (the pseudo-labeler): torchreid backbone + pyramid + ALMs.

``AttributeRecognizer`` runs a torchreid model (``torchreid.reid.models.build_model``; osnet_* or
resnet*) child by child up to its global pooling, taking the outputs of ``in_features`` (finest
first) as pyramid levels. A top-down pyramid (1x1 lateral to ``pyramid_channels``, coarser level
upsampled and added, as FPN) feeds one ALM per level (:mod:`galw_d2.attributes.alm`). Training loss:
(weighted) BCE on every level; prediction: max over levels.

Checkpoint (``save_checkpoint``): a torch file ``{"model": state_dict, "config": {...},
"attribute_names": [...], "pos_ratio": [...]}``; ``load_recognizer(path)`` rebuilds the model from it.
"""

import hashlib
import inspect
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.io import torch_load_file
from .alm import MultiLevelALM, combine_levels
from .losses import multi_level_bce

__all__ = [
    "AttributeRecognizer",
    "build_recognizer",
    "load_backbone_weights",
    "save_checkpoint",
    "load_recognizer",
    "file_sha256",
    "DEFAULT_IN_FEATURES",
]

# Pyramid levels per torchreid family (strides 8/16/16 for osnet, 8/16/32 for resnet at last_stride 2).
DEFAULT_IN_FEATURES = {"osnet": ["conv2", "conv3", "conv5"], "resnet": ["layer2", "layer3", "layer4"]}
_HEAD_CHILDREN = ("global_avgpool", "fc", "classifier", "avgpool")
# ImageNet normalisation (torchreid's defaults), RGB.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def _family(name: str) -> str:
    for fam in DEFAULT_IN_FEATURES:
        if name.startswith(fam):
            return fam
    raise ValueError(
        f"attribute recognizer: backbone {name!r} not supported; use an osnet_* or resnet* torchreid model"
    )


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _strip_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_backbone_weights(backbone: nn.Module, path: str) -> Dict[str, List[str]]:
    """Load a torchreid/ImageNet state dict into ``backbone`` (names and shapes must match; the
    classifier and anything else that does not match is skipped). Returns {"loaded", "skipped"};
    raises if nothing matches."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights {path!r} not found")
    obj = torch_load_file(path, "backbone weights")
    if not isinstance(obj, dict):
        raise ValueError(f"backbone weights {path}: expected a state dict, got {type(obj).__name__}")
    sd = _strip_state_dict(obj)
    own = backbone.state_dict()
    ok = {k: v for k, v in sd.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not ok:
        raise ValueError(
            f"backbone weights {path!r}: no parameter matches the {type(backbone).__name__} "
            f"backbone by name and shape (first keys in file: {list(sd)[:5]})"
        )
    own.update(ok)
    backbone.load_state_dict(own)
    return {"loaded": sorted(ok), "skipped": sorted(set(sd) - set(ok))}


class AttributeRecognizer(nn.Module):
    def __init__(
        self,
        num_attributes: int,
        backbone: str = "osnet_x0_25",
        in_features: Optional[Sequence[str]] = None,
        pyramid_channels: int = 64,
        sample_size: int = 8,
        se_reduction: int = 16,
        input_size: Sequence[int] = (128, 64),
        backbone_weights: str = "",
    ):
        super().__init__()
        import torchreid  # noqa: F401  (heavy import; only here)
        from torchreid.reid.models import build_model as build_reid_model

        if num_attributes <= 0:
            raise ValueError(f"attribute recognizer needs num_attributes > 0, got {num_attributes}")
        fam = _family(backbone)
        self.config = dict(
            num_attributes=int(num_attributes),
            backbone=backbone,
            in_features=list(in_features or DEFAULT_IN_FEATURES[fam]),
            pyramid_channels=int(pyramid_channels),
            sample_size=int(sample_size),
            se_reduction=int(se_reduction),
            input_size=[int(s) for s in input_size],
        )
        self.in_features = self.config["in_features"]
        self.num_attributes = int(num_attributes)
        self.backbone = build_reid_model(backbone, num_classes=1, pretrained=False)
        names = [n for n, _ in self.backbone.named_children()]
        body = []
        for n in names:
            if n in _HEAD_CHILDREN:
                break
            body.append(n)
        missing = [f for f in self.in_features if f not in body]
        if missing:
            raise ValueError(
                f"attribute recognizer: IN_FEATURES {missing} are not children of {backbone} (available: {body})"
            )
        self._body = body[: max(body.index(f) for f in self.in_features) + 1]
        if backbone_weights:
            load_backbone_weights(self.backbone, backbone_weights)
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            shapes = [f.shape[1] for f in self._levels(torch.zeros(1, 3, *self.config["input_size"]))]
            self.backbone.train(was)
        D = self.config["pyramid_channels"]
        self.laterals = nn.ModuleList([nn.Conv2d(c, D, 1) for c in shapes])
        self.smooth = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(D, D, 3, padding=1), nn.BatchNorm2d(D), nn.ReLU(inplace=True)) for _ in shapes]
        )
        self.head = MultiLevelALM([D] * len(shapes), num_attributes, se_reduction, sample_size)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        # Positive ratio per attribute of the training set (weighted BCE); saved in checkpoints.
        self.register_buffer("pos_ratio", torch.full((num_attributes,), 0.5))

    def _levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = {}
        for n in self._body:
            x = getattr(self.backbone, n)(x)
            if n in self.in_features:
                out[n] = x
        return [out[n] for n in self.in_features]

    def forward_levels(self, images: torch.Tensor) -> List[torch.Tensor]:
        """images: (N, 3, H, W) float RGB in [0, 1] -> per-level logits [(N, A)]."""
        x = (images - self.pixel_mean) / self.pixel_std
        feats = self._levels(x)
        lat = [l(f) for l, f in zip(self.laterals, feats)]
        for i in range(len(lat) - 2, -1, -1):  # top-down: coarser into finer
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return self.head([s(l) for s, l in zip(self.smooth, lat)])

    def loss(self, images: torch.Tensor, targets: torch.Tensor, weighted: bool = True) -> torch.Tensor:
        return multi_level_bce(self.forward_levels(images), targets, self.pos_ratio if weighted else None)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, A), max over levels."""
        return torch.sigmoid(combine_levels(self.forward_levels(images)))


def build_recognizer(cfg, num_attributes: int) -> AttributeRecognizer:
    c = cfg.ATTRIBUTE_NET
    model = AttributeRecognizer(
        num_attributes,
        c.BACKBONE,
        list(c.IN_FEATURES) or None,
        c.PYRAMID_CHANNELS,
        c.SAMPLE_SIZE,
        c.SE_REDUCTION,
        tuple(c.INPUT_SIZE),
        c.BACKBONE_WEIGHTS,
    )
    return model


def save_checkpoint(
    model: AttributeRecognizer, path: str, attribute_names: Sequence[str], extra: Optional[dict] = None
) -> str:
    """Write the checkpoint; returns its sha256."""
    if len(attribute_names) != model.num_attributes:
        raise ValueError(f"{len(attribute_names)} attribute names for a {model.num_attributes}-attribute model")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    obj = {
        "model": model.state_dict(),
        "config": model.config,
        "attribute_names": list(attribute_names),
        "format": "galw_d2.attribute_recognizer",
        "version": 1,
    }
    if extra:
        obj.update(extra)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def load_recognizer(path: str, map_location="cpu"):
    """(model in eval mode, attribute_names, checkpoint sha256) from a :func:`save_checkpoint` file.

    A random, empty, truncated or edited file raises ``ValueError`` naming the path and the field
    (format, config, attribute names, tensors that do not fit the config, NaN/inf tensors).
    """
    what = "attribute recognizer checkpoint"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} not found")
    obj = torch_load_file(path, what)
    if not isinstance(obj, dict) or obj.get("format") != "galw_d2.attribute_recognizer":
        raise ValueError(
            f"{path!r} is not a galw_d2 attribute recognizer checkpoint (no format "
            "'galw_d2.attribute_recognizer'); backbone-only weights go to ATTRIBUTE_NET.BACKBONE_WEIGHTS"
        )
    for field, typ in (("model", dict), ("config", dict), ("attribute_names", (list, tuple))):
        if field not in obj:
            raise ValueError(f"{what} {path}: missing field '{field}'")
        if not isinstance(obj[field], typ):
            raise ValueError(f"{what} {path}: field '{field}' must be a {typ}, got {type(obj[field]).__name__}")
    cfg = dict(obj["config"])

    known = set(inspect.signature(AttributeRecognizer.__init__).parameters) - {"self", "backbone_weights"}
    unknown = sorted(set(cfg) - known)
    if unknown or "num_attributes" not in cfg:
        raise ValueError(
            f"{what} {path}: 'config' has unknown keys {unknown}"
            if unknown
            else f"{what} {path}: 'config' has no 'num_attributes'"
        )
    try:
        model = AttributeRecognizer(cfg.pop("num_attributes"), **cfg)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{what} {path}: 'config' cannot build the model ({type(e).__name__}: {e})") from e
    for k, v in obj["model"].items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{what} {path}: tensor '{k}' has NaN/inf values")
    own = model.state_dict()
    missing = sorted(set(own) - set(obj["model"]))
    extra = sorted(set(obj["model"]) - set(own))
    shapes = [
        (k, tuple(v.shape), tuple(obj["model"][k].shape))
        for k, v in own.items()
        if k in obj["model"] and tuple(v.shape) != tuple(getattr(obj["model"][k], "shape", ()))
    ]
    if missing or extra or shapes:
        detail = []
        if shapes:
            detail.append(
                f"{len(shapes)} tensors of another shape (e.g. {shapes[0][0]}: config {shapes[0][1]}, "
                f"file {shapes[0][2]})"
            )
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if extra:
            detail.append(f"{len(extra)} unexpected (e.g. {extra[:3]})")
        raise ValueError(f"{what} {path}: the weights do not match its 'config' {obj['config']}: " + "; ".join(detail))
    names = list(obj["attribute_names"])
    if len(names) != model.num_attributes:
        raise ValueError(
            f"{what} {path}: 'attribute_names' has {len(names)} names but the model has "
            f"{model.num_attributes} attributes"
        )
    model.load_state_dict(obj["model"])
    model.eval()
    return model, names, file_sha256(path)
