"""The study's statistics (hand-computed intervals and Rand indices) and the --quick study end to end,
including resume (a rerun redoes nothing finished)."""

import json
import math
import os
import sys

import numpy as np
import pytest

from galw_d2.evaluation.stats import adjusted_rand_index, groups_to_labels, mean_std, paired_difference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_difference_known_intervals():
    # two seeds, one query each: resampled seed pairs {1,1}, {1,3}, {3,1}, {3,3} -> means 1, 2, 2, 3 with
    # probabilities 1/4, 1/2, 1/4: the 2.5 / 97.5 percentiles are exactly 1 and 3.
    a, b = np.array([[2.0], [5.0]]), np.array([[1.0], [2.0]])
    d = paired_difference(a, b, num_boot=4000, seed=0)
    assert d["mean"] == 2.0 and d["per_seed"] == [1.0, 3.0] and d["ci95"] == [1.0, 3.0]
    # Student t over the per-seed differences: 2 +- t(0.975, 1) * sqrt(2) / sqrt(2) = 2 +- 12.7062
    assert d["ci95_t"] == pytest.approx([2 - 12.7062047, 2 + 12.7062047], abs=1e-5)
    # a constant paired difference has a zero-width interval, whatever the resampling
    c = paired_difference(np.full((3, 7), 4.5), np.full((3, 7), 1.0))
    assert c["mean"] == 3.5 and c["ci95"] == [3.5, 3.5]
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_difference(np.zeros((2, 3)), np.zeros((2, 4)))


