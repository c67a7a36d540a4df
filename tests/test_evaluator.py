"""PersonSearchEvaluator under detectron2's inference_on_dataset, printing, EvalHook and BestCheckpointer."""

import logging

import numpy as np
import pytest
import torch
from detectron2.engine import hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from galw_d2.data.protocol import GalleryImage, SearchProtocol, SearchQuery
from galw_d2.evaluation import PersonSearchEvaluator, evaluate_results, load_results

P = [0, 0, 50, 100]


def f(s):
    return [s, float(np.sqrt(1 - s * s))]


def protocol():
    gal = {
        "Q.jpg": GalleryImage("Q.jpg", [P], [1], camera=1),
        "X.jpg": GalleryImage("X.jpg", [P, [100, 0, 150, 100]], [1, 7], camera=1),
        "Y.jpg": GalleryImage("Y.jpg", [P], [1], camera=2),
        "Z.jpg": GalleryImage("Z.jpg", [P], [-1], camera=2),
        "W.jpg": GalleryImage("W.jpg", [P], [1], camera=2),
    }
    return SearchProtocol("prw", "standard", "all_but_query", gal, [SearchQuery("Q.jpg", P, pid=1, camera=1)])


# model outputs per gallery image: (boxes, scores, sims to [1, 0])
DETS = {
    "Q.jpg": ([P], [0.9], [0.99]),
    "X.jpg": ([P], [0.9], [0.5]),
    "Y.jpg": ([[25, 0, 75, 100], [0, 0, 50, 90]], [0.9, 0.9], [0.9, 0.4]),
    "Z.jpg": ([P], [0.9], [0.95]),
    "W.jpg": ([], [], []),
}
STANDARD_MAP = (0.5 / 3 + 0.25) * 2 / 3  # hand-computed in test_eval_search.test_all_but_query_rule
# upper bound: embedding of each GT box (sims), in GalleryImage box order
GT_SIMS = {"Q.jpg": [0.99], "X.jpg": [0.5, 0.2], "Y.jpg": [0.9], "Z.jpg": [0.95], "W.jpg": [0.1]}


class FakeModel(nn.Module):
    """Fixed outputs by image name, in the format of docs/DESIGN.md."""

    def __init__(self, query_box_sim=1.0, query_dets=None):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.query_box_sim, self.query_dets = query_box_sim, query_dets

    def forward(self, batched_inputs):
        outs = []
        for x in batched_inputs:
            name = x["image_name"]
            boxes, scores, sims = DETS[name] if not x.get("is_query") else (self.query_dets or DETS[name])
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
            inst.embeddings = torch.tensor([f(s) for s in sims], dtype=torch.float32).reshape(-1, 2)
            out = {"instances": inst}
            if "embed_boxes" in x:
                if x.get("is_query"):
                    out["box_embeddings"] = torch.tensor([f(self.query_box_sim)])
                else:
                    out["box_embeddings"] = torch.tensor([f(s) for s in GT_SIMS[name]])
            outs.append(out)
        return outs


def inputs(upper_bound=False):
    pr = protocol()
    recs = []
    for i, (n, g) in enumerate(pr.gallery.items()):
        r = {"image_name": n, "file_name": f"/nowhere/{n}", "image_id": i, "height": 200, "width": 300}
        if upper_bound:
            r["embed_boxes"] = torch.as_tensor(g.boxes)
        recs.append(r)
    recs.append(
        {
            "image_name": "Q.jpg",
            "file_name": "/nowhere/Q.jpg",
            "image_id": 99,
            "height": 200,
            "width": 300,
            "is_query": True,
            "query_index": 0,
            "embed_boxes": torch.tensor([P], dtype=torch.float32),
        }
    )
    return [[r] for r in recs]  # batch size 1


