"""Results files and scoring refuse partial / degenerate input; tied or collapsed embeddings are reported.

Each test reproduces one silent case of the reliability table (docs/reliability.md): before the fix
it scored a believable number with exit 0.
"""

import logging
import os
import sys

import numpy as np
import pytest

from galw_d2.data.protocol import GalleryImage, SearchProtocol, SearchQuery
from galw_d2.evaluation import evaluate_search, load_results, save_results, validate_results
from galw_d2.evaluation.detection import evaluate_detection

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
P = [0, 0, 50, 100]


def f(s):
    """2-d unit feature with cosine similarity s to the query feature [1, 0]."""
    return [s, float(np.sqrt(1 - s * s))]


def det(*items):
    """items: (box, score, sim) -> one gallery entry."""
    if not items:
        return {
            "boxes": np.zeros((0, 4), np.float32),
            "scores": np.zeros(0, np.float32),
            "feats": np.zeros((0, 2), np.float32),
        }
    return {
        "boxes": np.array([i[0] for i in items], np.float32),
        "scores": np.array([i[1] for i in items], np.float32),
        "feats": np.array([f(i[2]) for i in items], np.float32),
    }


def protocol(names=("Q.jpg", "A.jpg", "B.jpg", "C.jpg", "D.jpg"), pids=(1, 1, 7, 7, 1)):
    gal = {n: GalleryImage(n, [P], [p], camera=1 + (i % 2)) for i, (n, p) in enumerate(zip(names, pids))}
    return SearchProtocol("prw", "standard", "all_but_query", gal, [SearchQuery("Q.jpg", P, pid=1, camera=1)])


def complete_results():
    gallery = {
        "Q.jpg": det((P, 0.9, 0.99)),
        "A.jpg": det((P, 0.9, 0.8)),
        "B.jpg": det((P, 0.9, 0.8)),
        "C.jpg": det((P, 0.9, 0.9)),
        "D.jpg": det((P, 0.9, 0.5)),
    }
    return {"gallery": gallery, "queries": [{"image": "Q.jpg", "box": P, "feat": [1.0, 0.0]}]}


# ------------------------------------------------------------------ results file vs protocol
def test_missing_gallery_images_are_an_error_naming_them():
    res = complete_results()
    del res["gallery"]["A.jpg"], res["gallery"]["D.jpg"]
    with pytest.raises(ValueError, match=r"r\.pth: 2 of 5 protocol gallery images have no entry.*'A\.jpg', 'D\.jpg'"):
        validate_results(res, protocol=protocol(), source="r.pth")
    # opting in scores them as images without detections, and says how many were missing
    ok = validate_results(res, protocol=protocol(), source="r.pth", allow_partial=True)
    assert ok["missing_gallery_images"] == 2
    # an image without detections is an entry with N = 0, not a missing key
    res["gallery"]["A.jpg"] = det()
    res["gallery"]["D.jpg"] = det()
    assert validate_results(res, protocol=protocol())["missing_gallery_images"] == 0


def test_empty_gallery_is_an_error_even_when_partial_is_allowed():
    res = complete_results()
    res["gallery"] = {}
    for allow in (False, True):
        with pytest.raises(ValueError, match=r"r\.pth: 'gallery' is empty"):
            validate_results(res, protocol=protocol(), source="r.pth", allow_partial=allow)


def test_path_style_and_unknown_image_keys():
    res = complete_results()
    res["gallery"]["frames/A.jpg"] = res["gallery"].pop("A.jpg")
    with pytest.raises(ValueError, match=r"r\.pth: gallery image 'frames/A\.jpg'.*bare file name.*'A\.jpg'"):
        validate_results(res, source="r.pth")
    res = complete_results()
    res["gallery"]["nobody.jpg"] = det((P, 0.9, 0.3))
    res["gallery"]["other.jpg"] = det()
    with pytest.raises(ValueError, match=r"r\.pth: 2 gallery images are not in protocol prw/standard.*'nobody\.jpg'"):
        validate_results(res, protocol=protocol(), source="r.pth", allow_partial=True)


