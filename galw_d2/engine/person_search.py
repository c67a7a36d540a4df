"""The person-search trainer: GALW training + person-search data loading and evaluation.

:class:`PersonSearchTrainer` subclasses the GALW trainer (loss weighting, gradient probes, deferred
OIM updates; :mod:`galw_d2.engine`) and overrides only what person search needs, the way detectron2
projects subclass ``DefaultTrainer``:

* ``build_train_loader`` / ``build_test_loader``: :class:`galw_d2.data.PersonSearchDatasetMapper`
  (multi-scale training resize, ``gt_pids`` / ``gt_attributes``; query boxes as ``embed_boxes``).
* ``build_evaluator``: :class:`galw_d2.evaluation.PersonSearchEvaluator` on ``<prefix>_test``, which
  returns ``{"search": {...}, "detection": {...}}`` so detectron2's printing and ``EvalHook`` work.
* ``build_hooks``: adds a :class:`detectron2.engine.hooks.BestCheckpointer` on ``search/mAP`` when
  periodic evaluation is on, and an optional tqdm progress bar (:class:`ProgressBar`).

Exact resume: the optimizer and RNG state in every checkpoint (detectron2 v0.6 leaves the optimizer
out) come from :class:`~galw_d2.engine.trainer.GALWTrainer`; the data stream's position from the
resumable training loader (:mod:`galw_d2.data.samplers`).
"""

import logging
import os
import time
from typing import Optional

from detectron2.data import build_detection_test_loader
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from tqdm import tqdm

from ..data import PersonSearchDatasetMapper
from ..data.samplers import build_resumable_train_loader
from ..evaluation import PersonSearchEvaluator
from .trainer import GALWTrainer

__all__ = ["PersonSearchTrainer", "ProgressBar"]

logger = logging.getLogger(__name__)


class ProgressBar(HookBase):
    """A tqdm bar over the training iterations, showing the latest total loss and s/iter.

    Complements detectron2's periodic log lines (every 20 iterations) with live feedback on a slow
    CPU; shown on the main process only. ``desc`` names the phase (e.g. "phase 1").
    """

    def __init__(self, desc: str = "train", disable: Optional[bool] = None):
        self._desc = desc
        self._disable = disable
        self._bar = None
        self._t0 = None

    def before_train(self):
        disable = (not comm.is_main_process()) if self._disable is None else self._disable
        self._bar = tqdm(
            total=self.trainer.max_iter,
            initial=self.trainer.start_iter,
            desc=self._desc,
            disable=disable,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        self._t0 = time.perf_counter()

    def after_step(self):
        if self._bar is None:
            return
        storage = self.trainer.storage
        post = {}
        hist = storage.histories()
        if "total_loss" in hist:
            post["loss"] = f"{hist['total_loss'].latest():.3f}"
        done = self.trainer.iter + 1 - self.trainer.start_iter
        if done > 0:
            post["s/it"] = f"{(time.perf_counter() - self._t0) / done:.2f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def after_train(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class PersonSearchTrainer(GALWTrainer):
    """GALW trainer with person-search data loading, evaluation and exact resume.

    Config: everything of the parent (``cfg.GALW.*``, ``cfg.SOLVER.*``), plus ``cfg.DATASETS.TEST``:
    ``<prefix>_test`` datasets scored by :class:`PersonSearchEvaluator`. Set
    ``cfg.TEST.EVAL_PERIOD > 0`` to evaluate during training (the best ``search/mAP`` checkpoint is
    kept as ``model_best.pth``).
    """

    #: Show a tqdm bar over the iterations (the demo pipeline turns it on); a string = its label.
    progress_bar = None

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's training-loader semantics (infinite seeded index stream, aspect-ratio grouped
        batches) through :func:`galw_d2.data.samplers.build_resumable_train_loader`, whose position
        follows the checkpoint: a resumed run sees exactly the batches of the uninterrupted run."""
        return build_resumable_train_loader(cfg, PersonSearchDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=PersonSearchDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, **kwargs):
        """:class:`PersonSearchEvaluator` for ``dataset_name`` (a ``<prefix>_test`` dataset).

        The saved-results file (``search_results.pth``) goes to ``output_folder`` (default
        ``cfg.OUTPUT_DIR/inference/<dataset_name>``) so ``tools/evaluate_search.py`` can re-score it;
        it is written when ``cfg.TEST.PERSON_SEARCH.SAVE_RESULTS`` or ``save_results=True``. Other
        ``kwargs`` (``det_thresh``, ``gallery_size``, ...) go to the evaluator.
        """
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return PersonSearchEvaluator(
            dataset_name, cfg=cfg, output_dir=output_folder, distributed=comm.get_world_size() > 1, **kwargs
        )

    def build_hooks(self):
        ret = super().build_hooks()
        if self.progress_bar:
            ret.insert(0, ProgressBar(self.progress_bar if isinstance(self.progress_bar, str) else "train"))
        if self.cfg.TEST.EVAL_PERIOD > 0 and len(self.cfg.DATASETS.TEST) and comm.is_main_process():
            # After EvalHook (appended by the parent), before the writers would not matter: it only
            # reads the latest "search/mAP" scalar that EvalHook put into the storage.
            ret.append(hooks.BestCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, "search/mAP", "max"))
        return ret