def test_paired_difference_is_paired_by_query():
    """Arms that differ by a constant on every query of a noisy test set: the pairing removes the
    query-to-query noise, so the interval is a point."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, size=(5, 200))
    d = paired_difference(base + 2.0, base)
    assert d["ci95"] == pytest.approx([2.0, 2.0])


def test_adjusted_rand_index_hand_value_and_invariances():
    # contingency {(0,0): 2, (1,1): 1, (1,2): 1}: sum C(n_ij,2) = 1, rows 2, cols 1, C(4,2) = 6
    # ARI = (1 - 2*1/6) / ((2 + 1)/2 - 2*1/6) = 4/7
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 2], [5, 5, 9, 7]) == 1.0  # label names do not matter
    assert adjusted_rand_index([0, 0, 0], [1, 1, 1]) == 1.0
    tasks = ["a", "b", "c", "d"]
    assert groups_to_labels([["c", "a"], ["b", "d"]], tasks).tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match=r"task\(s\) \['d'\] are in no group"):
        groups_to_labels([["a", "b", "c"]], tasks)
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": math.sqrt(2)}


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import study

    out = tmp_path_factory.mktemp("study")
    data = tmp_path_factory.mktemp("study_data")
    args = ["--quick", "--output", str(out), "--data-dir", str(data), "--arms", "fixed", "galw", "--num-boot", "200"]
    assert study.main(args) == 0
    return study, out, args


def test_quick_study_summary_contract(quick_study):
    _, out, _ = quick_study
    s = json.loads((out / "summary.json").read_text())
    assert s["unit"] == "percent" and s["complete_seeds"] == [0, 1] and s["missing_runs"] == []
    for arm in ("fixed", "galw"):
        per = s["arms"][arm]["per_seed"]
        assert set(per) == {"0", "1"} and all(0 <= v["mAP"] <= 100 and 0 <= v["top1"] <= 100 for v in per.values())
    d = s["arms"]["galw"]["paired"]["fixed"]["mAP"]
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1] and d["num_seeds"] == 2
    # the mean paired difference is the difference of the arms' mean mAPs (same queries in every run)
    mean = lambda arm: np.mean([v["mAP"] for v in s["arms"][arm]["per_seed"].values()])  # noqa: E731
    assert d["mean"] == pytest.approx(mean("galw") - mean("fixed"), abs=1e-9)
    assert "fixed" not in s["arms"]["fixed"]["paired"]
    # detection per arm: the mean over seeds of each run's detection AP (percent)
    det = s["arms"]["galw"]["detection"]
    aps = [
        100 * json.loads((out / f"seed{sd}" / "galw" / "result.json").read_text())["detection"]["AP"] for sd in (0, 1)
    ]
    assert det["AP"]["mean"] == pytest.approx(np.mean(aps)) and 0 <= det["recall"]["mean"] <= 100
    # phase 1 is the fixed arm (recording does not change training), grouped arms use the seed's groups
    r = json.loads((out / "seed0" / "fixed" / "result.json").read_text())
    g = json.loads((out / "seed0" / "galw" / "result.json").read_text())
    assert (
        r["phase1"] is True
        and g["groups"] == json.loads((out / "seed0" / "grouping" / "groups.json").read_text())["groups"]
    )
    assert s["group_stability"]["mean_ari"] is not None and -1 <= s["group_stability"]["mean_ari"] <= 1
    assert (out / "forest.png").stat().st_size > 0 and "| galw |" in (out / "report.md").read_text()


def test_quick_study_resume_redoes_nothing_finished(quick_study):
    study, out, args = quick_study
    before = {p: os.path.getmtime(p) for p in map(str, out.glob("seed*/*/result.json"))}
    os.remove(out / "seed1" / "galw" / "result.json")  # as if killed before this run finished
    assert study.main(args) == 0
    after = {p: os.path.getmtime(p) for p in map(str, out.glob("seed*/*/result.json"))}
    redone = sorted(p for p in after if before.get(p) != after[p])
    assert redone == [str(out / "seed1" / "galw" / "result.json")]
    # the redone run resumed from its final checkpoint: its wall time covers only the evaluation, so it
    # is marked and left out of the arm's wall-time statistics (nothing to scale)
    r = json.loads((out / "seed1" / "galw" / "result.json").read_text())
    assert r["resumed_at_iter"] == r_iters(out) and r["wall_s_estimated"] is None
    w = json.loads((out / "summary.json").read_text())["arms"]["galw"]["wall_s"]
    assert w["num_runs"] == 1 and w["num_estimated"] == 1
    assert study.main(args + ["--iters", "5"]) == 2  # other settings on the same output folder: refused


def r_iters(out):
    return json.loads((out / "study.json").read_text())["iters"]


def test_resumed_run_wall_time_is_scaled_to_the_whole_run():
    from galw_d2.apps.study import _add_full_wall, run_wall_s

    r = {"wall_s": 70.0}  # 60 s training iterations 600..999 of 1000 (resumed at 600), 10 s evaluation
    _add_full_wall(r, {"start": 600, "end": 1000, "train_s": 60.0})
    assert r["resumed_at_iter"] == 600 and r["wall_s_estimated"] == pytest.approx(70 + 60 * (1000 / 400 - 1))
    assert run_wall_s(r) == pytest.approx(160.0)
    fresh = {"wall_s": 70.0}
    _add_full_wall(fresh, {})
    assert fresh == {"wall_s": 70.0} and run_wall_s(fresh) == 70.0


def test_grouping_sensitivity_tool(tmp_path):
    """tools/grouping_sensitivity.py on two hand-made trends files: the default row agrees with itself
    (ARI 1), the half-length variants see only their halves, and the report is written."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import grouping_sensitivity

    curves = {
        "a": [4.0, 3.0, 2.0, 1.0],
        "b": [4.0, 3.1, 2.0, 1.1],
        "c": [1.0, 1.0, 1.0, 1.5],
        "d": [0.1, 0.2, 0.2, 0.3],
    }
    files = []
    for i in range(2):
        p = tmp_path / f"trends{i}.json"
        p.write_text(json.dumps({"tasks": list(curves), "gradient_magnitude": curves, "settings": {}}))
        files.append(str(p))
    out = tmp_path / "gs"
    assert grouping_sensitivity.main(["--trends", *files, "--num-groups", "2", "--output", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads((out.with_suffix(".json")).read_text())["rows"]}
    default = rows["default (mean_diff, log10, average, G)"]
    assert (
        default["ari_to_default"] == 1.0
        and default["ari_across_seeds"] == 1.0
        and default["num_groups_found"] == [2, 2]
    )
    assert rows["G = 3"]["num_groups_found"] == [3, 3]
    assert "| log base e |" in out.with_suffix(".md").read_text()
