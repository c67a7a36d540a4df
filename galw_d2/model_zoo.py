"""Where the packaged configs are: ``get_config_file("synthps/roi_alignps_R18_tiny_synthps.yaml")``.

The YAML files live in the repository's ``configs/``; the package reaches them as ``galw_d2/configs``
(a link in the source tree, package data in a built wheel), so they are found through the installed
package wherever it is, never relative to a script's location.
"""

import os
from importlib import resources

__all__ = ["configs_root", "get_config_file"]


def configs_root() -> str:
    """The folder holding galw_d2's configs (``Base-*.yaml``, ``synthps/``, ``reid/``, ...)."""
    return str(resources.files("galw_d2") / "configs")


def get_config_file(name: str) -> str:
    """Absolute path of the packaged config ``name`` (relative to ``configs/``); a path that already
    exists is returned as is. Raises ``FileNotFoundError`` naming the folder searched."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    rel = name[len("configs/") :] if name.startswith("configs/") else name
    path = os.path.join(configs_root(), rel)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config '{name}' is neither a file nor a packaged config under {configs_root()}")
    return path
