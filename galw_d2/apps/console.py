"""What a tool prints: its own stage lines, progress bars and results on the console; detectron2's
periodic metric dumps, INFO logs and third-party deprecation warnings in ``<output>/log.txt``
(``verbose=True`` also shows them on the console)."""

import logging
import os
import sys
import warnings

from detectron2.utils.logger import setup_logger

__all__ = ["setup_console"]


def setup_console(output_dir: str, verbose: bool = False, log_name: str = "log.txt") -> str:
    """Log detectron2 and galw_d2 to ``output_dir/log_name``; keep the console for the tool's own output.

    Without ``verbose`` the loggers' console handlers only pass warnings and errors, and Python
    warnings (e.g. deprecations raised inside torch or torchreid) go to the log file only.
    Returns the log file's path.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, log_name)
    for name, abbrev in (("detectron2", "d2"), ("galw_d2", None), ("fvcore", None)):
        logger = (
            setup_logger(output=path, name=name, abbrev_name=abbrev) if abbrev else setup_logger(output=path, name=name)
        )
        for h in logger.handlers:
            # detectron2's file handler is a StreamHandler on a file: only the console streams are quietened
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr):
                h.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        logging.captureWarnings(True)
        wlog = logging.getLogger("py.warnings")
        wlog.propagate = False
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(path) for h in wlog.handlers
        ):
            fh = logging.FileHandler(path)
            fh.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
            wlog.addHandler(fh)
        warnings.simplefilter("default")
    return path
