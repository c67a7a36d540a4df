"""Shared helpers of the person-search loaders: MATLAB-file parsing, the parse cache, image sizes and
the SynthPS attribute file. Needs only numpy / scipy / PIL (no detectron2).

MATLAB files written by MATLAB itself and by ``scipy.io.savemat`` differ in small ways (struct arrays
vs cell arrays of structs, row vs column vectors, strings as char arrays or cells of char arrays).
Every file is read with ``loadmat(squeeze_me=False, struct_as_record=True)`` and normalised by
:func:`mat_structs`, :func:`mat_str`, :func:`mat_str_list` and :func:`mat_box`, so the loaders see one
shape of data whatever wrote the file.
"""
from PIL import Image
from tqdm import tqdm
import copy
import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetFormatError",
    "DatasetNotFoundError",
    "require_file",
    "load_mat",
    "mat_structs",
    "mat_field",
    "mat_str",
    "mat_str_list",
    "mat_box",
    "mat_int",
    "cache_dir",
    "cached_parse",
    "read_image_sizes",
    "load_attribute_file",
    "attach_attributes",
    "split_records",
    "ATTRIBUTE_FILE",
    "BOX_CONVENTIONS",
    "BOX_RULES",
    "check_box_convention",
    "convert_boxes",
]

#: File next to a SynthPS dataset with the ground-truth binary attributes of every person box.
ATTRIBUTE_FILE = "synthps_attributes.json"

# Bump when the parsed structures change, so stale caches are ignored.
_CACHE_VERSION = 2


def _code_digest() -> str:
    """Digest of the loaders' source: a changed parser never reads a cache written by an older one."""
    h = hashlib.sha1()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()[:12]


_CODE_DIGEST = _code_digest()


class DatasetFormatError(ValueError):
    """A dataset file exists but does not have the expected structure or values."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root or one of its files is missing."""


def require_file(path: str, what: str, layout: str) -> str:
    """Return ``path`` if it is a file, else raise :class:`DatasetNotFoundError` naming it and ``layout``."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{what}: missing file {path}.\nExpected layout:\n{layout}")
    return path


# ----------------------------------------------------------------------------------------------------
# MATLAB files
# ----------------------------------------------------------------------------------------------------
def load_mat(path: str, keys: Sequence[str], layout: str = "") -> Dict[str, Any]:
    """Load a .mat file and check that it has one of ``keys`` (alternatives, first found wins).

    Returns:
        {"key": the key found, "value": its array, "all": every variable of the file}.
    """
    from scipy.io import loadmat

    try:
        data = loadmat(path, squeeze_me=False, struct_as_record=True)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"missing file {path}.\nExpected layout:\n{layout}") from None
    except Exception as e:  # scipy raises several types for corrupt / non-MATLAB files
        raise DatasetFormatError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from e
    variables = {k: v for k, v in data.items() if not k.startswith("__")}
    for key in keys:
        if key in variables:
            return {"key": key, "value": variables[key], "all": variables}
    raise DatasetFormatError(
        f"{path}: expected a variable named {' or '.join(repr(k) for k in keys)}, "
        f"found {sorted(variables) or 'none'}"
    )


def mat_structs(value, where: str) -> List[Dict[str, Any]]:
    """Flatten a MATLAB struct array, a cell array of structs, or nestings of both, into a list of dicts.

    Order is MATLAB's linear (column-major) order, which for the vectors of these files is file order.
    """
    out: List[Dict[str, Any]] = []

    def visit(x):
        if isinstance(x, dict):
            out.append(x)
        elif isinstance(x, np.void) and x.dtype.names:
            out.append({n: x[n] for n in x.dtype.names})
        elif isinstance(x, np.ndarray) and x.dtype.names is not None:
            for item in x.ravel(order="F"):
                out.append({n: item[n] for n in x.dtype.names})
        elif isinstance(x, np.ndarray) and x.dtype == object:
            for item in x.ravel(order="F"):
                visit(item)
        elif hasattr(x, "_fieldnames"):  # scipy mat_struct (struct_as_record=False)
            out.append({n: getattr(x, n) for n in x._fieldnames})
        else:
            raise DatasetFormatError(f"{where}: expected a struct (or cell of structs), got {_describe(x)}")

    visit(value)
    return out


def mat_field(struct: Dict[str, Any], names: Sequence[str], where: str):
    """The first present field of ``names`` in a struct, else an error listing the fields found."""
    for n in names:
        if n in struct:
            return struct[n]
    raise DatasetFormatError(
        f"{where}: struct has no field {' or '.join(repr(n) for n in names)} (fields: {sorted(struct)})"
    )


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"array of dtype {x.dtype} and shape {x.shape}"
    return f"{type(x).__name__} {x!r:.60}"


def mat_str(value, where: str) -> str:
    """A MATLAB string (char array, cell holding one, nested 1-element arrays) as ``str``."""
    x = value
    while True:
        if isinstance(x, str):
            return x.strip()
        if isinstance(x, bytes):
            return x.decode("utf-8").strip()
        if isinstance(x, np.ndarray):
            if x.dtype.kind in "US":
                flat = [s.decode() if isinstance(s, bytes) else str(s) for s in x.ravel(order="F")]
                if len(flat) == 1:
                    return flat[0].strip()
                # a char matrix read with chars_as_strings=False would be single characters
                if all(len(s) <= 1 for s in flat) and x.ndim == 1:
                    return "".join(flat).strip()
                raise DatasetFormatError(f"{where}: expected one string, got {len(flat)}: {flat[:3]}...")
            if x.dtype == object and x.size == 1:
                x = x.ravel()[0]
                continue
        raise DatasetFormatError(f"{where}: expected a string, got {_describe(x)}")


def mat_str_list(value, where: str) -> List[str]:
    """A MATLAB cell array of strings (any shape) or a char matrix, as a list of ``str``."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        return [str(s).strip() for s in value.ravel(order="F")]
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [mat_str(v, f"{where}[{i}]") for i, v in enumerate(value.ravel(order="F"))]
    raise DatasetFormatError(f"{where}: expected a cell array of strings, got {_describe(value)}")


