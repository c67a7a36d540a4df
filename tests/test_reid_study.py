"""tools/reid_study.py: arm parsing and the paired summary (hand-made metrics files, no training)."""

import json
import os
import sys
import types

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import reid_study  # noqa: E402

sys.path.pop(0)


def test_parse_partition():
    assert reid_study.parse_partition("galw[r;c,a]") == [["loss_rank"], ["loss_cls", "loss_att"]]
    assert reid_study.parse_partition("rulwf") is None
    with pytest.raises(ValueError, match="cover"):
        reid_study.parse_partition("galw[r;c]")


def test_summary_pairs_by_seed(tmp_path):
    work = tmp_path / "work"
    vals = {"fixed": {0: 50.0, 1: 60.0, 2: 70.0}, "ulwf": {0: 52.0, 1: 61.0, 2: 73.0}}
    for arm, per in vals.items():
        for s, v in per.items():
            d = work / arm / f"seed{s}"
            d.mkdir(parents=True)
            json.dump(
                {"mAP": v, "rank1": v + 10, "rank5": 99.0, "rank10": 100.0, "wall_time_s": 1.0},
                open(d / "metrics.json", "w"),
            )
    args = types.SimpleNamespace(work=str(work), config_file=os.path.join(REPO, "configs", "reid", "x.yaml"), opts=[])
    s = reid_study.summarize(args, ["fixed", "ulwf"], [0, 1, 2], None)
    p = s["arms"]["ulwf"]["paired"]["fixed"]["mAP"]
    assert p["mean"] == pytest.approx(2.0) and p["per_seed"] == {"0": 2.0, "1": 1.0, "2": 3.0}
    # t interval: 2 +- t(0.975, 2) * 1 / sqrt(3)
    h = 4.302652729911275 / np.sqrt(3)
    assert p["ci95_t"] == pytest.approx([2 - h, 2 + h])
    assert 1.0 <= p["ci95"][0] <= p["ci95"][1] <= 3.0  # bootstrap of the seed differences stays in their range
    assert s["arms"]["fixed"]["stats"]["mAP"] == {"mean": 60.0, "std": 10.0, "n": 3}
    assert s["unit"] == "percent"
