"""Reading torch files with errors that name the file (instead of torch's EOFError / zip errors)."""

import os
import pickle
import zipfile

__all__ = ["torch_load_file"]


def torch_load_file(path: str, what: str = "file"):
    """``torch.load(path)`` on CPU; an empty, truncated or foreign file raises ``ValueError`` naming the
    path and its size instead of torch's ``EOFError`` / zip / unpickling errors."""
    import torch  # deferred: the numpy-only evaluation core imports this module without needing torch

    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{what} {path}: the file is empty (0 bytes); was it written by a process that was killed?")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except TypeError:  # torch without weights_only
            return torch.load(path, map_location="cpu")
    except (
        EOFError,
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
        ValueError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
    ) as e:
        raise ValueError(
            f"{what} {path}: cannot be read by torch.load ({size} bytes; truncated, or not a "
            f"torch.save file?): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
