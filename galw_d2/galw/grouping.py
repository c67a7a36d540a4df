"""Task grouping of GALW (paper Sec. 3.2.2, Algorithm 1; SPEC §3). Pure numpy/scipy.

Input: the trends file written by the gradient-trend recorder (see :mod:`galw_d2.galw.recorder`)::

    {"tasks": [name, ...], "gradient_magnitude": {name: [Gamma per epoch, null = no probe], ...},
     "settings": {...}}

Steps for the ``slope`` strategy (the paper's):

1. Slope per task (Eq. 7): ``mean_diff`` = mean of successive differences = (Gamma_last - Gamma_first)
   / (e_last - e_first) over the epochs that have a value; ``lstsq`` = least-squares line slope.
2. Transform (Eq. 8): ``s* = sign(s) * sigmoid(log_B |s|)``; ``s = 0`` gives ``s* = 0``. With base e
   this is ``s / (1 + |s|)``; base 10 (default) compresses orders of magnitude. The base is recorded.
3. Hierarchical clustering of ``s*`` into G groups (scipy ``linkage(s*.reshape(-1, 1), method)``,
   ``fcluster(..., G, "maxclust")``).

Degenerate cases (reported in ``report``, never silent):
- G > number of tasks: G is reduced to the number of tasks.
- fewer distinct ``s*`` than G, or tied merge heights: fewer clusters; tasks with equal ``s*`` always
  share a group (they are indistinguishable; we cluster the distinct values), and ``found < requested``
  is reported with the reason (``fcluster`` maxclust returns AT MOST G clusters).
- all slopes equal (e.g. constant trends): one group.
- one task: one group.
- fewer than 2 epochs with values for a task, or non-finite values: ``ValueError`` naming the task.
- values that are not numbers (a string, a bool), negative magnitudes (Gamma is a mean of norms), a
  task that is 0 at every epoch (its loss never reached the shared parameters), curves of different
  lengths, and ``probe_counts`` that do not match the curves (length, a value without probes, probes
  without a value, negative counts): ``ValueError`` naming the file, task and epoch
  (:func:`validate_trends`, run by :func:`load_trends`; the per-value checks also run in
  :func:`compute_slopes`).

Canonical order: tasks inside a group follow the trends file's task order; groups are ordered by the
position of their first task. The strategies are entries of :data:`GROUPING_REGISTRY`
(``GALW.GROUPING.STRATEGY``): ``slope`` (the paper's), and for Table 5 ``branch`` (galw_d2/tasks.py
branch), ``semantic`` (detection-cls / box-regression / re-id / other), ``random`` (seeded, G
near-equal groups), ``manual`` ("a,b;c" with loss names or t-indices, or a :data:`GROUP_PRESETS` name:
the paper's Table 4 and Table 5 rows). A new strategy is one class with ``@GROUPING_REGISTRY.register``.
"""

import json
import math
import re
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as _linkage

from ..tasks import TASKS_BY_NAME, task_by_index
from ..utils.registry import NamedRegistry

__all__ = [
    "load_trends",
    "validate_trends",
    "compute_slopes",
    "transform_slopes",
    "cluster_slopes",
    "canonical_groups",
    "group_tasks",
    "build_grouping",
    "group_tasks_from_cfg",
    "parse_manual_groups",
    "SEMANTIC_CLASSES",
    "GROUPING_REGISTRY",
    "GroupingStrategy",
    "GROUP_PRESETS",
]

# Our reading of the paper's "semantic" grouping (Table 5): what each task predicts.
SEMANTIC_CLASSES = {
    "loss_rpn_cls": "detection",
    "loss_nae_det": "detection",
    "loss_fcos_cls": "detection",
    "loss_fcos_ctr": "detection",
    "loss_rpn_loc": "box_regression",
    "loss_roi_box_reg": "box_regression",
    "loss_fcos_giou": "box_regression",
    "loss_nae_oim": "reid",
    "loss_fcos_oim": "reid",
    "loss_triplet": "reid",
    "loss_attr": "other",
}


