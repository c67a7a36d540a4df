"""Loading trained weights for evaluation and search: refuse weights that do not cover the model.

detectron2's ``Checkpointer`` loads with ``strict=False`` and only logs the parameters it could not
fill, so a config/weights mismatch (e.g. an NAE config with ROI-AlignPS* weights) runs a partly random
model and reports believable numbers. :func:`check_weights_cover_model` compares a checkpoint's state
with the model's and raises :class:`WeightsMismatchError` naming the uncovered parameter groups
(``roi_heads.res5.*: 18 tensors``) and the weights file; :func:`load_model_weights` reads the file
(clear errors for empty / truncated files), checks, and loads through ``DetectionCheckpointer``.

Tensors that inference never reads are not required: the OIM memories (lookup table and circular
queue: training state whose size follows the training set's identity count) and the GALW weighting
parameters of ``GALWModel`` checkpoints. A shape mismatch of such a tensor (evaluating on another
dataset than the one trained on) keeps the model's own tensor and logs a note.
"""

import logging
import os
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..utils.io import torch_load_file
from .galw_model import WEIGHTING_PREFIX as _WEIGHTING_PREFIX

__all__ = [
    "WeightsMismatchError",
    "inference_unused_keys",
    "group_keys",
    "check_weights_cover_model",
    "read_weights_file",
    "load_model_weights",
]

logger = logging.getLogger(__name__)


class WeightsMismatchError(ValueError):
    """The weights file does not cover the model (missing tensors or other shapes)."""


def _state_dict_of(checkpoint_state: Mapping) -> Mapping[str, torch.Tensor]:
    """The parameter dict of a checkpoint (detectron2 ``{"model": ...}``, ``{"state_dict": ...}`` or
    a bare state dict), without a DDP ``module.`` prefix."""
    sd = checkpoint_state
    for key in ("model", "state_dict"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state dict (a mapping name -> tensor), got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def inference_unused_keys(model: nn.Module) -> List[str]:
    """State-dict keys of ``model`` that inference does not read: OIM memories and GALW weighting."""
    from galw_d2.modeling.oim import OIMMemory

    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    flat = type(inner).__name__ == "GALWModel"  # its state dict drops the "model." prefix
    keys = [k for k in inner.state_dict() if k.startswith(_WEIGHTING_PREFIX)]
    for name, m in inner.named_modules():
        if isinstance(m, OIMMemory):
            if flat and name.startswith("model."):
                name = name[len("model.") :]
            keys += [f"{name}.{b}" for b in m.state_dict()]
    return keys


def group_keys(keys: Iterable[str], depth: int = 2) -> "OrderedDict[str, int]":
    """Count keys by their first ``depth`` dotted components: ``{"roi_heads.res5": 18, ...}``."""
    out: "OrderedDict[str, int]" = OrderedDict()
    for k in keys:
        g = ".".join(k.split(".")[:depth])
        out[g] = out.get(g, 0) + 1
    return out


def _describe(keys: List[str], limit: int = 8) -> str:
    groups = group_keys(keys)
    parts = [f"{g}.*: {n} tensor{'s' if n > 1 else ''}" for g, n in list(groups.items())[:limit]]
    if len(groups) > limit:
        parts.append(f"... {len(groups) - limit} more groups")
    return "; ".join(parts)


def check_weights_cover_model(
    model: nn.Module, checkpoint_state: Mapping, source: str = "weights", allow_missing: bool = False
) -> Dict:
    """Check that a checkpoint holds every tensor ``model`` needs for inference, with its shape.

    Args:
        model: the built model (a meta-architecture or a ``GALWModel``).
        checkpoint_state: the loaded checkpoint (``{"model": state_dict, ...}`` or a state dict).
        source: the weights file, for messages.
        allow_missing: log a warning instead of raising.

    Returns:
        ``{"missing": [keys], "wrong_shape": [(key, model shape, file shape)], "unexpected": int,
        "skipped_unused": [keys], "total": int}``; ``skipped_unused`` are inference-unused tensors
        (see the module docstring) that are missing or shaped differently and are left as built.

    Raises:
        WeightsMismatchError: when a needed tensor is missing or has another shape (unless ``allow_missing``).
    """
    sd = _state_dict_of(checkpoint_state)
    own = model.state_dict()
    unused = set(inference_unused_keys(model))
    missing, wrong, skipped = [], [], []
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):  # BatchNorm counter: not a weight (detectron2 ignores it too)
            continue
        if k not in sd:
            (skipped if k in unused else missing).append(k)
        elif tuple(sd[k].shape) != tuple(v.shape):
            if k in unused:
                skipped.append(k)
            else:
                wrong.append((k, tuple(v.shape), tuple(sd[k].shape)))
    report = {
        "missing": missing,
        "wrong_shape": wrong,
        "unexpected": sum(k not in own for k in sd),
        "skipped_unused": skipped,
        "total": len(own),
    }
    if missing or wrong:
        n_needed = len([k for k in own if k not in unused and not k.endswith("num_batches_tracked")])
        msg = [
            f"weights file {source} does not cover the model {type(model).__name__}: "
            f"{len(missing) + len(wrong)} of {n_needed} tensors would stay randomly initialised"
        ]
        if missing:
            msg.append(f"missing: {_describe(missing)}")
        if wrong:
            k, ms, fs = wrong[0]
            msg.append(f"other shape: {_describe([w[0] for w in wrong])} (e.g. {k}: model {ms}, file {fs})")
        if report["unexpected"]:
            msg.append(
                f"{report['unexpected']} tensors of the file are not in the model "
                f"(e.g. {_describe([k for k in sd if k not in own], limit=3)})"
            )
        msg.append(
            "do the config (--config-file, MODEL.META_ARCHITECTURE, backbone) and the weights belong "
            "together? (--allow-partial-weights loads anyway)"
        )
        text = "; ".join(msg)
        if not allow_missing:
            raise WeightsMismatchError(text)
        logger.warning(f"[weights] {text} -- loading anyway (allowed)")
    if skipped:
        logger.info(
            f"[weights] {source}: {len(skipped)} training-only tensors (OIM memories / loss weighting) are "
            f"missing or sized for another training set and keep their initial values: {_describe(skipped)}"
        )
    return report