def test_inference_on_dataset_box_mode_printing_and_hooks(tmp_path, caplog):
    ev = PersonSearchEvaluator(
        "prw_test", output_dir=str(tmp_path), protocol=protocol(), save_results=True, det_thresh=0.5, distributed=False
    )
    res = inference_on_dataset(FakeModel(query_box_sim=1.0), inputs(), ev)
    assert set(res) == {"search", "detection"}
    assert res["search"]["mAP"] == pytest.approx(STANDARD_MAP)
    assert res["search"]["top1"] == 0.0 and res["search"]["top5"] == 1.0
    assert res["search"]["det-thresh"] == 0.5 and res["search"]["query-mode-best-iou"] == 0.0
    # detection: kept dets Q .9 TP, X .9 TP, Y two (IoU .33 and .9 with P: the second is the TP), Z TP; GT = 6
    assert res["detection"]["recall"] == pytest.approx(4 / 6)
    assert ev.settings["protocol"] == "prw/standard" and ev.settings["query_mode"] == "box"
    # detectron2's printing and EvalHook's float check / storage, BestCheckpointer's metric name
    with caplog.at_level(logging.INFO):
        print_csv_format(res)
    assert "copypaste: mAP,top1,top5,top10" in caplog.text
    assert all(isinstance(float(v), float) for v in flatten_results_dict(res).values())
    with EventStorage(0) as storage:
        hook = hooks.EvalHook(1, lambda: res)
        hook.trainer = type("T", (), {"storage": storage, "iter": 0, "max_iter": 10})()
        hook._do_eval()
        assert storage.latest()["search/mAP"][0] == pytest.approx(STANDARD_MAP)
    # the saved-results file re-scores to the same numbers
    saved = load_results(str(tmp_path / "search_results.pth"), protocol=protocol())
    assert saved["settings"]["det_thresh"] == 0.5
    again = evaluate_results(protocol(), saved, det_thresh=0.5)
    assert again["search"]["mAP"] == pytest.approx(STANDARD_MAP)
    assert again["detection"]["recall"] == pytest.approx(4 / 6)


def test_best_iou_query_mode():
    # the query image's detections: the one on the query box has the [1, 0] feature; the box embedding is off
    qdets = ([P, [200, 0, 260, 100]], [0.3, 0.9], [1.0, 0.0])
    box = PersonSearchEvaluator("prw_test", protocol=protocol(), query_mode="box", distributed=False)
    best = PersonSearchEvaluator("prw_test", protocol=protocol(), query_mode="best_iou", distributed=False)
    r_box = inference_on_dataset(FakeModel(query_box_sim=0.0, query_dets=qdets), inputs(), box)
    r_best = inference_on_dataset(FakeModel(query_box_sim=0.0, query_dets=qdets), inputs(), best)
    assert r_best["search"]["mAP"] == pytest.approx(STANDARD_MAP)
    assert r_best["search"]["query-mode-best-iou"] == 1.0 and r_best["search"]["query-fallbacks"] == 0.0
    assert r_box["search"]["mAP"] != pytest.approx(STANDARD_MAP)
    # no overlapping detection: falls back to the box embedding, and says so
    fb = PersonSearchEvaluator("prw_test", protocol=protocol(), query_mode="best_iou", distributed=False)
    r_fb = inference_on_dataset(
        FakeModel(query_box_sim=1.0, query_dets=([[200, 0, 260, 100]], [0.9], [0.0])), inputs(), fb
    )
    assert r_fb["search"]["mAP"] == pytest.approx(STANDARD_MAP) and r_fb["search"]["query-fallbacks"] == 1.0