def load_trends(path: str) -> dict:
    """Read and validate a trends JSON (:func:`validate_trends`); errors name the file and field."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"trends file {path} does not exist (phase 1 writes it; see docs/galw.md)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"trends file {path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"trends file {path}: not a text (JSON) file ({e})") from None
    return validate_trends(data, f"trends file {path}")


def validate_trends(data, source: str = "trends") -> dict:
    """Check a trends dict (the recorder's format, see the module docstring); returns it unchanged.

    Raises ``ValueError`` prefixed with ``source`` and naming the field / task / epoch for: missing
    fields, bad task lists, missing curves, curves that are not lists or of different lengths ("ragged"),
    values that are not numbers or null, non-finite or negative values, tasks that are 0 at every epoch,
    and ``probe_counts`` (optional) that do not match the curves.
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a JSON object with tasks, gradient_magnitude, settings; got {type(data).__name__}"
        )
    for key in ("tasks", "gradient_magnitude"):
        if key not in data:
            raise ValueError(f"{source}: missing field '{key}' (expected tasks, gradient_magnitude, settings)")
    tasks = data["tasks"]
    if (
        not isinstance(tasks, list)
        or not tasks
        or not all(isinstance(t, str) for t in tasks)
        or len(set(tasks)) != len(tasks)
    ):
        raise ValueError(f"{source}: 'tasks' must be a non-empty list of unique names, got {tasks!r}")
    gm = data["gradient_magnitude"]
    if not isinstance(gm, dict):
        raise ValueError(f"{source}: 'gradient_magnitude' must be an object task -> per-epoch list")
    missing = [t for t in tasks if t not in gm]
    if missing:
        raise ValueError(f"{source}: gradient_magnitude has no curve for {missing}")
    try:
        for t in tasks:
            _check_values(t, gm[t])
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    lengths = {t: len(gm[t]) for t in tasks}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{t!r} {n}" + (" epochs" if i == 0 else "") for i, (t, n) in enumerate(lengths.items()))
        raise ValueError(
            f"{source}: ragged trends, curves of different lengths: {desc} (the recorder probes every "
            f"task at the same iterations; null marks an epoch without a probe)"
        )
    pc = data.get("probe_counts")
    if pc is None:
        return data
    if not isinstance(pc, dict):
        raise ValueError(f"{source}: 'probe_counts' must be an object task -> per-epoch list")
    missing = [t for t in tasks if t not in pc]
    if missing:
        raise ValueError(f"{source}: probe_counts has no entry for {missing}")
    for t in tasks:
        counts, curve = pc[t], gm[t]
        if not isinstance(counts, list) or len(counts) != len(curve):
            n = len(counts) if isinstance(counts, list) else type(counts).__name__
            raise ValueError(f"{source}: probe_counts of task '{t}' has {n} epochs but its curve has {len(curve)}")
        for e, (c, v) in enumerate(zip(counts, curve)):
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise ValueError(
                    f"{source}: probe_counts of task '{t}' at epoch {e} is {c!r}; expected an integer >= 0"
                )
            if c == 0 and v is not None:
                raise ValueError(f"{source}: task '{t}' at epoch {e} has a gradient magnitude ({v}) but 0 probes")
            if c > 0 and v is None:
                raise ValueError(f"{source}: task '{t}' at epoch {e} has {c} probes but no gradient magnitude (null)")
    return data


def _check_values(name: str, values) -> None:
    """Per-value checks of one task's curve: a list of finite numbers >= 0 or null, not 0 throughout."""
    if not isinstance(values, (list, tuple)):
        raise ValueError(
            f"curve of task '{name}' must be a list of per-epoch values (null = no probe), "
            f"got {type(values).__name__} {values!r:.40}"
        )
    seen = []
    for i, x in enumerate(values):
        if x is None:
            continue
        # JSON strings ("0.4") and booleans are not magnitudes: float() would accept them silently
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError(
                f"gradient magnitude of task '{name}' at epoch {i} is {x!r} ({type(x).__name__}); "
                f"expected a number or null"
            )
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"gradient magnitude of task '{name}' at epoch {i} is {x}; expected a finite number")
        if x < 0:
            raise ValueError(
                f"gradient magnitude of task '{name}' at epoch {i} is {x}; a gradient magnitude "
                f"(mean of L2 norms, Eq. 6) is >= 0"
            )
        seen.append(x)
    if seen and not any(seen):
        raise ValueError(
            f"gradient magnitude of task '{name}' is 0 at every epoch with a probe: its loss never "
            f"reached the shared parameters (GALW.RECORD.SHARED_PARAMS), so its slope means nothing"
        )