def test_inverted_boxes_and_out_of_range_scores_are_errors_naming_the_detection():
    res = complete_results()
    res["gallery"]["B.jpg"]["boxes"] = np.array([[50, 0, 0, 100]], np.float32)
    with pytest.raises(
        ValueError,
        match=r"gallery image 'B\.jpg': 'boxes' has x2 < x1 or y2 < y1 in 1 of 1 "
        r"detections \(first: detection 0, \[50.0, 0.0, 0.0, 100.0\]\)",
    ):
        validate_results(res, source="r.pth")
    res = complete_results()
    res["gallery"]["C.jpg"]["scores"] = np.array([2.5], np.float32)  # logits instead of probabilities
    with pytest.raises(
        ValueError,
        match=r"gallery image 'C\.jpg': 'scores' must be detection probabilities in "
        r"\[0, 1\]; 1 of 1 are not \(first: detection 0, 2\.5\)",
    ):
        validate_results(res, source="r.pth")
    res = complete_results()
    res["queries"][0]["box"] = [0, 100, 50, 0]
    with pytest.raises(ValueError, match=r"query 0 \(Q\.jpg\): 'box' has x2 < x1 or y2 < y1"):
        validate_results(res, source="r.pth")


@pytest.mark.parametrize("thresh", [float("nan"), 1.5, 1.0, -0.1, float("inf")])
def test_det_thresh_must_be_finite_in_unit_interval(thresh):
    res = validate_results(complete_results())
    with pytest.raises(ValueError, match=r"det_thresh .* expected a finite number in \[0, 1\)"):
        evaluate_search(protocol(), res["gallery"], np.array([[1.0, 0.0]], np.float32), det_thresh=thresh)
    with pytest.raises(ValueError, match=r"det_thresh"):
        evaluate_detection(protocol().gallery, res["gallery"], det_thresh=thresh)


def test_evaluate_search_tool_rejects_bad_threshold(tmp_path, capsys):
    sys.path.insert(0, TOOLS)
    import evaluate_search as tool

    res = complete_results()
    del res["gallery"]["A.jpg"]
    path = save_results(str(tmp_path / "r.pth"), res)
    with pytest.raises(SystemExit) as e:
        tool.main(["--dataset", "prw", "--root", str(tmp_path), "--results", path, "--det-thresh", "nan"])
    assert e.value.code == 2 and "--det-thresh" in capsys.readouterr().err


# ------------------------------------------------------------------ unreadable results files
def test_empty_and_truncated_results_files_name_the_path(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"results file {empty}: .*0 bytes"):
        load_results(str(empty))
    good = save_results(str(tmp_path / "good.pth"), complete_results())
    data = open(good, "rb").read()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"results file {trunc}: cannot be read .*truncated"):
        load_results(str(trunc))
    text = tmp_path / "text.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match=rf"results file {text}: cannot be read"):
        load_results(str(text))


# ------------------------------------------------------------------ ties and collapsed embeddings
def tie_case():
    """Query person 1 in A and D, person 7 in B; A, B, D all at similarity 0.7 (exact tie)."""
    proto = protocol(names=("Q.jpg", "A.jpg", "B.jpg", "D.jpg"), pids=(1, 1, 7, 1))
    gallery = {
        "Q.jpg": det((P, 0.9, 0.99)),
        "A.jpg": det((P, 0.9, 0.7)),
        "B.jpg": det((P, 0.9, 0.7)),
        "D.jpg": det((P, 0.9, 0.7)),
    }
    return proto, validate_results({"gallery": gallery, "queries": []})["gallery"]


