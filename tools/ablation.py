#!/usr/bin/env python
"""The paper's Table 3 on SynthPS: fixed / ULWF / RULWF / ULWF + grouping / GALW, paired by seed.

A preset of tools/study.py (the same options; the arms default to Table 3's), kept under its old name:

    python tools/ablation.py --output output/ablation --seeds 0 1 2 --iters 600 --preset small
    python tools/ablation.py --quick --output output/ablation_quick
"""

import sys

from study import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