def _curve(name: str, values: Sequence) -> (np.ndarray, np.ndarray):
    _check_values(name, values)
    e, v = [], []
    for i, x in enumerate(values):
        if x is None:
            continue
        e.append(i)
        v.append(float(x))
    if len(v) < 2:
        raise ValueError(
            f"task '{name}' has {len(v)} epoch(s) with a gradient magnitude; a slope needs at least 2 "
            "(record longer or set GALW.RECORD.EPOCH_ITERS smaller)"
        )
    return np.asarray(e, dtype=np.float64), np.asarray(v, dtype=np.float64)


def compute_slopes(trends: Mapping[str, Sequence], method: str = "mean_diff") -> Dict[str, float]:
    """Slope per task of its per-epoch curve (Eq. 7 = ``mean_diff``, or ``lstsq``)."""
    if method not in ("mean_diff", "lstsq"):
        raise ValueError(f"slope method '{method}': expected 'mean_diff' or 'lstsq'")
    out = {}
    for name, values in trends.items():
        e, v = _curve(name, values)
        if method == "mean_diff":
            out[name] = float((v[-1] - v[0]) / (e[-1] - e[0]))
        else:
            ec = e - e.mean()
            out[name] = float((ec * (v - v.mean())).sum() / (ec * ec).sum())
    return out


def transform_slopes(slopes: Mapping[str, float], log_base: float = 10.0) -> Dict[str, float]:
    """Eq. 8: ``s* = sign(s) * sigmoid(log_B |s|)`` (0 -> 0)."""
    if not (log_base > 0 and log_base != 1):
        raise ValueError(f"log base must be > 0 and != 1, got {log_base}")
    out = {}
    for name, s in slopes.items():
        if s == 0:
            out[name] = 0.0
            continue
        z = math.log(abs(s)) / math.log(log_base)
        out[name] = float(math.copysign(1.0 / (1.0 + math.exp(-z)), s))
    return out


def canonical_groups(groups: Sequence[Sequence[str]], order: Sequence[str]) -> List[List[str]]:
    """Sort each group by ``order`` and the groups by their first task's position; drop empty groups."""
    pos = {t: i for i, t in enumerate(order)}
    gs = [sorted(g, key=lambda t: pos[t]) for g in groups if len(g)]
    return sorted(gs, key=lambda g: pos[g[0]])


def cluster_slopes(values: Mapping[str, float], num_groups: int, linkage: str = "average", order=None):
    """Hierarchical clustering of 1-D values into at most ``num_groups`` groups.

    Returns ``(groups, report)``; ``report`` has ``requested``, ``found``, ``distinct_values`` and a list
    of ``notes`` for every degenerate case met.
    """
    names = list(order) if order is not None else list(values)
    if num_groups < 1:
        raise ValueError(f"number of groups must be >= 1, got {num_groups}")
    x = np.asarray([values[n] for n in names], dtype=np.float64)
    distinct = int(np.unique(x).size)
    report = {"requested": int(num_groups), "found": None, "distinct_values": distinct, "notes": []}
    g = int(num_groups)
    if g > len(names):
        report["notes"].append(f"requested {g} groups but there are only {len(names)} tasks; using {len(names)}")
        g = len(names)
    if len(names) == 1 or g == 1:
        labels = np.ones(len(names), dtype=int)
    elif distinct == 1:
        labels = np.ones(len(names), dtype=int)
        report["notes"].append("all transformed slopes are equal: one group")
    else:
        # Equal values are indistinguishable: cluster the distinct values (fcluster would otherwise
        # split tied tasks arbitrarily at height 0) and give every task its value's label.
        # scipy reads a 1-D array as a condensed distance matrix: pass observations as (n, 1).
        uniq, inv = np.unique(x, return_inverse=True)
        z = _linkage(uniq.reshape(-1, 1), method=linkage)
        labels = fcluster(z, t=min(g, uniq.size), criterion="maxclust")[inv.reshape(-1)]
    groups: Dict[int, List[str]] = {}
    for n, lab in zip(names, labels):
        groups.setdefault(int(lab), []).append(n)
    out = canonical_groups(list(groups.values()), names)
    report["found"] = len(out)
    if len(out) < g and distinct > 1:
        why = (
            f"only {distinct} distinct transformed slopes"
            if distinct < g
            else "tied merge heights in the dendrogram (fcluster maxclust returns at most G clusters)"
        )
        report["notes"].append(f"found {len(out)} groups instead of {g}: {why}")
    return out, report


