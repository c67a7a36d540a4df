"""Builtin dataset names under ``$DETECTRON2_DATASETS`` (default ``./datasets``), registered at import.

* ``cuhk_sysu_{train,gallery,query,test}``      -> <datasets>/cuhk_sysu
* ``prw_{train,gallery,query,test}``            -> <datasets>/prw
* ``synthps_{tiny,small,medium}_{cuhk,prw}_{...}`` -> <datasets>/synthps_{tiny,small,medium}_{cuhk,prw}
  (generate with ``tools/make_synthps.py``; loading a missing one says the command)
"""

import os

from .catalog import register_cuhk_sysu, register_prw, register_synthps

__all__ = ["register_all_builtin", "datasets_root"]

SYNTHPS_PRESETS = ("tiny", "small", "medium")
SYNTHPS_FORMATS = {"cuhk": "cuhk_sysu", "prw": "prw"}


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (detectron2's convention), default ``datasets`` (relative to the cwd)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_all_builtin(root: str = None) -> None:
    """Register every builtin name (lazily: nothing is read from disk), all with the "standard" box
    convention (another convention: register the root again under another prefix)."""
    root = datasets_root() if root is None else root
    register_cuhk_sysu(os.path.join(root, "cuhk_sysu"), "cuhk_sysu")
    register_prw(os.path.join(root, "prw"), "prw")
    for preset in SYNTHPS_PRESETS:
        for short, fmt in SYNTHPS_FORMATS.items():
            name = f"synthps_{preset}_{short}"
            register_synthps(os.path.join(root, name), fmt, name, preset=preset)