def mat_box(value, where: str) -> Optional[np.ndarray]:
    """A box ``[x, y, w, h]`` as float64 (4,); None when the value is empty (an absent person)."""
    x = value
    while isinstance(x, np.ndarray) and x.dtype == object:
        if x.size == 0:
            return None
        if x.size != 1:
            break
        x = x.ravel()[0]
    try:
        arr = np.asarray(x, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where}: expected a numeric box [x, y, w, h], got {_describe(x)}") from None
    if arr.size == 0:
        return None
    if arr.size != 4 or not np.all(np.isfinite(arr)):
        raise DatasetFormatError(f"{where}: expected a box [x, y, w, h] of 4 finite numbers, got {arr.tolist()}")
    return arr


def mat_int(value, where: str, default: Optional[int] = None) -> int:
    """A MATLAB scalar as ``int`` (``default`` when empty and a default is given)."""
    x = value
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.ravel()[0]
    arr = np.asarray(x).ravel()
    if arr.size == 0 and default is not None:
        return default
    if arr.size != 1 or arr.dtype.kind not in "biuf":
        raise DatasetFormatError(f"{where}: expected one number, got {_describe(x)}")
    return int(arr[0])


# ----------------------------------------------------------------------------------------------------
# Box conventions: [x, y, w, h] in the files -> [x1, y1, x2, y2] in the records
# ----------------------------------------------------------------------------------------------------
#: "standard": the integer boxes of the public loader family that produced the published numbers
#: (OIM / NAE / SeqNet / COAT and successors); "geometric": float boxes, clipped at 0 after the
#: conversion. See docs/datasets.md "Box conventions".
BOX_CONVENTIONS = ("standard", "geometric")

#: The "standard" order of operations of each file kind (``trunc`` = truncation toward zero, i.e.
#: numpy's ``astype(np.int32)``).
BOX_RULES = {
    # PRW annotations/<frame>.jpg.mat rows: clip x, y, w, h at 0, then x2 = x + w, then trunc
    # (a box with x < 0 is shifted right, keeping its width, not cropped)
    "prw_annotation": "clip [x, y, w, h] at 0, then x2 = x + w, y2 = y + h, then truncate",
    # PRW query_info.txt: x2 = x + w first, then trunc, then clip at 0 (a box with x < 0 is cropped)
    "prw_query": "x2 = x + w, y2 = y + h, then truncate, then clip at 0",
    # CUHK-SYSU Images.mat / Train.mat / TestG*.mat idlocate: trunc x, y, w, h, then x2 = x + w
    "cuhk_sysu": "truncate [x, y, w, h], then x2 = x + w, y2 = y + h (no clipping)",
}


def check_box_convention(convention: str) -> str:
    """Return ``convention`` if it is one of :data:`BOX_CONVENTIONS`, else raise ValueError."""
    if convention not in BOX_CONVENTIONS:
        raise ValueError(f"box_convention {convention!r}: expected one of {BOX_CONVENTIONS} "
                         "(see docs/datasets.md, 'Box conventions')")
    return convention