def parse_manual_groups(spec: str, tasks: Sequence[str]) -> List[List[str]]:
    """Parse ``"a,b;c"`` (loss names or t-indices such as ``t3``) into groups covering ``tasks`` once."""
    groups = []
    for part in str(spec).split(";"):
        names = []
        for tok in [t.strip() for t in part.split(",") if t.strip()]:
            m = re.fullmatch(r"[tT](\d+)", tok)
            if m and tok not in tasks:
                try:
                    tok = task_by_index(int(m.group(1))).name
                except KeyError as e:
                    raise ValueError(f"manual groups '{spec}': {e}") from None
            names.append(tok)
        if names:
            groups.append(names)
    flat = [t for g in groups for t in g]
    unknown = [t for t in flat if t not in tasks]
    dup = sorted({t for t in flat if flat.count(t) > 1})
    missing = [t for t in tasks if t not in flat]
    if unknown or dup or missing:
        raise ValueError(
            f"manual groups '{spec}': unknown {unknown}, repeated {dup}, missing {missing}; "
            f"every task of {list(tasks)} must be in exactly one group"
        )
    return groups


# The paper's groupings as named presets of the "manual" strategy (t-indices of ROI-AlignPS*, PRW).
# Table 4 (GN = number of groups) and Table 5 (grouping strategies). The paper contradicts itself on
# its best grouping: Table 4's G = 4 row reads {t3},{t1,t2,t4,t9},{t8,t10},{t5,t6,t7}, Table 5's
# "ours" row {t3},{t1,t2,t4,t9},{t7,t8,t10},{t5,t6}, both with 52.89 / 86.07: both are offered.
GROUP_PRESETS: Dict[str, str] = {
    "table4_g2": "t3; t1,t2,t4,t5,t6,t7,t8,t9,t10",
    "table4_g3": "t3; t5,t6; t1,t2,t4,t7,t8,t9,t10",
    "table4_g4": "t3; t1,t2,t4,t9; t8,t10; t5,t6,t7",
    "table4_g5": "t3; t4; t7; t5,t6; t1,t2,t8,t9,t10",
    "table4_g6": "t1,t2; t3,t4; t5,t6; t7; t8,t10; t9",
    "table5_branch": "t1,t2,t3,t4,t5; t6,t7,t8,t9,t10",
    "table5_semantic_a": "t5,t6,t7; t1,t2,t3,t4,t8,t9,t10",
    "table5_semantic_b": "t5,t6,t7; t3,t10; t1,t2,t4,t8,t9",
    "table5_random_a": "t1,t5; t3,t7; t6,t10; t2,t4,t8,t9",
    "table5_random_b": "t1,t2; t3,t5,t7; t6; t4,t8,t9,t10",
    "table5_ours": "t3; t1,t2,t4,t9; t7,t8,t10; t5,t6",
}

GROUPING_REGISTRY = NamedRegistry("TASK_GROUPING")
GROUPING_REGISTRY.__doc__ = """Task-grouping strategies by ``GALW.GROUPING.STRATEGY`` name."""