def test_upper_bound_uses_gt_boxes():
    ev = PersonSearchEvaluator("prw_test", protocol=protocol(), upper_bound=True, distributed=False)
    res = inference_on_dataset(FakeModel(), inputs(upper_bound=True), ev)
    # ranked GT boxes: .95 Z, .9 Y TP, .5 X TP, .2 X, .1 W TP -> AP = (1/2 + 2/3 + 3/5) / 3, recall 3/3
    assert res["search"]["mAP"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert res["search"]["upper-bound"] == 1.0 and "detection" not in res


def test_config_and_errors():
    from detectron2.config import get_cfg

    from galw_d2 import add_galw_config

    cfg = add_galw_config(get_cfg())
    cfg.TEST.PERSON_SEARCH.QUERY_MODE = "best_iou"
    cfg.TEST.PERSON_SEARCH.DET_THRESH = 0.2
    ev = PersonSearchEvaluator("prw_test", cfg, protocol=protocol(), distributed=False)
    assert ev.query_mode == "best_iou" and ev.det_thresh == 0.2 and ev.gallery_size == 100
    with pytest.raises(ValueError, match="query_mode 'nope'"):
        PersonSearchEvaluator("prw_test", query_mode="nope", protocol=protocol())
    ev = PersonSearchEvaluator("prw_test", protocol=protocol(), distributed=False)
    ev.reset()
    ev.process(*_gallery_only())
    with pytest.raises(ValueError, match="1 of 1 protocol queries were not processed"):
        ev.evaluate()


def _gallery_only():
    recs = [b[0] for b in inputs()[:-1]]
    return recs, FakeModel()(recs)


# ------------------------------------------------------------------ the re-scoring tool on real loaders (SynthPS)
def _oracle_results(protocol, drop=(), empty=()):
    """GT boxes as detections, one-hot-by-pid features (unlabeled: their own direction); images in
    ``drop`` get no entry, images in ``empty`` an entry without detections."""
    pids = sorted(
        {int(p) for g in protocol.gallery.values() for p in g.pids if p >= 0} | {q.pid for q in protocol.queries}
    )
    col = {p: i for i, p in enumerate(pids)}
    dim = len(pids) + sum(int((g.pids < 0).sum()) for g in protocol.gallery.values()) + 1
    extra = len(pids)
    gallery = {}
    for n, g in protocol.gallery.items():
        if n in drop:
            continue
        feats = np.zeros((len(g.pids), dim), np.float32)
        for j, p in enumerate(g.pids):
            if p >= 0:
                feats[j, col[int(p)]] = 1
            else:
                feats[j, extra] = 1
                extra += 1
        gallery[n] = {"boxes": g.boxes, "scores": np.ones(len(g.pids), np.float32), "feats": feats}
        if n in empty:
            gallery[n] = {
                "boxes": np.zeros((0, 4), np.float32),
                "scores": np.zeros(0, np.float32),
                "feats": np.zeros((0, dim), np.float32),
            }
    queries = []
    for q in protocol.queries:
        v = np.zeros(dim, np.float32)
        v[col[q.pid]] = 1
        queries.append({"image": q.image, "box": q.box, "feat": v})
    return {"gallery": gallery, "queries": queries}


@pytest.mark.parametrize("fmt,gsize", [("cuhk_sysu", -1), ("cuhk_sysu", 50), ("prw", None)])
def test_evaluate_search_tool_on_synthps(synthps_tiny, tmp_path, fmt, gsize):
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import evaluate_search

    from galw_d2.data import load_cuhk_sysu_protocol, load_prw_protocol
    from galw_d2.evaluation import save_results

    root = synthps_tiny[fmt]
    proto = load_cuhk_sysu_protocol(root, gallery_size=gsize) if fmt == "cuhk_sysu" else load_prw_protocol(root)
    assert proto.rule == ("explicit" if gsize == 50 else "all_but_query")
    path = save_results(str(tmp_path / "r.pth"), _oracle_results(proto))
    extra = ["--gallery-size", str(gsize)] if fmt == "cuhk_sysu" else []
    out = evaluate_search.main(
        ["--dataset", fmt, "--root", root, "--results", path, "--json", str(tmp_path / "o.json")] + extra
    )
    # perfect detections and features: every query finds every image of its person
    assert out["search"]["mAP"] == pytest.approx(1.0) and out["search"]["top1"] == 1.0
    assert out["detection"]["recall"] == 1.0 and out["detection"]["AP"] == pytest.approx(1.0)
    assert json.load(open(tmp_path / "o.json"))["settings"]["det_thresh"] == 0.5
    # no detections in one image holding query 0's person: its queries' recall drops by 1 / count_gt
    q0 = proto.queries[0]
    holder = next(
        n
        for n, g in proto.gallery.items()
        if n != q0.image
        and q0.pid in g.pids
        and (proto.rule != "explicit" or n in {m for m, b in q0.gallery if b is not None})
    )
    path = save_results(str(tmp_path / "r2.pth"), _oracle_results(proto, empty={holder}))
    out2 = evaluate_search.main(["--dataset", fmt, "--root", root, "--results", path] + extra)
    assert out2["settings"]["missing_gallery_images"] == 0
    # the same image without an entry at all: a partial file is refused, or scored the same when allowed
    path = save_results(str(tmp_path / "r3.pth"), _oracle_results(proto, drop={holder}))
    with pytest.raises(
        ValueError,
        match=rf"r3\.pth: 1 of {len(proto.gallery)} protocol gallery images have no "
        rf"entry \(e\.g\. '{holder}'\)",
    ):
        evaluate_search.main(["--dataset", fmt, "--root", root, "--results", path] + extra)
    out3 = evaluate_search.main(["--dataset", fmt, "--root", root, "--results", path, "--allow-partial"] + extra)
    assert out3["settings"]["missing_gallery_images"] == 1
    assert out3["search"] == out2["search"]
    expect = []
    for q in proto.queries:
        if proto.rule == "explicit":
            imgs = [n for n, b in q.gallery if b is not None]
        else:
            imgs = [n for n, g in proto.gallery.items() if n != q.image and q.pid in g.pids]
        expect.append((len(imgs) - (holder in imgs)) / len(imgs) if imgs else None)
    expect = [e for e in expect if e is not None]
    assert out2["search"]["mAP"] == pytest.approx(np.mean(expect))


def test_plots(tmp_path):
    from PIL import Image

    from galw_d2.evaluation import validate_results
    from galw_d2.evaluation.plots import plot_map_vs_gallery_size, plot_topk_search

    p = plot_map_vs_gallery_size(
        {"GALW": {50: 0.95, 100: 0.94, 4000: 0.8, -1: 0.7}, "NAE": {50: 0.93, 100: 0.92}}, str(tmp_path / "fig4.png")
    )
    assert Image.open(p).size[0] > 100
    for n in protocol().gallery:
        Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(tmp_path / n)
    gal = {
        n: {
            "boxes": np.array(b, np.float32).reshape(-1, 4),
            "scores": np.array(s, np.float32),
            "feats": np.array([f(x) for x in v], np.float32).reshape(-1, 2),
        }
        for n, (b, s, v) in DETS.items()
    }
    res = validate_results({"gallery": gal, "queries": []})
    p = plot_topk_search(
        protocol(),
        res["gallery"],
        np.array([[1.0, 0.0]], np.float32),
        [0],
        str(tmp_path),
        str(tmp_path / "fig5.png"),
        k=3,
    )
    assert Image.open(p).size[0] > 100
    with pytest.raises(ValueError, match="no curves"):
        plot_map_vs_gallery_size({}, str(tmp_path / "x.png"))


def test_gathers_predictions_of_every_rank(monkeypatch):
    from detectron2.utils import comm

    recs = [b[0] for b in inputs()]
    model = FakeModel(query_box_sim=1.0)
    ranks = [PersonSearchEvaluator("prw_test", protocol=protocol(), distributed=True) for _ in range(2)]
    for i, r in enumerate(recs):  # records split over two "ranks", query on rank 1
        ranks[i % 2].process([r], model([r]))
    calls = iter([[ranks[0]._gallery, ranks[1]._gallery], [ranks[0]._queries, ranks[1]._queries]])
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: next(calls))
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    res = ranks[0].evaluate()
    assert res["search"]["mAP"] == pytest.approx(STANDARD_MAP)
    assert res["detection"]["recall"] == pytest.approx(4 / 6)
