"""Hooks of the GALW trainer: the trends file at the end of training, online regrouping."""

import logging

from detectron2.engine import HookBase

from ..galw.grouping import group_tasks_from_cfg
from .galw_model import unwrap_galw

__all__ = ["TrendsWriter", "OnlineRegroup"]

logger = logging.getLogger(__name__)


class TrendsWriter(HookBase):
    """Writes the recorder's trends JSON when training ends (main process)."""

    def after_train(self):
        self.trainer.write_trends()


class OnlineRegroup(HookBase):
    """Our extension (``GALW.ONLINE_REGROUP``, not in the paper): after ``WARMUP_EPOCHS`` epochs of
    per-task weighting with recording, group the tasks from the trends so far with the same function as
    the two-phase workflow (:func:`galw_d2.galw.grouping.group_tasks_from_cfg`) and continue the same
    run with one sigma per group (sigma reset to its initial value, fresh optimizer state for it).

    State lives in ``trainer.galw_state`` (checkpointed by the trainer).
    """

    def after_step(self):
        tr = self.trainer
        cfg = tr.cfg.GALW
        if tr.galw_state.get("regrouped_at") is not None:
            return
        warm = int(cfg.ONLINE_REGROUP.WARMUP_EPOCHS)
        if tr.iter + 1 < warm * tr.recorder.epoch_iters:
            return
        res = group_tasks_from_cfg(tr.recorder.trends(max_epoch=warm), tr.cfg)
        groups = res["groups"]
        weighting = unwrap_galw(tr.model).weighting
        rest = [t for t in weighting.tasks if t not in tr.recorder.tasks]
        if rest:  # weighted tasks the model never returned: one extra group (they contribute 0 anyway)
            groups = groups + [rest]
        weighting.set_groups(groups, reset=True)
        for p in weighting.parameters():
            tr.optimizer.state.pop(p, None)  # fresh momentum for the new groups
        tr.galw_state = {
            "regrouped_at": int(tr.iter),
            "groups": groups,
            "report": res["report"],
            "slopes": res["slopes"],
            "transformed": res["transformed"],
        }
        logger.info(f"GALW online regroup at iteration {tr.iter}: groups {groups} ({res['report']})")
