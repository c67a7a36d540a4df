"""Search metrics of the standard protocol: hand-computed cases for every quirk, plus a loop reference."""

import numpy as np
import pytest

from galw_d2.data.protocol import GalleryImage, SearchProtocol, SearchQuery
from galw_d2.evaluation import average_precision, evaluate_search, iou_threshold, score_query, validate_results


def feat(s):
    """2-d unit feature with cosine similarity s to the query feature [1, 0]."""
    return [s, np.sqrt(1.0 - s * s)]


def dets(*items):
    """items: (box, score, sim) -> gallery entry."""
    if not items:
        return {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "feats": np.zeros((0,))}
    return {
        "boxes": np.array([i[0] for i in items], np.float32),
        "scores": np.array([i[1] for i in items], np.float32),
        "feats": np.array([feat(i[2]) for i in items], np.float32),
    }


Q = np.array([[1.0, 0.0]], np.float32)
GA, GC, GD = [10, 10, 60, 110], [0, 0, 20, 20], [5, 5, 55, 105]


# ------------------------------------------------------------------ average precision (sklearn's)
def test_average_precision_matches_sklearn_definition():
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8333333333)  # sklearn doc example
    # tied scores form one threshold: P = 1/2 at R = 1/2, then P = 2/3 at R = 1
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0, 1, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([1, 0, 0, 1], [0.3] * 4) == pytest.approx(0.5)
    assert average_precision([1, 1], [0.9, 0.1]) == pytest.approx(1.0)
    assert average_precision([0, 0], [0.9, 0.1]) == 0.0
    assert average_precision([], []) == 0.0


def test_average_precision_random_against_bruteforce():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        y[0] = 1
        s = rng.integers(0, 6, 30) / 5.0  # many ties
        ap = 0.0
        prev_r = 0.0
        for t in np.unique(s)[::-1]:
            sel = s >= t
            p, r = y[sel].sum() / sel.sum(), y[sel].sum() / y.sum()
            ap += (r - prev_r) * p
            prev_r = r
        assert average_precision(y, s) == pytest.approx(ap)


def test_iou_threshold_size_adaptive():
    assert iou_threshold(10, 10) == pytest.approx(100 / 400)
    assert iou_threshold(20, 20) == pytest.approx(400 / 900)
    assert iou_threshold(100, 200) == 0.5


# ------------------------------------------------------------------ CUHK-SYSU style explicit gallery
def explicit_case(duplicate=True):
    gallery = [("A.jpg", GA), ("B.jpg", None), ("C.jpg", GC)]
    if duplicate:
        gallery.append(("A.jpg", GA))
    gallery.append(("D.jpg", GD))
    proto = SearchProtocol(
        "cuhk_sysu",
        "TestG5",
        "explicit",
        gallery={},
        queries=[SearchQuery("q.jpg", [0, 0, 30, 80], pid=1, gallery=gallery)],
    )
    res = {
        # one TP per image: both overlap the GT, the more similar (0.8) is the TP, 0.6 is a FP
        "A.jpg": dets((GA, 0.9, 0.6), ([12, 10, 60, 110], 0.9, 0.8)),
        "B.jpg": dets(([0, 0, 10, 10], 0.9, 0.9), ([5, 5, 10, 10], 0.9, 0.1)),
        # IoU 400/850 = 0.47: over the adaptive threshold 0.444 of a 20x20 GT, under 0.5;
        # the 0.99 detection is under the score threshold
        "C.jpg": dets(([0, 0, 20, 42.5], 0.6, 0.7), (GC, 0.3, 0.99)),
        # D.jpg: no entry at all (no detections) but its person still counts
    }
    return proto, res


