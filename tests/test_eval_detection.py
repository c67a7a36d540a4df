"""Detection AP / recall of the person-search protocol: hand-computed cases."""

import numpy as np
import pytest

from galw_d2.data.protocol import GalleryImage
from galw_d2.evaluation import evaluate_detection, match_detections

G1, G2, G3 = [0, 0, 100, 100], [200, 0, 300, 100], [0, 0, 50, 50]


def det(boxes, scores):
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "feats": np.zeros((len(scores), 2), np.float32),
    }


def case():
    gt = {
        "a.jpg": GalleryImage("a.jpg", [G1, G2], [3, -1]),
        "b.jpg": GalleryImage("b.jpg", np.zeros((0, 4)), []),  # no GT: its detection is a FP
        "c.jpg": GalleryImage("c.jpg", [G3], [4]),  # no detections: its GT still counts
    }
    d = {
        # d0 IoU .9 with G1; d1 IoU .6 with G1 but G1's best is d0 -> FP; d2 IoU .55 with G2, score .4
        "a.jpg": det([[0, 0, 100, 90], [0, 0, 100, 60], [200, 0, 255, 100]], [0.9, 0.8, 0.4]),
        "b.jpg": det([[0, 0, 10, 10]], [0.7]),
    }
    return gt, d


def test_mutual_argmax_matching():
    assert match_detections(
        np.array([G1, G2]), np.array([[0, 0, 100, 90], [0, 0, 100, 60], [200, 0, 255, 100]])
    ).tolist() == [True, False, True]
    assert match_detections(np.zeros((0, 4)), np.array([G1])).tolist() == [False]
    assert match_detections(np.array([G1]), np.zeros((0, 4))).tolist() == []
    # IoU under 0.5 is no match even if mutual best
    assert match_detections(np.array([G1]), np.array([[0, 0, 100, 45]])).tolist() == [False]


def test_detection_ap_and_recall_hand_computed():
    gt, d = case()
    r = evaluate_detection(gt, d, det_thresh=0.5)
    # kept: .9 TP, .8 FP, .7 FP; recall 1/3; AP = 1 * 1/3
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["AP"] == pytest.approx(1 / 3)
    assert r["num_gt"] == 4 - 1 and r["num_det"] == 3
    r = evaluate_detection(gt, d, det_thresh=0.3)
    # .9 TP, .8 FP, .7 FP, .4 TP: AP = .5*1 + .5*2/4, recall 2/3
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["AP"] == pytest.approx(0.75 * 2 / 3)


def test_labeled_only_and_nothing_found():
    gt, d = case()
    r = evaluate_detection(gt, d, det_thresh=0.3, labeled_only=True)
    # G2 (pid -1) and b.jpg (no GT) are dropped: GT = G1, G3; dets of a.jpg vs G1: d0 TP, d1 FP, d2 FP
    assert r["recall"] == pytest.approx(1 / 2)
    assert r["AP"] == pytest.approx(1.0 * 0.5)
    r = evaluate_detection(gt, {}, det_thresh=0.5)
    assert r == {"AP": 0.0, "recall": 0.0, "num_gt": 3, "num_det": 0}
