"""GALW task grouping: slopes (Eq. 7), transform (Eq. 8), clustering, strategies, degenerate cases, tool."""

import json
import math
import os

import pytest
from detectron2.config import get_cfg

from galw_d2 import add_galw_config
from galw_d2.galw.grouping import (
    cluster_slopes,
    compute_slopes,
    group_tasks,
    load_trends,
    parse_manual_groups,
    transform_slopes,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("group_tasks_tool", os.path.join(ROOT, "tools/group_tasks.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _trends(curves):
    return {"tasks": list(curves), "gradient_magnitude": curves, "settings": {}}


def test_slopes_mean_diff_and_lstsq_by_hand():
    c = {"a": [1.0, 3.0, 2.0, 7.0], "b": [5.0, None, 4.0, 2.0]}
    s = compute_slopes(c, "mean_diff")
    assert s["a"] == pytest.approx((7 - 1) / 3)  # mean of (2, -1, 5)
    assert s["b"] == pytest.approx((2 - 5) / 3)  # gap at epoch 1: over epoch indices
    l = compute_slopes(c, "lstsq")
    # a: x = 0..3 (mean 1.5), y mean 3.25; sum dx dy = (-1.5)(-2.25)+(-.5)(-.25)+(.5)(-1.25)+(1.5)(3.75) = 8.5; sxx = 5
    assert l["a"] == pytest.approx(8.5 / 5)


def test_transform_eq8_bases():
    t = transform_slopes({"p": 0.5, "n": -2.0, "z": 0.0}, log_base=math.e)
    assert t["p"] == pytest.approx(0.5 / 1.5) and t["n"] == pytest.approx(-2 / 3) and t["z"] == 0.0
    t10 = transform_slopes({"p": 0.01, "q": 100.0}, log_base=10)
    assert t10["p"] == pytest.approx(1 / (1 + math.exp(2))) and t10["q"] == pytest.approx(1 / (1 + math.exp(-2)))


def test_clustering_expected_groups_and_canonical_order():
    vals = {"t1": 0.9, "t2": -0.5, "t3": 0.88, "t4": -0.52, "t5": 0.1}
    groups, rep = cluster_slopes(vals, 3, "average", order=list(vals))
    assert groups == [["t1", "t3"], ["t2", "t4"], ["t5"]]
    assert rep["found"] == 3 and rep["notes"] == []
    # the order of the input dict does not change the result
    g2, _ = cluster_slopes(dict(reversed(list(vals.items()))), 3, "single", order=list(vals))
    assert g2 == groups


def test_degenerate_fewer_distinct_than_g_and_constant_and_too_many():
    g, rep = cluster_slopes({"a": 0.1, "b": 0.1, "c": 0.5}, 3, order=["a", "b", "c"])
    assert g == [["a", "b"], ["c"]] and rep["found"] == 2 and "only 2 distinct" in rep["notes"][0]
    g, rep = cluster_slopes({"a": 0.2, "b": 0.2}, 2, order=["a", "b"])
    assert g == [["a", "b"]] and "all transformed slopes are equal" in rep["notes"][0]
    g, rep = cluster_slopes({"a": 0.2, "b": 0.3}, 5, order=["a", "b"])
    assert g == [["a"], ["b"]] and "only 2 tasks" in rep["notes"][0]
    # tied merge heights: 0, 1, 2 single linkage can not be cut into 2
    g, rep = cluster_slopes({"a": 0.0, "b": 1.0, "c": 2.0}, 2, "single", order=["a", "b", "c"])
    assert rep["found"] == 1 and "tied merge heights" in rep["notes"][-1]
    # constant curves -> zero slopes -> one group through the whole pipeline
    res = group_tasks(_trends({"a": [1, 1, 1], "b": [2, 2, 2], "c": [3, 3, 3]}), 2)
    assert res["groups"] == [["a", "b", "c"]] and res["slopes"] == {"a": 0.0, "b": 0.0, "c": 0.0}
    with pytest.raises(ValueError, match="task 'a' has 1 epoch"):
        group_tasks(_trends({"a": [1.0, None], "b": [1, 2]}), 2)
    with pytest.raises(ValueError, match="finite"):
        compute_slopes({"a": [1.0, float("nan")]})


def test_other_strategies():
    names = ["loss_rpn_cls", "loss_rpn_loc", "loss_nae_oim", "loss_fcos_cls", "loss_triplet", "loss_mine"]
    tr = _trends({n: [1.0, 2.0] for n in names})
    b = group_tasks(tr, 2, strategy="branch")["groups"]
    assert b == [["loss_rpn_cls", "loss_rpn_loc", "loss_nae_oim"], ["loss_fcos_cls", "loss_triplet"], ["loss_mine"]]
    s = group_tasks(tr, 3, strategy="semantic")["groups"]
    assert s == [["loss_rpn_cls", "loss_fcos_cls"], ["loss_rpn_loc"], ["loss_nae_oim", "loss_triplet"], ["loss_mine"]]
    r1 = group_tasks(tr, 3, strategy="random", seed=1)["groups"]
    assert r1 == group_tasks(tr, 3, strategy="random", seed=1)["groups"] and len(r1) == 3
    assert sorted(t for g in r1 for t in g) == sorted(names)
    assert any(group_tasks(tr, 3, strategy="random", seed=k)["groups"] != r1 for k in range(2, 6))
    m = group_tasks(tr, 2, strategy="manual", manual="loss_triplet,t1; loss_rpn_loc,t5,loss_fcos_cls,loss_mine")
    assert m["groups"] == [
        ["loss_rpn_cls", "loss_triplet"],
        ["loss_rpn_loc", "loss_nae_oim", "loss_fcos_cls", "loss_mine"],
    ]
    with pytest.raises(ValueError, match="missing"):
        parse_manual_groups("loss_rpn_cls", names)


def test_load_trends_errors(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"tasks": ["a"]}))
    with pytest.raises(ValueError, match="missing field 'gradient_magnitude'"):
        load_trends(str(p))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trends(str(tmp_path / "none.json"))


def test_tool_writes_outputs_and_phase2_yaml_merges(tmp_path, capsys):
    # t3 rises, the others fall at two speeds: the paper's "opposite trends" (Fig. 3)
    curves = {
        "loss_rpn_cls": [3.0, 2.0, 1.5],
        "loss_rpn_loc": [2.9, 2.0, 1.4],
        "loss_roi_box_reg": [1.0, 2.0, 4.0],
        "loss_nae_oim": [9.0, 5.0, 0.5],
        "loss_nae_det": [8.0, 4.5, 0.6],
    }
    tf = tmp_path / "trends.json"
    tf.write_text(json.dumps(_trends(curves)))
    out = tmp_path / "g"
    tool = _load_tool()
    assert (
        tool.main(["--trends", str(tf), "--num-groups", "3", "--log-base", "2.718281828459045", "--output", str(out)])
        == 0
    )
    res = json.loads((out / "groups.json").read_text())
    assert res["groups"] == [["loss_rpn_cls", "loss_rpn_loc"], ["loss_roi_box_reg"], ["loss_nae_oim", "loss_nae_det"]]
    assert res["slopes"]["loss_roi_box_reg"] == pytest.approx(1.5)
    assert res["transformed"]["loss_roi_box_reg"] == pytest.approx(1.5 / 2.5)
    assert res["settings"]["log_base"] == pytest.approx(math.e)
    assert (out / "gradient_trends.png").stat().st_size > 1000 and (out / "dendrogram.png").stat().st_size > 1000
    cfg = add_galw_config(get_cfg())
    cfg.merge_from_file(str(out / "galw_phase2.yaml"))
    assert cfg.GALW.STRATEGY == "galw" and [list(g) for g in cfg.GALW.GROUPS] == res["groups"]
    assert (
        tool.main(
            [
                "--trends",
                str(tf),
                "--num-groups",
                "2",
                "--strategy",
                "manual",
                "--manual",
                "loss_x",
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "unknown ['loss_x']" in capsys.readouterr().err
