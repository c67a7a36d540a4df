#!/usr/bin/env bash
# Install galw_d2 and its whole dependency stack into a Python environment.
#
#   bash tools/install_deps.sh [PYTHON]      (default: .venv/bin/python)
#
# Order: torch/torchvision (pinned pair) -> detectron2 -> galw_d2 (editable, with test extras).
# detectron2 is not on PyPI. Route chosen by $GALW_D2_DETECTRON2:
#   auto   (default) official git source when github.com answers, else the offline route
#   git    official source only:  pip install --no-build-isolation git+https://github.com/facebookresearch/detectron2.git
#   pypi   offline route: PyPI sdist pb1-detectron2==0.6 (sha256-checked; same Python files as upstream
#          v0.6, no C++ sources), installed without compiled ops and with the Pillow>=10 fix.
# Idempotent: every step first checks what is installed and skips when it is already satisfied.
set -euo pipefail

PY=${1:-.venv/bin/python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
D2_SDIST=pb1-detectron2==0.6
D2_SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
D2_GIT=https://github.com/facebookresearch/detectron2.git
ROUTE=${GALW_D2_DETECTRON2:-auto}

log() { echo "[install_deps] $*"; }
# pip with its output filtered of the local index's noise; fails when pip fails.
pip_install() {
  local out rc=0
  out=$("$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v -e "is ignored: it is neither" -e '^$' || true
  return $rc
}

if [ ! -x "$PY" ]; then echo "[install_deps] error: no Python interpreter at '$PY'" >&2; exit 2; fi

# 1. torch + torchvision: the pinned pair (CUDA builds; they run on CPU too).
have_torch=$("$PY" -c "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$have_torch" = "$TORCH_VERSION $TORCHVISION_VERSION" ]; then
  log "torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION already installed"
else
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (found: '${have_torch:-none}')"
  pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "setuptools<81" wheel
fi
# detectron2 imports pkg_resources, removed in setuptools 81.
"$PY" -c "import pkg_resources" 2>/dev/null || pip_install "setuptools<81"

# 2. detectron2's pure-Python dependencies (its own pins), so its install resolves nothing online.
pip_install "fvcore==0.1.5.post20221221" "iopath>=0.1.7,<0.1.10" pycocotools "Pillow>=7.1" matplotlib \
  termcolor yacs tabulate cloudpickle tqdm tensorboard omegaconf hydra-core black packaging

# 3. detectron2.
if d2=$("$PY" -c "import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))" 2>/dev/null); then
  log "detectron2 already installed: $d2"
else
  if [ "$ROUTE" = auto ]; then
    if timeout 20 git ls-remote "$D2_GIT" HEAD >/dev/null 2>&1; then ROUTE=git; else ROUTE=pypi; fi
    log "detectron2 route 'auto' resolved to '$ROUTE' (github.com $( [ $ROUTE = git ] && echo reachable || echo unreachable))"
  fi
  case "$ROUTE" in
    git)
      log "installing detectron2 from the official source ($D2_GIT) -- compiles its C++/CUDA ops"
      pip_install --no-build-isolation "git+$D2_GIT"
      ;;
    pypi)
      log "installing detectron2 from PyPI sdist $D2_SDIST (offline route: no compiled ops)"
      work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
      "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: --no-build-isolation \
        "$D2_SDIST" -d "$work" 2>&1 | grep -v "is ignored: it is neither" || true
      sdist=$(ls "$work"/pb1[-_]detectron2-0.6.tar.gz 2>/dev/null | head -n 1)
      [ -n "$sdist" ] || { echo "[install_deps] error: could not download $D2_SDIST" >&2; exit 1; }
      got=$(sha256sum "$sdist" | cut -d' ' -f1)
      if [ "$got" != "$D2_SDIST_SHA256" ]; then
        echo "[install_deps] error: sha256 of $(basename "$sdist") is $got, expected $D2_SDIST_SHA256" >&2; exit 1
      fi
      log "sha256 verified: $got"
      tar -xzf "$sdist" -C "$work"
      "$PY" "$ROOT/tools/patch_detectron2_sdist.py" "$work"/pb1[-_]detectron2-0.6
      pip_install --no-build-isolation --no-deps "$work"/pb1[-_]detectron2-0.6
      ;;
    *) echo "[install_deps] error: GALW_D2_DETECTRON2='$ROUTE', expected auto, git or pypi" >&2; exit 2 ;;
  esac
  log "detectron2 installed: $("$PY" -c "import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))")"
fi

# 4. galw_d2 itself (editable) with its remaining dependencies and the test extras.
if "$PY" -c "import galw_d2, torchreid, scipy, cv2, pytest, importlinter, ruff, torchjd, qpsolvers, quadprog" 2>/dev/null && \
   [ "$("$PY" -c "import galw_d2, os; print(os.path.dirname(os.path.dirname(os.path.abspath(galw_d2.__file__))))")" = "$ROOT" ]; then
  log "galw_d2 already installed (editable) from $ROOT"
else
  log "installing galw_d2 (editable) with extras [test]"
  pip_install --no-build-isolation -e "$ROOT[test]"
fi
"$PY" - <<'PY'
import torch, torchvision, detectron2
from galw_d2.utils.env import describe_detectron2
print("[install_deps] ready: torch", torch.__version__, "| torchvision", torchvision.__version__,
      "|", describe_detectron2())
PY