def test_pessimistic_tie_rule_hand_computed():
    proto, gal = tie_case()
    q = np.array([[1.0, 0.0]], np.float32)
    std = evaluate_search(proto, gal, q, return_per_query=True)
    pes = evaluate_search(proto, gal, q, tie_rule="pessimistic", return_per_query=True)
    # standard: gallery order A (TP), B (FP), D (TP): top-1 hit; AP = one threshold, P = 2/3 at R = 1
    assert std["top1"] == 1.0 and std["mAP"] == pytest.approx(2 / 3)
    assert std["per_query"]["first_tp_rank"][0] == 0
    # pessimistic: B (FP) first, then A, D: P = 1/2 at R = 1/2, P = 2/3 at R = 1 -> AP = 7/12, top-1 miss
    assert pes["top1"] == 0.0 and pes["top5"] == 1.0 and pes["mAP"] == pytest.approx(7 / 12)
    assert pes["per_query"]["first_tp_rank"][0] == 1
    assert std["tie_rule"] == "standard" and pes["tie_rule"] == "pessimistic"
    # both rules are always reported side by side
    for out in (std, pes):
        assert out["ties"]["standard"]["top1"] == 1.0 and out["ties"]["pessimistic"]["top1"] == 0.0
        assert out["ties"]["pessimistic"]["mAP"] == pytest.approx(7 / 12)
        assert out["ties"]["tied_top1_fraction"] == 1.0 and out["ties"]["affected_fraction"] == 1.0
    with pytest.raises(ValueError, match="tie_rule 'optimistic'"):
        evaluate_search(proto, gal, q, tie_rule="optimistic")


def test_pessimistic_rule_equals_standard_without_ties():
    proto = protocol()
    gal = validate_results(complete_results())["gallery"]
    q = np.array([[1.0, 0.0]], np.float32)
    # ranked C .9 (FP), A .8 (TP), B .8 (FP), D .5 (TP): A and B tie; pessimistic puts B first
    std = evaluate_search(proto, gal, q, return_per_query=True)
    pes = evaluate_search(proto, gal, q, tie_rule="pessimistic", return_per_query=True)
    assert std["per_query"]["first_tp_rank"][0] == 1 and pes["per_query"]["first_tp_rank"][0] == 2
    # one TP in the tie: sklearn's AP already takes precision at the end of the tie group
    assert std["mAP"] == pytest.approx(pes["mAP"]) == pytest.approx(0.5 * (1 / 3) + 0.5 * (2 / 4))
    gal["B.jpg"]["feats"] = np.array([f(0.75)], np.float32)  # break the tie
    std = evaluate_search(proto, gal, q)
    pes = evaluate_search(proto, gal, q, tie_rule="pessimistic")
    assert {k: std[k] for k in ("mAP", "top1", "top5")} == {k: pes[k] for k in ("mAP", "top1", "top5")}
    assert std["ties"]["affected_fraction"] == 0.0 and std["ties"]["warning"] is None


