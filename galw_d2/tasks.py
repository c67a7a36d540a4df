"""The one table of the tasks GALW weights (SPEC §2): t-index -> loss name -> kind -> branch.

Every model in galw_d2 returns its losses under these names, one entry per task, and every GALW
component (weighting, gradient recording, grouping) refers to tasks through this table. Change a name
here and nowhere else.

``kind`` is the task type of the uncertainty weighting (Kendall et al. 2018; GALW Eq. 5): a loss of a
classification-like task is divided by k=1 * sigma^2, a regression loss by k=2 * sigma^2.
The triplet loss (t10) is a ranking loss on embeddings; we treat it as classification-like (k=1),
as its value is not a likelihood of continuous targets under Gaussian noise.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence

__all__ = [
    "Task",
    "TASKS",
    "TASKS_BY_NAME",
    "task_by_index",
    "task_kind",
    "tasks_of_branch",
    "TASK_KIND_K",
    "FIXED_WEIGHT_PRESETS",
    "fixed_weight_preset",
]

# Divisor k of Eq. 5 per kind.
TASK_KIND_K = {"cls": 1.0, "reg": 2.0}


@dataclass(frozen=True)
class Task:
    index: int  # the paper's t-index (1-based)
    name: str  # key in the model's loss dict
    kind: str  # "cls" (k=1) or "reg" (k=2)
    branch: str  # "nae", "alignps" or "aux"
    weight: float  # fixed weight of the ROI-AlignPS* baseline: Table 1's best row (50.30 / 84.30 mAP / top-1)
    description: str

    @property
    def k(self) -> float:
        return TASK_KIND_K[self.kind]

    @property
    def short(self) -> str:
        return f"t{self.index}"


TASKS: List[Task] = [
    Task(1, "loss_rpn_cls", "cls", "nae", 1.0, "RPN objectness"),
    Task(2, "loss_rpn_loc", "reg", "nae", 1.0, "RPN box regression"),
    Task(3, "loss_roi_box_reg", "reg", "nae", 10.0, "ROI box regression (L1)"),
    Task(4, "loss_nae_det", "cls", "nae", 1.0, "NAE fg/bg classification on the embedding norm"),
    Task(5, "loss_nae_oim", "cls", "nae", 10.0, "NAE OIM re-id"),
    Task(6, "loss_fcos_cls", "cls", "alignps", 10.0, "FCOS focal classification"),
    Task(7, "loss_fcos_giou", "reg", "alignps", 10.0, "FCOS GIoU regression"),
    Task(8, "loss_fcos_ctr", "cls", "alignps", 10.0, "FCOS centerness"),
    Task(9, "loss_fcos_oim", "cls", "alignps", 10.0, "FCOS focal-OIM re-id"),
    Task(10, "loss_triplet", "cls", "alignps", 1.0, "batch-hard triplet"),
    Task(11, "loss_attr", "cls", "aux", 1.0, "attributes (ALM, BCE on pseudo-labels)"),
]
TASKS_BY_NAME: Dict[str, Task] = {t.name: t for t in TASKS}

# Named fixed-weight rows, t-index -> weight (tasks not listed: 1). "table1" = the column ``weight``
# above. Sources: the paper's Table 1 (ROI-AlignPS* / AlignPS rows, PRW) and the public codes.
FIXED_WEIGHT_PRESETS: Dict[str, Dict[int, float]] = {
    # Table 1, last row: (1, 1, 10, 1, 10, 10, 10, 10, 10, 1) -> 50.30 / 84.30, the baseline of Tables 2-7.
    "table1": {t.index: t.weight for t in TASKS},
    # Table 1, the same row with w3 = 1 -> 49.79 / 83.65.
    "table1_w3_1": {**{t.index: t.weight for t in TASKS}, 3: 1.0},
    # The public ROI-AlignPS code: only the ROI L1 box loss weighted (x10); not a row of Table 1.
    "roi_alignps_code": {3: 10.0},
    # AlignPS alone (t6..t10): Table 1 row 1, all ones -> 45.90 / 81.90 (also the public AlignPS code).
    "alignps": {},
    # NAE alone (t1..t5): the public NAE code sums its losses unweighted (no NAE row in Table 1).
    "nae": {},
    # Every task weight 1 (Table 1's ROI-AlignPS* all-ones row -> 48.68 / 84.15).
    "ones": {},
}


def fixed_weight_preset(name: str) -> Dict[str, float]:
    """Loss name -> weight of the preset ``name`` for every task of the table (unlisted tasks: 1)."""
    if name not in FIXED_WEIGHT_PRESETS:
        raise ValueError(f"fixed-weight preset '{name}': expected one of {sorted(FIXED_WEIGHT_PRESETS)}")
    row = FIXED_WEIGHT_PRESETS[name]
    return {t.name: float(row.get(t.index, 1.0)) for t in TASKS}


def task_by_index(index: int) -> Task:
    """The task with the paper's t-index ``index`` (1..11)."""
    for t in TASKS:
        if t.index == index:
            return t
    raise KeyError(f"no task t{index}; known: t1..t{len(TASKS)}")


def task_kind(name: str, default: str = "cls") -> str:
    """Kind of a loss name; losses of other models (not in the table) get ``default``."""
    t = TASKS_BY_NAME.get(name)
    return t.kind if t is not None else default


def tasks_of_branch(branches: Sequence[str]) -> List[Task]:
    """Tasks of the given branches, in t-index order."""
    return [t for t in TASKS if t.branch in set(branches)]
