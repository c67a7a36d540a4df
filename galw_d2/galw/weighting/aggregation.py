"""Gradient aggregation (Jacobian descent) on the shared parameters, through ``torchjd``.

Instead of weighting losses, these methods look at the per-task gradients on the shared parameters
theta_m -- the rows of the Jacobian ``J = [grad_theta L_1; ...; grad_theta L_K]`` (K x n) -- and
combine them into one update direction with an aggregator. We use the maintained library torchjd
(v0.18, ``torchjd.autojac.backward`` + ``jac_to_grad``; docs torchjd.org) rather than our own code:

- ``upgrad``: UPGrad, each row projected onto the dual cone of the rows, projections averaged
  (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232, 2024, Eq. 3-4);
- ``pcgrad``: PCGrad, gradient surgery (Yu et al., NeurIPS 2020, Algorithm 1): each row minus its
  projection on every conflicting other row (random order), the results summed;
- ``mgda``: MGDA, the min-norm point of the convex hull of the rows (Sener & Koltun, NeurIPS 2018,
  Eq. 3; torchjd solves it by Frank-Wolfe);
- ``imtl_g``: IMTL-G, the combination with equal projections on every row's unit vector (Liu et al.,
  "Towards Impartial Multi-task Learning", ICLR 2021, Eq. 9-10, as generalised by torchjd);
- ``aligned_mtl``: Aligned-MTL, the rows made orthogonal with equal norms (the smallest singular
  value) before averaging (Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
  CVPR 2023, Algorithm 1);
- ``dualproj``: DualProj, the mean projected onto the dual cone (Quinton & Rey 2024);
- ``cagrad``: CAGrad (Liu et al., NeurIPS 2021, Eq. 6, c = ``GALW.AGGREGATION.CAGRAD_C``); needs
  ``cvxpy`` + ``clarabel`` (``pip install "torchjd[cagrad]"``): building it without them is an
  ImportError saying so.

The step (:meth:`AggregationWeighting.backward`): the K x n Jacobian on theta_m, either one
``torch.autograd.grad`` of each row's loss alone (``GALW.AGGREGATION.JACOBIAN: "rows"``, the default:
works for every op, and walks only that task's graph) or all rows at once by
``torchjd.autojac.backward(rows, inputs=theta_m)`` through ``torch.vmap`` (``JACOBIAN: "vmap"``; not every
op supports vmap); then ``total.backward()`` gives every parameter the plain sum's
gradient (the task-specific parameters keep it: their gradient is ``grad L_i`` of their own task
anyway); then theta_m's ``.grad`` is replaced by ``jac_to_grad(theta_m, aggregator)``. ``forward``
returns the plain sum ``sum_i L_i`` (logged as the weighted total); the aggregator's weights of the
step (``d = sum_k a_k J_k``) are logged as ``galw/weight/<loss>`` (filled into the step's info dict by
``backward``; they are the weights on theta_m only). theta_m = ``GALW.AGGREGATION.SHARED_PARAMS``
(empty = ``GALW.RECORD.SHARED_PARAMS``).

Cost: K backward passes to theta_m per step on top of the usual backward (tools/method_cost.py,
ROI-AlignPS* tiny, 10 tasks, theta_m = res2..res4, CPU: 2.5-2.8x the plain step; docs/galw.md §6).
Not supported: fp16 with a GradScaler (GALWStep refuses it),
DistributedDataParallel with world size > 1 (the gradients are written directly, not all-reduced).

Grouping (``GALW.GROUPS``): one Jacobian row per group, ``grad sum_{i in g} L_i``: tasks of a group
are summed before aggregation (K = number of groups: one backward pass per group, not per task). This is GALW's
grouping applied to aggregation: tasks whose gradients behave alike are not protected from each other,
conflicts between groups are resolved by the aggregator.
"""

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from .base import WEIGHTING_REGISTRY
from .slots import SlotWeighting, require_single_process, slot_args

__all__ = ["AggregationWeighting", "AGGREGATORS", "JACOBIAN_MODES", "make_aggregator"]