def test_explicit_gallery_every_quirk():
    proto, res = explicit_case()
    out = evaluate_search(
        proto, validate_results({"gallery": res, "queries": []})["gallery"], Q, det_thresh=0.5, return_per_query=True
    )
    # ranked: .9 (B, FP) .8 (A, TP) .7 (C, TP) .6 (A, FP) .1 (B, FP); AP = .5*.5 + .5*2/3; recall 2/4
    # (count_gt = A, C, A again, D = 4 listed entries with the person)
    assert out["per_query"]["count_gt"][0] == 4
    assert out["per_query"]["count_tp"][0] == 2
    assert out["mAP"] == pytest.approx((0.25 + 1 / 3) * 2 / 4)
    assert out["top1"] == 0.0 and out["top5"] == 1.0 and out["top10"] == 1.0
    assert out["per_query"]["first_tp_rank"][0] == 1


def test_explicit_without_duplicate_and_fixed_threshold_would_differ():
    proto, res = explicit_case(duplicate=False)
    out = evaluate_search(proto, validate_results({"gallery": res, "queries": []})["gallery"], Q, det_thresh=0.5)
    assert out["mAP"] == pytest.approx((0.25 + 1 / 3) * 2 / 3)
    # lowering the score threshold lets the 0.99 detection of C in: it becomes C's TP (more similar)
    out = evaluate_search(proto, validate_results({"gallery": res, "queries": []})["gallery"], Q, det_thresh=0.2)
    # ranked: .99 (C TP) .9 (B) .8 (A TP) .7 (C, FP now) .6 .1 -> AP = .5*1 + .5*2/3
    assert out["mAP"] == pytest.approx((0.5 + 0.5 * 2 / 3) * 2 / 3)
    assert out["top1"] == 1.0


def test_nothing_found_gives_zero_and_images_without_detections_count():
    proto, res = explicit_case()
    res = {"B.jpg": res["B.jpg"]}
    out = evaluate_search(
        proto, validate_results({"gallery": res, "queries": []})["gallery"], Q, det_thresh=0.5, return_per_query=True
    )
    assert out["mAP"] == 0.0 and out["top10"] == 0.0
    assert out["per_query"]["count_gt"][0] == 4
    # empty gallery results entirely: still well defined
    out = evaluate_search(proto, {}, Q)
    assert out["mAP"] == 0.0 and out["num_queries"] == 1


# ------------------------------------------------------------------ PRW style: all but query / other cameras
def prw_case():
    P = [0, 0, 50, 100]
    gal = {
        "Q.jpg": GalleryImage("Q.jpg", [P], [1], camera=1),
        "X.jpg": GalleryImage("X.jpg", [P, [100, 0, 150, 100]], [1, 7], camera=1),
        "Y.jpg": GalleryImage("Y.jpg", [P], [1], camera=2),
        "Z.jpg": GalleryImage("Z.jpg", [P], [-1], camera=2),
        "W.jpg": GalleryImage("W.jpg", [P], [1], camera=2),
    }
    res = {
        "Q.jpg": dets((P, 0.9, 0.99)),  # the query's own image: never searched
        "X.jpg": dets((P, 0.9, 0.5)),
        # Y: the most similar box misses the GT (IoU 1/3 < 0.5), the second one is the TP
        "Y.jpg": dets(([25, 0, 75, 100], 0.9, 0.9), ([0, 0, 50, 90], 0.9, 0.4)),
        "Z.jpg": dets((P, 0.9, 0.95)),
    }
    q = SearchQuery("Q.jpg", P, pid=1, camera=1)
    return gal, res, q


def test_all_but_query_rule():
    gal, res, q = prw_case()
    proto = SearchProtocol("prw", "standard", "all_but_query", gal, [q])
    out = evaluate_search(proto, validate_results({"gallery": res, "queries": []})["gallery"], Q, return_per_query=True)
    # ranked: .95 Z, .9 Y(FP), .5 X TP, .4 Y TP; AP = .5/3 + .5*.5; recall 2/3 (X, Y, W)
    assert out["per_query"]["count_gt"][0] == 3
    assert out["mAP"] == pytest.approx((0.5 / 3 + 0.25) * 2 / 3)
    assert out["top1"] == 0.0 and out["top5"] == 1.0
    assert out["per_query"]["first_tp_rank"][0] == 2
    tiny = evaluate_search(proto, validate_results({"gallery": res, "queries": []})["gallery"], Q, chunk_bytes=1)
    assert tiny["mAP"] == out["mAP"] and tiny["top1"] == out["top1"]