class GroupingStrategy:
    """Base of the grouping strategies: ``strategy(trends, num_groups) -> (groups, report)``.

    ``trends`` is a trends dict (:func:`load_trends`); ``groups`` are lists of its task names covering
    each task once (canonical order applied by :func:`group_tasks`); ``report`` holds ``notes``.
    Entries are built by ``cls(**cls.from_config(cfg))`` (``cfg.GALW.GROUPING``) or with keywords.
    """

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {}

    def __call__(self, trends: dict, num_groups: int):
        raise NotImplementedError


@GROUPING_REGISTRY.register("slope")
class SlopeGrouping(GroupingStrategy):
    """The paper's: slopes (Eq. 7), transform (Eq. 8), hierarchical clustering (Algorithm 1 l. 11)."""

    def __init__(self, slope: str = "mean_diff", log_base: float = 10.0, linkage: str = "average"):
        self.slope, self.log_base, self.linkage = slope, float(log_base), linkage

    @classmethod
    def from_config(cls, cfg) -> dict:
        g = cfg.GALW.GROUPING
        return {"slope": g.SLOPE, "log_base": g.LOG_BASE, "linkage": g.LINKAGE}

    def __call__(self, trends: dict, num_groups: int):
        tasks = list(trends["tasks"])
        transformed = transform_slopes(compute_slopes(_curves(trends), self.slope), self.log_base)
        return cluster_slopes(transformed, num_groups, self.linkage, order=tasks)


class _KeyGrouping(GroupingStrategy):
    """Tasks sharing a key (branch, semantic class) form a group; tasks outside the table: 'other'."""

    def key(self, task: str) -> str:
        raise NotImplementedError

    def __call__(self, trends: dict, num_groups: int):
        tasks = list(trends["tasks"])
        key = {t: self.key(t) for t in tasks}
        by: Dict[str, List[str]] = {}
        for t in tasks:
            by.setdefault(key[t], []).append(t)
        notes = []
        if "other" in key.values():
            notes.append(f"tasks outside the task table go to group 'other': {[t for t in tasks if key[t] == 'other']}")
        return list(by.values()), {"notes": notes}


@GROUPING_REGISTRY.register("branch")
class BranchGrouping(_KeyGrouping):
    """Table 5 "branch": one group per branch of galw_d2/tasks.py (NAE, AlignPS, aux)."""

    def key(self, task: str) -> str:
        return TASKS_BY_NAME[task].branch if task in TASKS_BY_NAME else "other"


@GROUPING_REGISTRY.register("semantic")
class SemanticGrouping(_KeyGrouping):
    """Our reading of "semantic" (Table 5): detection / box regression / re-id / other."""

    def key(self, task: str) -> str:
        return SEMANTIC_CLASSES.get(task, "other")


