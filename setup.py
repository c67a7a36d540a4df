#!/usr/bin/env python
"""galw_d2: Grouped Adaptive Loss Weighting for person search, as a detectron2 plugin.

torch/torchvision and detectron2 are installed by ``tools/install_deps.sh`` (detectron2 is not on
PyPI, and the torch/torchvision pair is pinned there); ``install_requires`` lists the rest.
"""
from setuptools import find_packages, setup

setup(
    name="galw_d2",
    version="0.1.0",
    description="Grouped Adaptive Loss Weighting (GALW) for person search as a detectron2 plugin",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["galw_d2", "galw_d2.*"]),
    # configs/ reaches the package as galw_d2/configs (a link in the source tree): galw_d2.model_zoo
    package_data={"galw_d2": ["configs/*.yaml", "configs/*/*.yaml"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "fvcore>=0.1.5",
        "iopath>=0.1.7,<0.1.10",
        "numpy",
        "scipy",
        "opencv-python-headless",
        "pycocotools",
        "matplotlib",
        "tqdm",
        "torchreid==0.2.5",
        "gdown",  # torchreid imports it at import time
        "tensorboard",  # torchreid's Engine.run writes TensorBoard scalars (galw_d2.reid)
        "setuptools<81",  # detectron2 imports pkg_resources
        # gradient-aggregation strategies (upgrad, pcgrad, ...; galw_d2/galw/weighting/aggregation.py);
        # torchjd needs Python >= 3.10, galw_d2 imports it only when such a strategy is built
        "torchjd[quadprog-projector]==0.18.0; python_version >= '3.10'",
    ],
    # test: the suite plus the checks .ci/run makes before it (ruff: style; import-linter: the layers)
    extras_require={"test": ["pytest>=7", "ruff>=0.6", "import-linter>=2.0"]},
)
