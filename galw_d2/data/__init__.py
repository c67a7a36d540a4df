"""Person-search datasets, protocols and the dataset mapper."""
from .protocol import GalleryImage, SearchProtocol, SearchQuery  # noqa: F401
