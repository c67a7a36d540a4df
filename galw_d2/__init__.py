"""galw_d2: Grouped Adaptive Loss Weighting (GALW, ACM MM 2022) for person search, as a detectron2 plugin.

``import galw_d2`` is light (no detectron2, no torch): the evaluation core
(``galw_d2.evaluation.search``) and the task table can be used by other codebases. The detectron2
components (datasets, models) register when :func:`add_galw_config` is called -- every entry point
calls it before building a model -- or when ``galw_d2.data`` / ``galw_d2.modeling`` is imported.
"""

__version__ = "0.1.0"
__all__ = ["add_galw_config", "__version__"]


def add_galw_config(cfg):
    """Add every galw_d2 config key to ``cfg`` (see :mod:`galw_d2.config`) and register galw_d2's
    datasets and model components in detectron2's registries. Returns ``cfg``."""
    # Deferred so that `import galw_d2` pulls in neither detectron2 nor torch (see the module docstring).
    from . import data, modeling  # noqa: F401  (registers datasets and model components)
    from .config import add_galw_config as _add

    return _add(cfg)