def test_other_cameras_rule():
    gal, res, q = prw_case()
    proto = SearchProtocol("prw", "cross_camera", "other_cameras", gal, [q])
    out = evaluate_search(proto, validate_results({"gallery": res, "queries": []})["gallery"], Q, return_per_query=True)
    # gallery Y, Z, W; ranked .95 Z, .9 Y FP, .4 Y TP; AP = 1/3, recall 1/2
    assert out["per_query"]["count_gt"][0] == 2
    assert out["mAP"] == pytest.approx(1 / 3 * 1 / 2)


def test_query_without_gt_is_left_out():
    gal, res, q = prw_case()
    q2 = SearchQuery("Q.jpg", [0, 0, 50, 100], pid=99, camera=1)
    proto = SearchProtocol("prw", "standard", "all_but_query", gal, [q, q2])
    out = evaluate_search(proto, validate_results({"gallery": res, "queries": []})["gallery"], np.repeat(Q, 2, 0))
    assert out["num_queries"] == 1 and out["num_queries_without_gt"] == 1
    assert out["mAP"] == pytest.approx((0.5 / 3 + 0.25) * 2 / 3)


def test_topk_ties_follow_gallery_order_and_ap_does_not():
    G = [0, 0, 40, 80]
    fp = dets(([100, 100, 140, 180], 0.9, 0.5))
    tp = dets((G, 0.9, 0.5))
    for order, top1 in ((["F.jpg", "T.jpg"], 0.0), (["T.jpg", "F.jpg"], 1.0)):
        gallery = [(n, G if n == "T.jpg" else None) for n in order]
        proto = SearchProtocol("cuhk_sysu", "t", "explicit", {}, [SearchQuery("q.jpg", G, 1, gallery=gallery)])
        out = evaluate_search(
            proto, validate_results({"gallery": {"F.jpg": fp, "T.jpg": tp}, "queries": []})["gallery"], Q
        )
        assert out["top1"] == top1
        assert out["mAP"] == pytest.approx(0.5)  # one threshold: P = 1/2, R = 1


def test_score_query_ranked_list():
    proto, res = explicit_case()
    r, table = score_query(proto, validate_results({"gallery": res, "queries": []})["gallery"], Q, 0)
    assert np.allclose(r.sims, [0.9, 0.8, 0.7, 0.6, 0.1], atol=1e-6)
    assert r.labels.tolist() == [0, 1, 1, 0, 0]
    assert [table.names[table.image[i]] for i in r.rows] == ["B.jpg", "A.jpg", "C.jpg", "A.jpg", "B.jpg"]


# ------------------------------------------------------------------ reference loop implementation
def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_explicit(proto, res, qf, thresh):
    aps, top1 = [], []
    for qi, q in enumerate(proto.queries):
        fq = qf[qi] / np.linalg.norm(qf[qi])
        y_true, y_score, seen, count_gt = [], [], set(), 0
        for name, gt in q.gallery:
            count_gt += gt is not None
            r = res.get(name)
            if r is None or name in seen:
                continue
            keep = r["scores"] >= thresh
            if not keep.any():
                continue
            seen.add(name)
            boxes, feats = r["boxes"][keep], r["feats"][keep]
            sim = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ fq
            label = [0] * len(sim)
            if gt is not None:
                thr = min(0.5, (gt[2] - gt[0]) * (gt[3] - gt[1]) / ((gt[2] - gt[0] + 10) * (gt[3] - gt[1] + 10)))
                for j in np.argsort(-sim, kind="stable"):
                    if _iou(boxes[j], gt) >= thr:
                        label[j] = 1
                        break
            y_true += label
            y_score += list(sim)
        tp = sum(y_true)
        aps.append(0.0 if tp == 0 else average_precision(y_true, y_score) * tp / count_gt)
        o = np.argsort(-np.array(y_score), kind="stable")
        top1.append(float(len(o) > 0 and np.array(y_true)[o][0] == 1))
    return np.mean(aps), np.mean(top1)