#: how the per-task Jacobian on the shared parameters is computed (GALW.AGGREGATION.JACOBIAN)
JACOBIAN_MODES = ("rows", "vmap")


def _torchjd():
    try:
        import torchjd.aggregation as agg
        from torchjd.autojac import backward, jac_to_grad
    except ImportError as e:  # torchjd needs Python >= 3.10
        raise ImportError(
            f"gradient-aggregation strategies need torchjd: pip install "
            f"'torchjd[quadprog-projector]==0.18.0' (Python >= 3.10) ({e})"
        ) from None
    return agg, backward, jac_to_grad


def _build(name: str, options: Mapping[str, Any]):
    agg, _, _ = _torchjd()
    if name == "upgrad":
        return agg.UPGrad()
    if name == "pcgrad":
        return agg.PCGrad()
    if name == "mgda":
        return agg.MGDA()
    if name == "imtl_g":
        return agg.IMTLG()
    if name == "aligned_mtl":
        return agg.AlignedMTL(scale_mode=str(options.get("scale_mode", "min")))
    if name == "dualproj":
        return agg.DualProj()
    if name == "cagrad":
        return agg.CAGrad(c=float(options.get("c", 0.5)))
    raise KeyError(name)


#: registered strategy name -> torchjd aggregator class name
AGGREGATORS = {
    "upgrad": "UPGrad",
    "pcgrad": "PCGrad",
    "mgda": "MGDA",
    "imtl_g": "IMTLG",
    "aligned_mtl": "AlignedMTL",
    "dualproj": "DualProj",
    "cagrad": "CAGrad",
}