def convert_boxes(xywh, convention: str, rule: str) -> np.ndarray:
    """Convert file boxes ``[x, y, w, h]`` to ``[x1, y1, x2, y2]`` under a box convention.

    Args:
        xywh: (K, 4) or (4,) array-like of boxes as stored in the files.
        convention: "standard" (the published protocol: the order of :data:`BOX_RULES` [rule], integer
            values) or "geometric" (x2 = x + w, y2 = y + h in floats, then clip at 0).
        rule: a key of :data:`BOX_RULES` (which file the boxes come from).
    Returns:
        float64 array of the same shape as ``xywh``: XYXY boxes (integer-valued under "standard").
    """
    check_box_convention(convention)
    if rule not in BOX_RULES:
        raise ValueError(f"box rule {rule!r}: expected one of {sorted(BOX_RULES)}")
    b = np.array(xywh, dtype=np.float64)  # a copy: the caller's array is never changed
    shape = b.shape
    b = b.reshape(-1, 4)
    if convention == "geometric":
        b[:, 2:] += b[:, :2]
        out = np.clip(b, 0, None)
    elif rule == "prw_annotation":
        b = np.clip(b, 0, None)
        b[:, 2:] += b[:, :2]
        out = np.trunc(b)
    elif rule == "prw_query":
        b[:, 2:] += b[:, :2]
        out = np.clip(np.trunc(b), 0, None)
    else:  # cuhk_sysu
        b = np.trunc(b)
        b[:, 2:] += b[:, :2]
        out = b
    return (out + 0.0).reshape(shape)  # + 0.0: no -0.0 from truncating (-1, 0)


# ----------------------------------------------------------------------------------------------------
# Cache of parsed annotations
# ----------------------------------------------------------------------------------------------------
def cache_dir() -> Optional[str]:
    """``$GALW_D2_CACHE`` (default ``~/.cache/galw_d2``); None when set to "" / "0" / "off" (disabled)."""
    d = os.environ.get("GALW_D2_CACHE")
    if d is None:
        d = os.path.join(os.path.expanduser("~"), ".cache", "galw_d2")
    if d.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    return d


def _file_key(paths: Iterable[str]) -> List:
    key = []
    for p in paths:
        p = os.path.abspath(p)
        try:
            st = os.stat(p)
            key.append([p, st.st_mtime_ns, st.st_size])
        except OSError:
            key.append([p, None, None])
    return key


_MEMO: "OrderedDict[tuple, Any]" = OrderedDict()  # last few parsed values of this process (never mutated)
_MEMO_SIZE = 4


def cached_parse(tag: str, files: Iterable[str], fn: Callable[[], Any], extra: Any = None) -> Any:
    """Return ``fn()``, cached on disk under :func:`cache_dir` keyed by the files' paths, mtimes, sizes.

    The last few values are also kept in memory (a dataset's splits share one parse). Callers must not
    mutate the returned value. A missing, unreadable or unwritable cache never fails the load: it
    falls back to parsing.
    """
    d = cache_dir()
    key = json.dumps([_CACHE_VERSION, _CODE_DIGEST, tag, _file_key(files), extra], sort_keys=True, default=str)
    memo_key = (d, key)
    if memo_key in _MEMO:
        _MEMO.move_to_end(memo_key)
        return _MEMO[memo_key]
    value = _disk_cached(d, tag, key, fn)
    _MEMO[memo_key] = value
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return value


def _disk_cached(d: Optional[str], tag: str, key: str, fn: Callable[[], Any]) -> Any:
    if d is None:
        return fn()
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    path = os.path.join(d, f"{tag}_{digest}.pkl")
    if os.path.isfile(path):
        try:
            with open(path, "rb") as f:
                stored_key, value = pickle.load(f)
            if stored_key == key:
                logger.info("Loaded parsed %s from cache %s", tag, path)
                return value
        except Exception as e:  # corrupt / incompatible pickle: reparse
            logger.warning("Ignoring unreadable cache file %s (%s)", path, e)
    value = fn()
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{tag}_", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump((key, value), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("Cannot write the dataset cache in %s (%s); set $GALW_D2_CACHE to a writable folder "
                       "to make the next load fast.", d, e)
    return value


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------
def read_image_sizes(image_dir: str, names: Sequence[str], layout: str) -> Dict[str, tuple]:
    """{name: (height, width)} from the image headers (no decoding), with a progress bar."""

    sizes: Dict[str, tuple] = {}
    missing: List[str] = []
    it = names
    if len(names) > 2000:

        it = tqdm(names, desc=f"reading image sizes in {image_dir}", unit="img")
    for n in it:
        p = os.path.join(image_dir, n)
        try:
            with Image.open(p) as im:
                w, h = im.size
        except FileNotFoundError:
            missing.append(n)
            continue
        except Exception as e:
            raise DatasetFormatError(f"{p}: not a readable image ({e})") from e
        sizes[n] = (int(h), int(w))
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} annotated image(s) missing from {image_dir}, e.g. {missing[:3]}.\n"
            f"Expected layout:\n{layout}"
        )
    return sizes