def random_explicit(rng, n_img=30, n_q=12, d=8, dup=True):
    names = [f"g{i}.jpg" for i in range(n_img)]
    queries = []
    res = {}
    for n in names:
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 200, (k, 2))
        wh = rng.uniform(5, 60, (k, 2))
        res[n] = {
            "boxes": np.concatenate([xy, xy + wh], 1).astype(np.float32),
            "scores": rng.uniform(0, 1, k).astype(np.float32),
            "feats": rng.normal(size=(k, d)).astype(np.float32),
        }
    for qi in range(n_q):
        sel = rng.choice(n_img, 10, replace=False)
        gallery = []
        for j, g in enumerate(sel):
            n = names[g]
            if j < 3 and len(res[n]["boxes"]):
                b = res[n]["boxes"][0] + rng.normal(0, 3, 4).astype(np.float32)
                gallery.append((n, b))
            elif j < 4:
                gallery.append((n, np.array([0, 0, 12, 30], np.float32)))
            else:
                gallery.append((n, None))
        if dup:
            gallery.append(gallery[0])
        queries.append(SearchQuery("q.jpg", [0, 0, 10, 10], pid=qi, gallery=gallery))
    return SearchProtocol("cuhk_sysu", "rand", "explicit", {}, queries), res


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True), (3, True)])
def test_against_loop_reference_and_chunking(seed, ties):
    rng = np.random.default_rng(seed)
    proto, res = random_explicit(rng)
    qf = rng.normal(size=(len(proto.queries), 8)).astype(np.float32)
    if ties:  # features from 3 directions only: similarities tie exactly, many TPs tie with FPs
        eye = np.eye(8, dtype=np.float32)
        qf = eye[rng.integers(0, 3, len(qf))]
        for r in res.values():
            r["feats"] = eye[rng.integers(0, 3, len(r["feats"]))]
    gal = validate_results({"gallery": res, "queries": []})["gallery"]
    ref_map, ref_top1 = reference_explicit(proto, gal, qf, 0.3)
    assert ref_map > 0
    a = evaluate_search(proto, gal, qf, det_thresh=0.3)
    b = evaluate_search(proto, gal, qf, det_thresh=0.3, chunk_bytes=1)  # one query per block
    assert a["mAP"] == pytest.approx(ref_map, abs=1e-6)
    assert a["top1"] == pytest.approx(ref_top1)
    assert a == b


# ------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors():
    proto, res = explicit_case()
    bad = dict(res, **{"B.jpg": dict(res["B.jpg"], feats=np.array([[np.nan, 0], [1, 0]], np.float32))})
    with pytest.raises(ValueError, match=r"B\.jpg.*'feats'.*NaN"):
        validate_results({"gallery": bad, "queries": []})
    bad = dict(res, **{"B.jpg": dict(res["B.jpg"], feats=np.ones((2, 3), np.float32))})
    with pytest.raises(ValueError, match="feature size 3 differs from 2"):
        validate_results({"gallery": bad, "queries": []})
    bad = dict(res, **{"B.jpg": dict(res["B.jpg"], scores=np.ones(3, np.float32))})
    with pytest.raises(ValueError, match="2 boxes but 3 scores"):
        validate_results({"gallery": bad, "queries": []})
    gal = validate_results({"gallery": res, "queries": []})["gallery"]
    with pytest.raises(ValueError, match="size 3 but gallery features have size 2"):
        evaluate_search(proto, gal, np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected shape \(1, 2\)"):
        evaluate_search(proto, gal, np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_search(proto, gal, np.array([[np.nan, 1]], np.float32))
    # an empty detection set is fine, in any of the usual shapes
    ok = validate_results(
        {
            "gallery": {"A.jpg": dets(), "B.jpg": {"boxes": np.zeros((0, 4)), "scores": [], "feats": np.zeros((0, 2))}},
            "queries": [{"image": "q.jpg", "box": [0, 0, 1, 1], "feat": [1, 0]}],
        }
    )
    assert ok["gallery"]["A.jpg"]["feats"].shape == (0, 2)