@GROUPING_REGISTRY.register("random")
class RandomGrouping(GroupingStrategy):
    """A seeded random partition into ``min(G, T)`` near-equal groups."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {"seed": cfg.GALW.GROUPING.SEED}

    def __call__(self, trends: dict, num_groups: int):
        tasks = list(trends["tasks"])
        g = min(int(num_groups), len(tasks))
        notes = [] if g == num_groups else [f"requested {num_groups} groups but there are only {len(tasks)} tasks"]
        perm = np.random.default_rng(self.seed).permutation(len(tasks))
        return [[tasks[i] for i in perm[j::g]] for j in range(g)], {"notes": notes}


@GROUPING_REGISTRY.register("manual")
class ManualGrouping(GroupingStrategy):
    """Given groups: ``"a,b;c"`` (loss names or t-indices) or a name of :data:`GROUP_PRESETS`."""

    def __init__(self, manual: Optional[str] = None):
        self.manual = manual

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {"manual": cfg.GALW.GROUPING.MANUAL or None}

    def __call__(self, trends: dict, num_groups: int):
        if not self.manual:
            raise ValueError(
                "strategy 'manual' needs the groups, e.g. --manual 'loss_a,loss_b;loss_c' or a preset "
                f"name ({sorted(GROUP_PRESETS)})"
            )
        spec = GROUP_PRESETS.get(self.manual, self.manual)
        return parse_manual_groups(spec, list(trends["tasks"])), {"notes": []}


def _curves(trends: dict) -> Dict[str, Sequence]:
    return {t: trends["gradient_magnitude"][t] for t in trends["tasks"]}


def build_grouping(cfg) -> GroupingStrategy:
    """The strategy ``cfg.GALW.GROUPING.STRATEGY`` names, built from ``cfg.GALW.GROUPING``."""
    name = str(cfg.GALW.GROUPING.STRATEGY)
    if name not in GROUPING_REGISTRY:
        raise ValueError(f"GALW.GROUPING.STRATEGY: unknown strategy '{name}'; registered: {GROUPING_REGISTRY.names()}")
    cls = GROUPING_REGISTRY.get(name)
    return cls(**cls.from_config(cfg))


def group_tasks_from_cfg(trends: dict, cfg) -> dict:
    """:func:`group_tasks` with every setting from ``cfg.GALW.GROUPING`` (the offline workflow and
    online regrouping both call this one function)."""
    g = cfg.GALW.GROUPING
    return group_tasks(
        trends,
        int(g.NUM_GROUPS),
        strategy=build_grouping(cfg),
        slope=g.SLOPE,
        log_base=g.LOG_BASE,
        linkage=g.LINKAGE,
        seed=g.SEED,
        manual=g.MANUAL or None,
    )


def group_tasks(
    trends: dict,
    num_groups: int,
    strategy: Union[str, GroupingStrategy] = "slope",
    slope: str = "mean_diff",
    log_base: float = 10.0,
    linkage: str = "average",
    seed: int = 0,
    manual: Optional[str] = None,
) -> dict:
    """Group the tasks of a trends dict (as from :func:`load_trends`).

    Args:
        strategy: a registered name (built with the matching keywords below) or a built
            :class:`GroupingStrategy` (e.g. from :func:`build_grouping`; the keywords are then only
            used for the slopes reported alongside).
    Returns the ``groups.json`` content: ``groups`` (canonical), ``slopes``, ``transformed``,
    ``settings`` and ``report``. ``slopes``/``transformed`` are computed for every strategy whenever the
    curves allow it (else empty, with a note), so the strategies can be compared.
    """
    if int(num_groups) < 1:
        raise ValueError(f"number of groups must be >= 1, got {num_groups}")
    trends = validate_trends(trends, "trends")
    if isinstance(strategy, GroupingStrategy):
        fn, name = strategy, next((n for n, c in GROUPING_REGISTRY if type(strategy) is c), type(strategy).__name__)
    else:
        name = str(strategy).lower()
        if name not in GROUPING_REGISTRY:
            raise ValueError(f"grouping strategy '{strategy}': expected one of {GROUPING_REGISTRY.names()}")
        kw = {
            "slope": {"slope": slope, "log_base": log_base, "linkage": linkage},
            "random": {"seed": seed},
            "manual": {"manual": manual},
        }.get(name, {})
        fn = GROUPING_REGISTRY.get(name)(**kw)
    tasks = list(trends["tasks"])
    report = {"requested": int(num_groups), "found": None, "notes": []}
    try:
        slopes = compute_slopes(_curves(trends), slope)
        transformed = transform_slopes(slopes, log_base)
    except ValueError:
        if name == "slope":
            raise
        slopes, transformed = {}, {}
        report["notes"].append("slopes not computable from these trends (see the slope strategy's error)")
    groups, rep = fn(trends, int(num_groups))
    notes = rep.pop("notes", [])
    report.update(rep)
    report["notes"] += notes
    groups = canonical_groups(groups, tasks)
    report["found"] = len(groups)
    if name not in ("slope", "random") and len(groups) != num_groups:
        report["notes"].append(f"strategy '{name}' defines {len(groups)} groups (requested {num_groups})")
    return {
        "groups": groups,
        "slopes": slopes,
        "transformed": transformed,
        "settings": {
            "strategy": name,
            "num_groups": int(num_groups),
            "slope": slope,
            "log_base": float(log_base),
            "linkage": linkage,
            "seed": int(seed),
            "manual": manual,
            "task_order": tasks,
        },
        "report": report,
    }
