"""Person-search datasets, protocols and the dataset mapper.

Importing this package registers the builtin dataset names (lazily; see :mod:`.builtin`).
"""

from .builtin import register_all_builtin
from .catalog import get_search_protocol, register_cuhk_sysu, register_prw, register_synthps  # noqa: F401
from .datasets import (  # noqa: F401
    DatasetFormatError,
    DatasetNotFoundError,
    load_cuhk_sysu,
    load_cuhk_sysu_protocol,
    load_prw,
    load_prw_protocol,
)
from .mapper import PersonSearchDatasetMapper  # noqa: F401
from .protocol import GalleryImage, SearchProtocol, SearchQuery  # noqa: F401

register_all_builtin()

__all__ = [
    "GalleryImage",
    "SearchProtocol",
    "SearchQuery",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "load_cuhk_sysu",
    "load_cuhk_sysu_protocol",
    "load_prw",
    "load_prw_protocol",
    "register_cuhk_sysu",
    "register_prw",
    "register_synthps",
    "get_search_protocol",
    "PersonSearchDatasetMapper",
]