def test_constant_features_are_reported_as_collapsed(caplog):
    """Every similarity tied: the standard rule hands out top-k by gallery order (CUHK-SYSU TestG lists
    put the query person's images first); the evaluation must say so loudly."""
    G = [0, 0, 40, 80]
    gallery_list = [("T1.jpg", G), ("T2.jpg", G)] + [(f"F{i}.jpg", None) for i in range(8)]
    proto = SearchProtocol("cuhk_sysu", "TestG10", "explicit", {}, [SearchQuery("q.jpg", G, 1, gallery=gallery_list)])
    const = [0.6, 0.8]
    gal = {
        n: {
            "boxes": np.array([G], np.float32),
            "scores": np.array([0.9], np.float32),
            "feats": np.array([const], np.float32),
        }
        for n, _ in gallery_list
    }
    gal = validate_results({"gallery": gal, "queries": []})["gallery"]
    with caplog.at_level(logging.WARNING, logger="galw_d2.evaluation.search"):
        out = evaluate_search(proto, gal, np.array([const], np.float32))
    assert out["top1"] == 1.0  # the standard numbers are kept (the published code ties the same way)
    t = out["ties"]
    assert t["collapsed"] and t["feature_spread"] == pytest.approx(0.0, abs=1e-3)
    assert t["pessimistic"]["top1"] == 0.0 and t["pessimistic"]["top5"] == 0.0 and t["pessimistic"]["top10"] == 1.0
    # AP with every score tied = one threshold: P = 2/10
    assert out["mAP"] == pytest.approx(0.2) and t["pessimistic"]["mAP"] == pytest.approx((1 / 9 + 2 / 10) / 2)
    assert "collapsed" in t["warning"] and "pessimistic" in t["warning"]
    assert any("collapsed" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_evaluator_output_carries_tie_fields():
    from galw_d2.evaluation import evaluate_results

    proto, gal = tie_case()
    res = {"gallery": gal, "queries": [{"image": "Q.jpg", "box": P, "feat": [1.0, 0.0]}]}
    out = evaluate_results(proto, res)
    assert out["search"]["ties"]["affected_fraction"] == 1.0
    out = evaluate_results(proto, res, tie_rule="pessimistic")
    assert out["search"]["top1"] == 0.0


def test_person_search_evaluator_validates_threshold_and_reports_ties():
    from detectron2.config import get_cfg

    from galw_d2 import add_galw_config
    from galw_d2.evaluation import PersonSearchEvaluator

    cfg = add_galw_config(get_cfg())
    for bad in (float("nan"), 1.5):
        cfg.TEST.PERSON_SEARCH.DET_THRESH = bad
        with pytest.raises(ValueError, match="det_thresh"):
            PersonSearchEvaluator("prw_test", cfg, protocol=protocol(), distributed=False)
    with pytest.raises(ValueError, match="tie_rule 'best'"):
        PersonSearchEvaluator("prw_test", protocol=protocol(), tie_rule="best")
    # the tie case through the evaluator: diagnostics are float settings, the other rule's metrics too
    proto, gal = tie_case()
    ev = PersonSearchEvaluator("prw_test", protocol=proto, distributed=False)
    ev._gallery = gal
    ev._queries = {
        0: {
            "image": "Q.jpg",
            "det": gal["Q.jpg"],
            "embed_boxes": np.array([P], np.float32),
            "box_embeddings": np.array([[1.0, 0.0]], np.float32),
        }
    }
    out = ev.evaluate()["search"]
    assert out["top1"] == 1.0 and out["top1-pessimistic-ties"] == 0.0
    assert out["tie-affected-fraction"] == 1.0 and out["tied-top1-fraction"] == 1.0
    assert out["mAP-pessimistic-ties"] == pytest.approx(7 / 12)
    assert all(isinstance(v, float) for v in out.values())


def test_evaluate_search_command_line_prints_one_line_errors(tmp_path, capsys, monkeypatch):
    """The command line ends with 'evaluate_search: error: ...' and exit 1, not a traceback."""
    sys.path.insert(0, TOOLS)
    import evaluate_search as tool

    empty = tmp_path / "r.pth"
    empty.write_bytes(b"")
    root = tmp_path / "prw"
    root.mkdir()
    assert tool.cli(["--dataset", "prw", "--root", str(root), "--results", str(empty)]) == 1
    assert capsys.readouterr().err.startswith("evaluate_search: error: PRW: missing file")
    res = complete_results()
    del res["gallery"]["A.jpg"]
    # with a protocol that loads: the results file itself is refused by name
    import galw_d2.data.datasets.prw as prw

    monkeypatch.setattr(prw, "load_prw_protocol", lambda root, cross_camera=False, **kw: protocol())
    path = save_results(str(tmp_path / "partial.pth"), res)
    assert tool.cli(["--dataset", "prw", "--root", str(root), "--results", path]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"evaluate_search: error: {path}: 1 of 5 protocol gallery images have no entry")
    assert tool.cli(["--dataset", "prw", "--root", str(root), "--results", str(empty)]) == 1
    assert f"results file {empty}: the file is empty" in capsys.readouterr().err
    assert tool.cli(["--dataset", "prw", "--root", str(root), "--results", path, "--allow-partial"]) == 0
    assert "1 protocol gallery images are missing" in capsys.readouterr().err
