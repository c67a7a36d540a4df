"""A training data loader whose position is part of the checkpoint: exact resume.

detectron2's training loader (``TrainingSampler`` -> map dataset -> ``AspectRatioGroupedDataset``)
restarts its infinite index stream from the beginning when a run is resumed, and its augmentations
draw from each worker's RNG, whose state is not saved; a resumed run therefore sees other batches
than the uninterrupted run would have. This loader makes a batch a pure function of
``(seed, batch number)``:

* :class:`ResumableBatchSampler` draws the same infinite index stream as ``TrainingSampler`` (one
  ``torch.randperm`` per epoch from a generator seeded with ``seed``; rank ``r`` of ``W`` takes
  positions ``r, r + W, ...``) and groups it into batches by aspect ratio exactly as
  ``AspectRatioGroupedDataset`` does (bucket "width > height" or not, read from the records'
  ``width`` / ``height``, which the mapper passes through unchanged), but at the index level and in
  the main process, so it can skip the first ``N`` batches without loading an image:
  :meth:`ResumableBatchSampler.set_start` (the trainer calls it with ``start_iter`` on resume).
  Skipping is index arithmetic only: one ``randperm`` per skipped epoch.
* :class:`PositionSeededDataset` maps a record with every RNG (``random``, NumPy, torch) seeded
  from ``(seed, stream position)`` and restored afterwards, so an augmentation (random resize,
  flip) does not depend on which worker maps the record, on the number of workers, or on what ran
  before; the training RNG of the main process is left untouched.

Use :func:`build_resumable_train_loader` in ``build_train_loader`` (the person-search trainer does).
"""

import logging
import random
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.build import get_detection_dataset_dicts, trivial_batch_collator
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "ResumableBatchSampler",
    "PositionSeededDataset",
    "build_resumable_train_loader",
    "sample_seed",
    "aspect_buckets",
]

logger = logging.getLogger(__name__)


def sample_seed(seed: int, position: int) -> int:
    """The augmentation seed of stream position ``position`` (a 32-bit integer)."""
    return int(np.random.SeedSequence([int(seed) % (2**63), int(position)]).generate_state(1)[0])


class ResumableBatchSampler:
    """Infinite batches of ``(position, index)`` pairs; see the module docstring.

    Args:
        buckets: (N,) aspect bucket of each record (0: width > height, 1: otherwise), or ``None``
            for no aspect-ratio grouping (consecutive indices form a batch).
        batch_size: images per batch on this rank.
        shuffle: a new random permutation per epoch (else ``0..N-1`` repeated).
        seed: the permutation seed; identical on every rank.
        rank, world_size: this process' shard of the stream (default: detectron2's ``comm``).
        size: the number of records when ``buckets`` is ``None``.
    """

    def __init__(
        self,
        buckets: Optional[Sequence[int]],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        size: Optional[int] = None,
    ):
        if buckets is None and size is None:
            raise ValueError("ResumableBatchSampler needs the aspect buckets or the dataset size")
        self._buckets = None if buckets is None else [int(b) for b in buckets]
        self._size = len(self._buckets) if self._buckets is not None else int(size)
        if self._size <= 0:
            raise ValueError("ResumableBatchSampler: the training set is empty")
        if batch_size <= 0:
            raise ValueError(f"ResumableBatchSampler: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)
        self.start_batch = 0

    def set_start(self, start_batch: int) -> None:
        """Begin the next iteration of this sampler at batch ``start_batch`` (0 = the beginning)."""
        if start_batch < 0:
            raise ValueError(f"start batch must be >= 0, got {start_batch}")
        self.start_batch = int(start_batch)

    def global_indices(self) -> Iterator[int]:
        """The unsharded infinite index stream (``TrainingSampler._infinite_indices``'s)."""
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        pending: List[List[Tuple[int, int]]] = [[], []]
        emitted = 0
        for pos, idx in enumerate(self.global_indices()):
            if pos % self.world_size != self.rank:
                continue
            bucket = pending[0 if self._buckets is None else self._buckets[idx]]
            bucket.append((pos, idx))
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                del bucket[:]
                if emitted >= self.start_batch:
                    yield batch
                emitted += 1


class PositionSeededDataset(Dataset):
    """``dataset[(position, index)] = mapper(records[index])`` under RNGs seeded from ``(seed, position)``.

    The caller's RNG states are restored afterwards (the main process' training RNG is not
    consumed). A mapper returning ``None`` is an error here (detectron2's ``MapDataset`` would
    silently draw another record, which would break the stream's determinism).
    """

    def __init__(self, records: Sequence[dict], mapper, seed: int):
        self.records = records
        self.mapper = mapper
        self.seed = int(seed)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key: Tuple[int, int]):
        pos, idx = key
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        s = sample_seed(self.seed, pos)
        try:
            random.seed(s)
            np.random.seed(s)
            torch.random.default_generator.manual_seed(s)  # CPU only: torch.manual_seed also seeds CUDA (slow)
            out = self.mapper(self.records[idx])
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)
        if out is None:
            name = self.records[idx].get("file_name", idx)
            raise ValueError(
                f"the training mapper returned None for {name}: filter such records from the dataset "
                "(DATALOADER.FILTER_EMPTY_ANNOTATIONS) instead"
            )
        return out


def aspect_buckets(records: Sequence[dict]) -> List[int]:
    """0 for a record whose ``width > height``, else 1 (``AspectRatioGroupedDataset``'s buckets)."""
    out = []
    for r in records:
        if "width" not in r or "height" not in r:
            raise ValueError(
                f"record {r.get('file_name', '?')} has no width/height: aspect-ratio grouping needs "
                "them (or set DATALOADER.ASPECT_RATIO_GROUPING False)"
            )
        out.append(0 if r["width"] > r["height"] else 1)
    return out


def build_resumable_train_loader(cfg, mapper, seed: Optional[int] = None) -> DataLoader:
    """The training loader of ``cfg`` (``DATASETS.TRAIN``, ``SOLVER.IMS_PER_BATCH``,
    ``DATALOADER.{NUM_WORKERS, ASPECT_RATIO_GROUPING, FILTER_EMPTY_ANNOTATIONS}``) with a
    :class:`ResumableBatchSampler` (``loader.batch_sampler``) over a :class:`PositionSeededDataset`.

    Args:
        seed: the index-stream and augmentation seed; default: ``comm.shared_random_seed()``, the
            seed ``TrainingSampler`` draws (so a run seeded by ``cfg.SEED`` has the same index order
            as with detectron2's loader).

    Returns:
        a ``DataLoader`` yielding lists of ``SOLVER.IMS_PER_BATCH / world size`` mapped dicts.
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r}: the resumable loader "
            "implements 'TrainingSampler' only"
        )
    records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    world = comm.get_world_size()
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total % world != 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes ({world})")
    if seed is None:
        seed = comm.shared_random_seed()
    buckets = aspect_buckets(records) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    sampler = ResumableBatchSampler(buckets, total // world, seed=seed, size=len(records))
    logger.info(
        f"resumable training loader: {len(records)} images, {total // world} per batch and process, "
        f"seed {seed}, aspect-ratio grouping {'on' if buckets is not None else 'off'}"
    )
    return DataLoader(
        PositionSeededDataset(records, mapper, seed),
        batch_sampler=sampler,
        collate_fn=trivial_batch_collator,
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
    )
