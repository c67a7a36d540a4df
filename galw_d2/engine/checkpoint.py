"""``SafeCheckpointer``: detectron2's ``DetectionCheckpointer`` with atomic writes and verified resume.

Why: fvcore writes ``model_XXXX.pth`` in place and then ``last_checkpoint``; a kill during the write
leaves a truncated file that ``--resume`` either loads with a raw unpickling traceback or, for
``model_final.pth``, silently keeps. Here:

* :meth:`SafeCheckpointer.save` writes ``<name>.pth.tmp.<pid>``, flushes and fsyncs it, then
  ``os.replace``-s it into place (atomic on POSIX); ``last_checkpoint`` is written the same way,
  after the checkpoint. A reader therefore sees the previous complete file or the new complete file.
* on resume, the target of ``last_checkpoint`` is loaded and checked (a dict with ``"model"``); when
  it is missing, truncated or unreadable, the newest intact ``model_*.pth`` in the folder is used
  instead, with a warning naming both files and the reason. No intact checkpoint: an error listing
  what was tried.
* :func:`checkpoint_problem` tells why a file is not an intact checkpoint (or ``None``).

Remote ``save_dir`` (not a local folder) falls back to fvcore's own behaviour.
"""

import logging
import os
import re
from typing import List, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import Checkpointer

__all__ = ["SafeCheckpointer", "checkpoint_problem", "checkpoint_files", "atomic_torch_save"]

logger = logging.getLogger(__name__)

_ITER_NAME = re.compile(r"^model_(\d+)\.pth$")


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temp file in the same folder + fsync + ``os.replace``."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_problem(path: str, loader=None) -> Tuple[Optional[str], Optional[dict]]:
    """``(None, data)`` when ``path`` loads as a checkpoint dict with a ``"model"`` entry, else
    ``(reason, None)``. ``loader(path)`` defaults to ``torch.load(..., weights_only=False)``."""
    try:
        exists = os.path.isfile(path)
    except (ValueError, OSError):  # e.g. a NUL byte read from a damaged last_checkpoint
        exists = False
    if not exists:
        return "file does not exist", None
    if os.path.getsize(path) == 0:
        return "file is empty", None
    try:
        data = loader(path) if loader is not None else torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, unpickling error, ...: the file is unusable whatever the cause
        return f"cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", None
    if not isinstance(data, dict) or "model" not in data:
        return "is not a checkpoint (no 'model' entry)", None
    return None, data


def checkpoint_files(folder: str) -> List[str]:
    """``model_final.pth`` then ``model_<iter>.pth`` by decreasing iteration: newest first."""
    if not os.path.isdir(folder):
        return []
    names = os.listdir(folder)
    its = sorted(((int(m.group(1)), n) for n in names for m in [_ITER_NAME.match(n)] if m), reverse=True)
    out = [os.path.join(folder, "model_final.pth")] if "model_final.pth" in names else []
    return out + [os.path.join(folder, n) for _, n in its]


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` (same arguments) with atomic saves and verified resume."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._verified: Optional[Tuple[str, dict]] = None  # (path, data) loaded during verification

    def _local(self) -> bool:
        return bool(self.save_dir) and "://" not in str(self.save_dir)

    # ------------------------------------------------------------------ writing
    def save(self, name: str, **kwargs) -> None:
        if not self._local():
            return super().save(name, **kwargs)
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        _atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    # ------------------------------------------------------------------ loading
    def _load_model(self, checkpoint):
        """fvcore's loading (a tensor of another shape is skipped with its own warning), plus one clear
        line when identity tables (OIM lookup tables ``*.lut``) change size: fine-tuning from a
        checkpoint trained with another number of identities."""
        ck = checkpoint.get("model", {})
        own = self.model.state_dict()
        own = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in own.items()}
        changed = {
            k: (tuple(np.shape(ck[k])), tuple(own[k].shape))
            for k in ck
            if k.endswith(".lut") and k in own and tuple(np.shape(ck[k])) != tuple(own[k].shape)
        }
        if changed:
            (old, _), (new, _) = next(iter(changed.values()))
            logger.warning(
                f"fine-tuning from a checkpoint with {old} identities into a model with {new} "
                f"(MODEL.PERSON_SEARCH.NUM_PIDS or the training set): the OIM lookup tables "
                f"{sorted(changed)} start empty at the new size; every other weight is loaded"
            )
        return super()._load_model(checkpoint)

    # ------------------------------------------------------------------ resuming
    def _load_file(self, filename):
        if self._verified is not None and self._verified[0] == filename:
            data, self._verified = self._verified[1], None
            return data
        return super()._load_file(filename)

    def _check(self, path: str) -> Tuple[Optional[str], Optional[dict]]:
        # fvcore's plain torch.load, as ``load`` reads a .pth file (upstream main's
        # DetectionCheckpointer._load_file may only run inside ``load``)
        return checkpoint_problem(path, loader=lambda f: Checkpointer._load_file(self, f))

    def get_checkpoint_file(self) -> str:
        """The checkpoint to resume from: ``last_checkpoint``'s target when intact, else the newest
        intact ``model_*.pth`` (warning). Raises ``RuntimeError`` when no intact checkpoint exists."""
        try:
            target = super().get_checkpoint_file()
        except (UnicodeDecodeError, ValueError):  # last_checkpoint itself is damaged (binary garbage)
            target = os.path.join(self.save_dir, "last_checkpoint (unreadable)")
        if not self._local():
            return target
        tried = []
        candidates = ([target] if target else []) + [p for p in checkpoint_files(self.save_dir) if p != target]
        for path in candidates:
            problem, data = self._check(path)
            if problem is None:
                if tried:
                    logger.warning(f"resume: {'; '.join(tried)}; falling back to the newest intact checkpoint {path}")
                self._verified = (path, data)
                return path
            tried.append(f"{path} {problem}")
        raise RuntimeError(
            f"resume: no intact checkpoint in {self.save_dir}: "
            + ("; ".join(tried) or "none found")
            + ". Delete the folder's checkpoints (or pick another OUTPUT_DIR) to start afresh."
        )

    def has_checkpoint(self) -> bool:
        """``last_checkpoint`` exists, or (it was lost) some ``model_*.pth`` does."""
        return super().has_checkpoint() or (self._local() and bool(checkpoint_files(self.save_dir)))
