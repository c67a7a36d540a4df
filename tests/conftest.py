import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def synthps_tiny(tmp_path_factory):
    """SynthPS ``tiny`` (seed 0) generated once per session in both official layouts:
    {"cuhk_sysu": root, "prw": root} (each root also holds synthps_attributes.json / synthps_meta.json)."""
    from galw_d2.data.synthps import generate_synthps

    base = tmp_path_factory.mktemp("synthps_tiny")
    return {fmt: generate_synthps(str(base / fmt), fmt, "tiny", 0) for fmt in ("cuhk_sysu", "prw")}
