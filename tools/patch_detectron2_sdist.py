#!/usr/bin/env python
"""Make the PyPI sdist ``pb1-detectron2==0.6`` installable without its (absent) C++ sources.

Usage: ``python tools/patch_detectron2_sdist.py UNPACKED_SDIST_DIR``

The sdist carries the Python files of upstream detectron2 v0.6 but not ``detectron2/layers/csrc``,
so ``setup.py`` cannot build ``detectron2._C``. galw_d2 needs none of the compiled ops (it uses
torchvision's nms / roi_align / deform_conv2d), so we:

1. drop ``ext_modules=get_extensions(),`` from setup.py;
2. make the module-level ``from detectron2 import _C`` optional in the modules that import it at
   import time (rotated boxes, deformable conv, rotated RoIAlign, the fast COCO eval API);
3. replace ``Image.LINEAR`` (removed in Pillow 10) by ``Image.BILINEAR``.

Each edit is checked: a file that does not contain the expected text is an error, so a different
sdist never gets half-patched silently. Running it twice is harmless (already-patched files pass).
"""

import os
import sys

OPTIONAL_C = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # patched by galw_d2: sdist without compiled ops\n"
    "    _C = None\n"
)

EDITS = [
    ("setup.py", "ext_modules=get_extensions(),", "# ext_modules removed by galw_d2: this sdist has no C++ sources"),
    ("detectron2/layers/deform_conv.py", "from detectron2 import _C\n", OPTIONAL_C),
    ("detectron2/layers/rotated_boxes.py", "from detectron2 import _C\n", OPTIONAL_C),
    ("detectron2/layers/roi_align_rotated.py", "from detectron2 import _C\n", OPTIONAL_C),
    ("detectron2/evaluation/fast_eval_api.py", "from detectron2 import _C\n", OPTIONAL_C),
    ("detectron2/data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR"),
]


def patch(root: str) -> None:
    for rel, old, new in EDITS:
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise SystemExit(f"patch_detectron2_sdist: expected file {path} is missing")
        with open(path) as f:
            text = f.read()
        if new and new in text and old not in text.replace(new, ""):
            print(f"[patch] {rel}: already patched")
            continue
        if old not in text:
            raise SystemExit(f"patch_detectron2_sdist: {rel} does not contain {old!r}; unexpected sdist")
        if old.startswith("from detectron2 import _C"):
            # Only the import at the start of a line (module level), not indented lazy imports.
            lines = text.split("\n")
            lines = [OPTIONAL_C.rstrip("\n") if ln == old.rstrip("\n") else ln for ln in lines]
            text = "\n".join(lines)
        else:
            text = text.replace(old, new)
        with open(path, "w") as f:
            f.write(text)
        print(f"[patch] {rel}: {old.strip()!r} -> {new.strip()[:40]!r}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    patch(sys.argv[1])