# ----------------------------------------------------------------------------------------------------
# SynthPS attributes
# ----------------------------------------------------------------------------------------------------
def load_attribute_file(root: str) -> Optional[Dict[str, Any]]:
    """Parse ``<root>/synthps_attributes.json``; None when the file does not exist.

    Returns:
        {"attribute_names": [str], "persons": {image: [(box (4,) float64 XYXY, [int 0/1]), ...]}}
    """
    path = os.path.join(root, ATTRIBUTE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetFormatError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict) or "attribute_names" not in data or "persons" not in data:
        raise DatasetFormatError(f'{path}: expected {{"attribute_names": [...], "persons": [...]}}')
    names = [str(n) for n in data["attribute_names"]]
    persons: Dict[str, list] = {}
    for i, p in enumerate(data["persons"]):
        try:
            image, box, attrs = str(p["image"]), p["box"], p["attributes"]
        except (KeyError, TypeError):
            raise DatasetFormatError(f'{path}: persons[{i}] needs "image", "box", "attributes", got {p!r:.100}')
        box = np.asarray(box, dtype=np.float64).ravel()
        if box.size != 4:
            raise DatasetFormatError(f"{path}: persons[{i}] ({image}): box must be [x1, y1, x2, y2], got {p['box']}")
        if len(attrs) != len(names) or any(a not in (0, 1) for a in attrs):
            raise DatasetFormatError(
                f"{path}: persons[{i}] ({image}): expected {len(names)} attributes of 0/1, got {attrs}"
            )
        persons.setdefault(image, []).append((box, [int(a) for a in attrs]))
    return {"attribute_names": names, "persons": persons, "path": path}


def attach_attributes(records: Iterable[Dict[str, Any]], attr: Dict[str, Any], tol: float = 1.0,
                      box_convert: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
    """Give every annotation of ``records`` its ``"attributes"`` from a parsed attribute file (in place).

    A person matches an annotation of the same image when every XYXY coordinate differs by at most
    ``tol`` px. Raises when an annotation has no match.

    Args:
        box_convert: maps the file's (N, 4) XYXY boxes to the records' boxes, so both go through the
            loader's box convention (the file holds ``[x, y, x + w, y + h]`` of the annotation rows);
            default: clip at 0.
    """
    if box_convert is None:
        box_convert = lambda b: np.clip(b, 0, None)  # noqa: E731
    persons = attr["persons"]
    for r in records:
        cands = persons.get(r["image_name"], [])
        if not cands:
            if r["annotations"]:
                raise DatasetFormatError(f"{attr['path']}: no attributes for any person of image {r['image_name']}")
            continue
        boxes = box_convert(np.stack([c[0] for c in cands]))
        for a in r["annotations"]:
            diff = np.abs(boxes - np.asarray(a["bbox"], dtype=np.float64)[None]).max(axis=1)
            j = int(np.argmin(diff))
            if diff[j] > tol:
                raise DatasetFormatError(
                    f"{attr['path']}: no attributes for the person at box {list(map(float, a['bbox']))} "
                    f"of image {r['image_name']} (closest listed box {cands[j][0].tolist()})"
                )
            a["attributes"] = list(cands[j][1])


def split_records(index: Dict[str, Any], split: str, dataset: str, root: str,
                  box_convert: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> List[Dict[str, Any]]:
    """Deep copies of one split's image records from a parsed ``index`` ("test" = gallery then query),
    with ``bbox_mode`` set and, when ``root`` has :data:`ATTRIBUTE_FILE`, each annotation's attributes
    (``box_convert``: see :func:`attach_attributes`).

    Raises ValueError naming ``dataset`` for an unknown split.
    """

    from detectron2.structures import BoxMode

    if split not in ("train", "gallery", "query", "test"):
        raise ValueError(f"{dataset} split {split!r}: expected 'train', 'gallery', 'query' or 'test'")
    parts = ["gallery", "query"] if split == "test" else [split]
    records = copy.deepcopy([r for p in parts for r in index[p]])
    for r in records:
        for a in r["annotations"]:
            a["bbox_mode"] = BoxMode.XYXY_ABS
    attr = load_attribute_file(root)
    if attr is not None:
        attach_attributes(records, attr, box_convert=box_convert)
    return records
