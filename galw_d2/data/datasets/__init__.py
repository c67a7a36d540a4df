"""Loaders of the official CUHK-SYSU and PRW files (also the layouts SynthPS writes)."""
from .common import DatasetFormatError, DatasetNotFoundError  # noqa: F401
from .cuhk_sysu import (  # noqa: F401
    cuhk_sysu_gallery_sizes,
    cuhk_sysu_num_train_pids,
    load_cuhk_sysu,
    load_cuhk_sysu_protocol,
)
from .prw import load_prw, load_prw_protocol, prw_num_train_pids  # noqa: F401