def make_aggregator(name: str, **options):
    """The torchjd aggregator of strategy ``name`` (a key of :data:`AGGREGATORS`)."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator '{name}'; expected one of {sorted(AGGREGATORS)}")
    return _build(name, options)


class AggregationWeighting(SlotWeighting):
    """Jacobian descent on the shared parameters with a torchjd aggregator (module docstring).

    Args:
        tasks, groups: see :class:`~galw_d2.galw.weighting.slots.SlotWeighting`.
        aggregator: a key of :data:`AGGREGATORS`.
        jacobian: "rows" (one ``autograd.grad`` per row) or "vmap" (torchjd's autojac, all rows at once).
        shared_params: regexes of theta_m ([] = ``GALW.RECORD.SHARED_PARAMS``).
        options: aggregator options (``c`` of CAGrad, ``scale_mode`` of Aligned-MTL).

    No learned state (PCGrad draws its order from the global torch generator).
    """

    needs_shared_parameters = True

    def __init__(
        self,
        tasks: Sequence[str],
        groups: Optional[Sequence[Sequence[str]]] = None,
        *,
        aggregator: str,
        jacobian: str = "rows",
        shared_params: Sequence[str] = (),
        options: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__(tasks, groups)
        self.aggregator_name = str(aggregator)
        self.aggregator = make_aggregator(self.aggregator_name, **dict(options or {}))
        if jacobian not in JACOBIAN_MODES:
            raise ValueError(f"GALW.AGGREGATION.JACOBIAN: '{jacobian}', expected one of {JACOBIAN_MODES}")
        self.jacobian = str(jacobian)
        self.shared_param_patterns = [str(p) for p in shared_params]
        self.register_buffer("last_weights", torch.ones(self.num_slots), persistent=False)
        self._info: Optional[Dict[str, float]] = None

    @classmethod
    def from_config(cls, cfg, tasks=None):
        a = cfg.GALW.AGGREGATION
        return {
            **slot_args(cfg, tasks),
            "aggregator": cls.strategy,
            "jacobian": str(a.JACOBIAN),
            "shared_params": list(a.SHARED_PARAMS),
            "options": {"c": float(a.CAGRAD_C), "scale_mode": str(a.ALIGNED_MTL_SCALE_MODE)},
        }

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        idx, vals = self.slot_losses(losses)
        total = sum(vals)
        # the aggregation weights are known only after backward(), which fills this dict in place
        # (GALWStep logs ``info`` after the backward); until then: the previous step's
        wl = self.last_weights.tolist()
        self._info = self.slot_info(losses, {g: wl[g] for g in idx})
        return total, self._info

    def effective_weights(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """Weights of the last aggregation (on theta_m; 1 before the first step)."""
        wl = self.last_weights.tolist()
        return {n: wl[self.slot_of[n]] for n in losses}

    def backward(self, total: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> None:
        require_single_process(f"strategy '{self.aggregator_name}'")
        _, jd_backward, jac_to_grad = _torchjd()
        shared = self.shared_parameters
        idx, rows = self.slot_losses(losses)
        if self.jacobian == "vmap":  # every row at once: torchjd's autojac through torch.vmap
            jd_backward(rows, inputs=shared, retain_graph=True)
        else:
            self._row_by_row_jacobian(rows, shared)
        total.backward()  # task-specific parameters: the plain sum's gradient
        for p in shared:  # theta_m: the aggregation instead of the sum
            p.grad = None
        weights = jac_to_grad(shared, self.aggregator)
        if weights is not None:
            w = weights.detach().float().cpu()
            for j, g in enumerate(idx):
                self.last_weights[g] = w[j]
            if self._info is not None:
                self._info.update(self.slot_info(losses, {g: float(w[j]) for j, g in enumerate(idx)}))

    @staticmethod
    def _row_by_row_jacobian(rows, shared) -> None:
        """Fill ``p.jac`` (K, *p.shape) of every shared parameter, one ``autograd.grad`` per row.

        torchjd's own sequential mode (``parallel_chunk_size=1``) differentiates ALL rows at every call
        with a one-hot ``grad_outputs``, so each call walks the graph of every task (zeros included);
        differentiating each row's loss alone walks only its task's graph (measured: ~0.06 s -> ~0.03 s
        per row on ROI-AlignPS* tiny). ``.jac`` is the field ``torchjd.autojac.jac_to_grad`` reads.
        """
        per_row = [torch.autograd.grad(r, shared, retain_graph=True, allow_unused=True) for r in rows]
        for j, p in enumerate(shared):
            p.jac = torch.stack([g[j] if g[j] is not None else torch.zeros_like(p) for g in per_row])
        del per_row

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, aggregator={self.aggregator!r}, jacobian={self.jacobian}"


def _register(strategy: str, cls_name: str, doc: str):
    cls = type(cls_name, (AggregationWeighting,), {"strategy": strategy, "__doc__": doc, "__module__": __name__})
    WEIGHTING_REGISTRY.register(strategy)(cls)
    return cls


UPGradWeighting = _register("upgrad", "UPGradWeighting", "UPGrad (Quinton & Rey 2024) through torchjd.")
PCGradWeighting = _register("pcgrad", "PCGradWeighting", "PCGrad (Yu et al., NeurIPS 2020) through torchjd.")
MGDAWeighting = _register("mgda", "MGDAWeighting", "MGDA (Sener & Koltun, NeurIPS 2018) through torchjd.")
IMTLGWeighting = _register("imtl_g", "IMTLGWeighting", "IMTL-G (Liu et al., ICLR 2021) through torchjd.")
AlignedMTLWeighting = _register(
    "aligned_mtl", "AlignedMTLWeighting", "Aligned-MTL (Senushkin et al., CVPR 2023) through torchjd."
)
DualProjWeighting = _register("dualproj", "DualProjWeighting", "DualProj (Quinton & Rey 2024) through torchjd.")
CAGradWeighting = _register(
    "cagrad", "CAGradWeighting", "CAGrad (Liu et al., NeurIPS 2021) through torchjd (needs cvxpy, clarabel)."
)
__all__ += [
    "UPGradWeighting",
    "PCGradWeighting",
    "MGDAWeighting",
    "IMTLGWeighting",
    "AlignedMTLWeighting",
    "DualProjWeighting",
    "CAGradWeighting",
]
