"""A detectron2/fvcore ``Registry`` whose entries have explicit, case-insensitive names.

fvcore's ``Registry`` names an entry by its ``__name__``; config values such as ``GALW.STRATEGY rulwf``
or ``GALW.GROUPING.STRATEGY slope`` are short lower-case method names, so entries here are registered
as ``@REGISTRY.register("rulwf")`` and looked up case-insensitively. Everything else (``get``,
iteration, ``in``) is fvcore's.
"""

from typing import Any, Callable, List, Optional

from fvcore.common.registry import Registry

__all__ = ["NamedRegistry"]


class NamedRegistry(Registry):
    """``Registry`` with ``register(name)`` and case-insensitive ``get``; errors list the known names."""

    def register(self, name: Optional[Any] = None) -> Any:  # noqa: D401 - decorator factory
        """``@R.register("name")`` (explicit name), ``@R.register()`` or ``R.register(obj)`` (``__name__``)."""
        if name is not None and not isinstance(name, str):  # R.register(obj): fvcore's call form
            self._do_register(name.__name__.lower(), name)
            return name

        def deco(obj: Callable) -> Callable:
            self._do_register((name or obj.__name__).lower(), obj)
            return obj

        return deco

    def get(self, name: str) -> Any:
        key = str(name).lower()
        if key not in self._obj_map:
            raise KeyError(f"no entry named '{name}' in the {self._name} registry; known: {self.names()}")
        return self._obj_map[key]

    def __contains__(self, name: str) -> bool:
        return str(name).lower() in self._obj_map

    def names(self) -> List[str]:
        """Registered names, in registration order."""
        return list(self._obj_map)
