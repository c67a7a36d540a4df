"""Trends files that would group tasks on meaningless numbers are refused with the task and epoch named."""

import json

import pytest

from galw_d2.galw.grouping import compute_slopes, load_trends, validate_trends


def trends(**over):
    t = {
        "tasks": ["a", "b"],
        "gradient_magnitude": {"a": [1.0, 0.8, 0.5], "b": [0.2, None, 0.3]},
        "probe_counts": {"a": [2, 2, 1], "b": [2, 0, 1]},
        "settings": {},
    }
    t.update(over)
    return t


def write(tmp_path, data):
    p = tmp_path / "trends.json"
    p.write_text(json.dumps(data))
    return str(p)


def test_valid_file_loads(tmp_path):
    assert load_trends(write(tmp_path, trends()))["tasks"] == ["a", "b"]
    # probe_counts are optional (hand-written trends)
    t = trends()
    del t["probe_counts"]
    assert load_trends(write(tmp_path, t))["tasks"] == ["a", "b"]


@pytest.mark.parametrize(
    "curve_b,pattern",
    [
        ([0.2, "0.4", 0.3], r"task 'b' at epoch 1 is '0\.4' \(str\); expected a number or null"),
        ([0.2, True, 0.3], r"task 'b' at epoch 1 is True \(bool\)"),
        ([0.2, -0.1, 0.3], r"task 'b' at epoch 1 is -0\.1; a gradient magnitude .* is >= 0"),
        ([0.0, 0.0, None], r"task 'b' is 0 at every epoch"),
        ("0.2 0.3", r"curve of task 'b' must be a list"),
    ],
)
def test_bad_values_name_task_and_epoch(tmp_path, curve_b, pattern):
    t = trends()
    t["gradient_magnitude"]["b"] = curve_b
    t.pop("probe_counts")
    with pytest.raises(ValueError, match=r"trends\.json: .*" + pattern):
        load_trends(write(tmp_path, t))


def test_ragged_curves_and_probe_counts(tmp_path):
    t = trends()
    t["gradient_magnitude"]["b"] = [0.2, 0.3]
    t["probe_counts"]["b"] = [2, 1]
    with pytest.raises(ValueError, match=r"curves of different lengths: 'a' 3 epochs, 'b' 2"):
        load_trends(write(tmp_path, t))
    t = trends()
    t["probe_counts"]["a"] = [2, 2]
    with pytest.raises(ValueError, match=r"probe_counts of task 'a' has 2 epochs but its curve has 3"):
        load_trends(write(tmp_path, t))
    t = trends()
    t["probe_counts"]["a"] = [2, 0, 1]
    with pytest.raises(ValueError, match=r"task 'a' at epoch 1 has a gradient magnitude \(0\.8\) but 0 probes"):
        load_trends(write(tmp_path, t))
    t = trends()
    t["probe_counts"]["b"] = [2, 3, 1]
    with pytest.raises(ValueError, match=r"task 'b' at epoch 1 has 3 probes but no gradient magnitude"):
        load_trends(write(tmp_path, t))
    t = trends()
    del t["probe_counts"]["b"]
    with pytest.raises(ValueError, match=r"probe_counts has no entry for \['b'\]"):
        load_trends(write(tmp_path, t))
    t = trends()
    t["probe_counts"]["a"] = [2, -1, 1]
    with pytest.raises(ValueError, match=r"probe_counts of task 'a' at epoch 1 is -1; expected an integer >= 0"):
        load_trends(write(tmp_path, t))


def test_in_memory_curves_are_checked_by_compute_slopes():
    with pytest.raises(ValueError, match=r"task 'x' at epoch 0 is -1\.0"):
        compute_slopes({"x": [-1.0, 2.0]})
    with pytest.raises(ValueError, match=r"task 'x' is 0 at every epoch"):
        compute_slopes({"x": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="ragged"):
        validate_trends({"tasks": ["a", "b"], "gradient_magnitude": {"a": [1.0, 2.0], "b": [1.0]}}, "memory")
