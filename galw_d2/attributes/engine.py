"""Train / evaluate the stand-alone attribute recognizer (used by tools/train_attribute_net.py).

``train_and_evaluate(cfg, output_dir)`` loads the train and held-out samples of
``cfg.ATTRIBUTE_NET.DATA``, trains with Adam (lr ``SOLVER.BASE_LR``, weight decay
``SOLVER.WEIGHT_DECAY``, cosine decay over ``ATTRIBUTE_NET.EPOCHS``), saves
``output_dir/model_final.pth`` and writes ``output_dir/metrics.json``::

    {"mA", "accuracy", "precision", "recall", "F1",            # fractions, on the held-out split
     "constant_mA", ...                                       # the majority-class constant predictor
     "per_attribute_mA": {name: value}, "num_train", "num_test", "threshold", "checkpoint",
     "checkpoint_sha256", "epochs", "train_seconds"}
"""

import json
import logging
import os
import time
from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import CropDataset, load_attribute_samples, samples_to_targets
from .losses import positive_ratio
from .metrics import attribute_metrics, label_based_metrics
from .recognizer import AttributeRecognizer, build_recognizer, save_checkpoint

__all__ = ["train_and_evaluate", "predict_samples", "constant_predictor_metrics"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_samples(
    model: AttributeRecognizer, dataset: CropDataset, batch_size: int = 64, device="cpu", progress: bool = False
) -> np.ndarray:
    """Probabilities (N, A) of every crop of ``dataset``, in order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    if progress:
        loader = tqdm(loader, desc="attributes", unit="batch")
    out = [model.predict(x.to(device)).cpu() for x, _ in loader]
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_attributes), dtype=np.float32)


def constant_predictor_metrics(train_targets: np.ndarray, test_targets: np.ndarray) -> Dict[str, float]:
    """Metrics of predicting each attribute's majority training value for every test sample."""
    maj = (np.asarray(train_targets) > 0.5).mean(0) > 0.5
    pred = np.tile(maj.astype(np.int64), (len(test_targets), 1))
    return attribute_metrics(pred, test_targets, threshold=None)


def train_and_evaluate(cfg, output_dir: str, progress: bool = True) -> Dict[str, object]:
    c = cfg.ATTRIBUTE_NET
    device = torch.device(cfg.MODEL.DEVICE)
    os.makedirs(output_dir, exist_ok=True)
    seed = int(cfg.SEED) if int(cfg.SEED) >= 0 else 0
    torch.manual_seed(seed)
    train_s, names = load_attribute_samples(cfg, "train")
    test_s, test_names = load_attribute_samples(cfg, "test")
    if list(names) != list(test_names):
        raise ValueError(f"train and held-out attribute names differ: {names} vs {test_names}")
    logger.info(
        "attribute recognizer: %d train / %d held-out crops, %d attributes", len(train_s), len(test_s), len(names)
    )
    model = build_recognizer(cfg, len(names)).to(device)
    if c.WEIGHTS:
        from .recognizer import load_recognizer

        loaded, lnames, _ = load_recognizer(c.WEIGHTS)
        if lnames != list(names):
            raise ValueError(
                f"ATTRIBUTE_NET.WEIGHTS {c.WEIGHTS!r} was trained on attributes {lnames}, data has {list(names)}"
            )
        model.load_state_dict(loaded.state_dict())
    train_targets = samples_to_targets(train_s)
    model.pos_ratio.copy_(positive_ratio(train_targets).to(device))
    train_ds = CropDataset(train_s, c.INPUT_SIZE, train=True, flip_prob=c.FLIP_PROB, seed=seed)
    test_ds = CropDataset(test_s, c.INPUT_SIZE, train=False)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train_ds,
        batch_size=min(int(c.BATCH_SIZE), len(train_ds)),
        shuffle=True,
        drop_last=True,
        num_workers=int(c.NUM_WORKERS),
        generator=g,
    )
    epochs = int(c.EPOCHS)
    if epochs <= 0:
        raise ValueError(f"ATTRIBUTE_NET.EPOCHS must be > 0, got {epochs}")
    opt = torch.optim.Adam(
        model.parameters(), lr=float(cfg.SOLVER.BASE_LR), weight_decay=float(cfg.SOLVER.WEIGHT_DECAY)
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
    t0 = time.time()
    bar = None
    if progress:
        bar = tqdm(total=epochs * len(loader), desc="train attributes", unit="it")
    for ep in range(epochs):
        model.train()
        for x, y in loader:
            loss = model.loss(x.to(device), y.to(device), weighted=bool(c.WEIGHTED_BCE))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=ep + 1, loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    train_seconds = time.time() - t0
    ckpt = os.path.join(output_dir, "model_final.pth")
    sha = save_checkpoint(model, ckpt, names)
    probs = predict_samples(model, test_ds, device=device)
    gt = samples_to_targets(test_s).numpy()
    m = attribute_metrics(probs, gt, float(c.THRESHOLD))
    per = label_based_metrics((probs >= float(c.THRESHOLD)).astype(np.int64), gt)["per_attribute_mA"]
    const = constant_predictor_metrics(train_targets.numpy(), gt)
    out: Dict[str, object] = dict(m)
    out.update({f"constant_{k}": v for k, v in const.items()})
    out.update(
        {
            "per_attribute_mA": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, per)},
            "attribute_names": list(names),
            "num_train": len(train_s),
            "num_test": len(test_s),
            "threshold": float(c.THRESHOLD),
            "checkpoint": ckpt,
            "checkpoint_sha256": sha,
            "epochs": epochs,
            "train_seconds": round(train_seconds, 2),
        }
    )
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


def evaluate_checkpoint(cfg, checkpoint: str, output_dir: Optional[str] = None) -> Dict[str, object]:
    """Metrics of a saved recognizer on the held-out split of ``cfg.ATTRIBUTE_NET.DATA``."""
    from .recognizer import load_recognizer

    if not checkpoint:
        raise ValueError("evaluate_checkpoint: no checkpoint (set ATTRIBUTE_NET.WEIGHTS)")
    device = torch.device(cfg.MODEL.DEVICE)
    model, names, sha = load_recognizer(checkpoint)
    model.to(device)
    test_s, test_names = load_attribute_samples(cfg, "test")
    if list(test_names) != list(names):
        raise ValueError(f"{checkpoint}: trained on attributes {names}, held-out data has {list(test_names)}")
    probs = predict_samples(model, CropDataset(test_s, model.config["input_size"]), device=device)
    out: Dict[str, object] = dict(
        attribute_metrics(probs, samples_to_targets(test_s).numpy(), float(cfg.ATTRIBUTE_NET.THRESHOLD))
    )
    out.update(
        {
            "num_test": len(test_s),
            "checkpoint": checkpoint,
            "checkpoint_sha256": sha,
            "attribute_names": names,
            "threshold": float(cfg.ATTRIBUTE_NET.THRESHOLD),
        }
    )
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump(out, f, indent=2)
    return out
