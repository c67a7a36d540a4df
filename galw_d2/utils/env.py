"""Facts about the installed detectron2, for feature detection and for the install report.

galw_d2 must run on detectron2 v0.6 (the offline PyPI sdist) and on upstream main; both report
version "0.6", so behaviour differences are detected by feature, never by version string.
"""

import importlib.util
import inspect
import os

__all__ = ["describe_detectron2", "has_compiled_ops", "launch_supports_cpu", "trainer_has_after_backward"]


def has_compiled_ops() -> bool:
    """Whether ``detectron2._C`` (the compiled C++/CUDA ops) is importable."""
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


def launch_supports_cpu() -> bool:
    """Whether ``detectron2.engine.launch`` can start several CPU (gloo) processes.

    v0.6 asserts CUDA when world_size > 1; upstream main falls back to GLOO.
    """
    from detectron2.engine import launch as launch_mod  # noqa: F401
    from detectron2.engine.launch import _distributed_worker

    return "gloo" in inspect.getsource(_distributed_worker).lower()


def trainer_has_after_backward() -> bool:
    """Whether detectron2 hooks have an ``after_backward`` stage (added after v0.6)."""
    from detectron2.engine import HookBase

    return hasattr(HookBase, "after_backward")


def describe_detectron2() -> str:
    """One line: detectron2 version, location, and whether compiled ops are present."""
    import detectron2

    where = os.path.dirname(detectron2.__file__)
    ops = "with compiled ops" if has_compiled_ops() else "without compiled ops (pure-Python install)"
    return f"detectron2 {detectron2.__version__} at {where}, {ops}"
