"""The search protocol types, under their data-layer name (defined in :mod:`galw_d2.protocol`, which
imports nothing but numpy, so that the evaluation core can use them without detectron2)."""

from ..protocol import GalleryImage, SearchProtocol, SearchQuery

__all__ = ["GalleryImage", "SearchProtocol", "SearchQuery"]