def read_weights_file(path: str) -> Dict:
    """Read a ``.pth`` weights file; ``ValueError`` naming the path for an empty, truncated or foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path}: no such file")
    obj = torch_load_file(path, "weights file")
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"weights file {path}: expected a checkpoint dict (detectron2: {{'model': state_dict}}), "
            f"got {type(obj).__name__}"
        )
    try:
        _state_dict_of(obj)
    except TypeError as e:
        raise ValueError(f"weights file {path}: {e}") from None
    return obj


def load_model_weights(model: nn.Module, path: str, allow_partial: bool = False) -> Dict:
    """Load trained weights into ``model`` for evaluation / search, refusing partial coverage.

    ``.pth`` files are read and checked with :func:`check_weights_cover_model` before loading;
    detectron2-format ``.pkl`` files (renamed by detectron2's matching heuristics) are checked through
    the keys the checkpointer could not fill.

    Args:
        model: the built model.
        path: the weights file.
        allow_partial: load even when tensors stay uninitialised (warning instead of error).

    Returns:
        the coverage report of :func:`check_weights_cover_model`.
    """
    if path.endswith(".pkl"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path}: no such file")
        ckp = _RecordingCheckpointer(model)
        try:
            ckp.load(path)
        except (EOFError, RuntimeError, ValueError) as e:
            raise ValueError(f"weights file {path}: cannot be read ({type(e).__name__}: {e})") from e
        unused = set(inference_unused_keys(model))
        inc = ckp.incompatible
        missing = [k for k in inc.missing_keys if k not in unused]
        wrong = [(k, tuple(m), tuple(f)) for k, f, m in inc.incorrect_shapes if k not in unused]
        report = {
            "missing": missing,
            "wrong_shape": wrong,
            "unexpected": len(inc.unexpected_keys),
            "skipped_unused": [],
            "total": len(model.state_dict()),
        }
        if (missing or wrong) and not allow_partial:
            raise WeightsMismatchError(
                f"weights file {path} does not cover the model: missing "
                f"{_describe(missing + [w[0] for w in wrong])} (--allow-partial-weights "
                f"loads anyway)"
            )
        return report
    ckpt = read_weights_file(path)
    report = check_weights_cover_model(model, ckpt, source=path, allow_missing=allow_partial)
    # Drop what has another shape before detectron2 sees it: it would only be skipped (and fvcore's
    # shape-mismatch path resolves keys as module attributes, which GALWModel's flat keys are not).
    sd = dict(_state_dict_of(ckpt))
    own = model.state_dict()
    for k in list(sd):
        if k in own and tuple(sd[k].shape) != tuple(own[k].shape):
            sd.pop(k)
    ckpt = dict(ckpt, model=sd)
    ckpt.pop("matching_heuristics", None)
    # as DetectionCheckpointer.load after reading a .pth: numpy arrays become tensors
    ckpt["model"] = {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)) for k, v in sd.items()}
    _RecordingCheckpointer(model)._load_model(ckpt)
    return report


class _RecordingCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` that keeps the incompatible keys of its last load."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible
