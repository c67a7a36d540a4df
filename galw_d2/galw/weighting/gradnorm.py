"""GradNorm: gradient normalization for adaptive loss balancing.

Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich, "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018, Sec. 3. Learned weights ``w_i`` (init 1); the
model is trained on ``sum_i w_i L_i``. With W the shared weights,

    G_i = || grad_W (w_i L_i) ||_2 = w_i ||grad_W L_i||_2,   G_bar = mean_i G_i,
    r_i = Ltilde_i / mean_j Ltilde_j,   Ltilde_i = L_i(t) / L_i(0)          (inverse training rate)
    L_grad = sum_i | G_i - G_bar * r_i^alpha |_1                              (Eq. 2)

with the target ``G_bar r_i^alpha`` a constant; ``grad_w L_grad`` (and only it) updates ``w``: here
``sign(G_i - target_i) ||grad_W L_i||``, written into ``w.grad`` and applied by the model optimizer's
learned-weights group (lr ``SOLVER.BASE_LR x GALW.LR_FACTOR``, no weight decay). After the step the
weights are renormalised to ``sum_i w_i = T`` (T = number of tasks; :meth:`after_step`). Our one
addition: before that, ``w`` is projected onto ``w >= GALW.GRADNORM.MIN_WEIGHT`` (default 0): the paper
does not discuss negative weights, which would make the model ascend that task's loss (they occur on
the toy model within 10 steps at lr 0.05 with momentum). ``L_i(0)`` is
the loss of the first training step (a buffer, saved in checkpoints); ``alpha`` = ``GALW.GRADNORM.ALPHA``
(the paper: 1.5 for NYUv2, 0.12 for its synthetic tasks).

W: the paper uses the last shared layer, for cost. Here W = the parameters matched by
``GALW.GRADNORM.SHARED_PARAMS`` (empty = ``GALW.RECORD.SHARED_PARAMS``, ResNet res2..res4); set it to
the last shared block (e.g. ``["^backbone\\.res4\\.5\\."]``) for the paper's choice and a cheaper step.
Cost: one backward of each task's loss to W every step, on top of the usual backward (measured with
tools/method_cost.py on ROI-AlignPS* tiny, 10 tasks, W = res2..res4, CPU: 2.6-2.8x the plain step).

With ``GALW.GROUPS`` one weight per group and ``G_g = w_g ||grad_W sum_{i in g} L_i||``, T = number of
groups (GALW's grouping of a gradient-magnitude method: tasks whose gradients change alike share w).
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .base import WEIGHTING_REGISTRY
from .slots import SlotWeighting, require_single_process, slot_args

__all__ = ["GradNorm"]


@WEIGHTING_REGISTRY.register("gradnorm")
class GradNorm(SlotWeighting):
    """GradNorm (module docstring).

    Args:
        tasks, groups: see :class:`~galw_d2.galw.weighting.slots.SlotWeighting`.
        alpha: the asymmetry alpha of Eq. 2 (>= 0; 0 = equal gradient norms).
        shared_params: regexes of W ([] = ``GALW.RECORD.SHARED_PARAMS``).
        min_weight: floor of w applied before the renormalisation (>= 0, < 1).

    State: ``weight`` (parameter (S,)), ``initial_loss`` (S,) and ``has_initial`` (S,) bool (buffers);
    ``last_gradnorm_loss`` () the L_grad of the last step (logged).
    """

    needs_shared_parameters = True

    def __init__(
        self,
        tasks: Sequence[str],
        groups: Optional[Sequence[Sequence[str]]] = None,
        *,
        alpha: float = 1.5,
        shared_params: Sequence[str] = (),
        min_weight: float = 0.0,
    ):
        super().__init__(tasks, groups)
        if not float(alpha) >= 0:
            raise ValueError(f"GALW.GRADNORM.ALPHA must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        if not 0.0 <= float(min_weight) < 1.0:
            raise ValueError(f"GALW.GRADNORM.MIN_WEIGHT must be in [0, 1), got {min_weight}")
        self.min_weight = float(min_weight)
        self.shared_param_patterns = [str(p) for p in shared_params]
        s = self.num_slots
        self.weight = nn.Parameter(torch.ones(s))
        self.register_buffer("initial_loss", torch.ones(s))
        self.register_buffer("has_initial", torch.zeros(s, dtype=torch.bool))
        self.register_buffer("last_gradnorm_loss", torch.zeros(()), persistent=False)

    @classmethod
    def from_config(cls, cfg, tasks=None):
        return {
            **slot_args(cfg, tasks),
            "alpha": float(cfg.GALW.GRADNORM.ALPHA),
            "shared_params": list(cfg.GALW.GRADNORM.SHARED_PARAMS),
            "min_weight": float(cfg.GALW.GRADNORM.MIN_WEIGHT),
        }

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        idx, vals = self.slot_losses(losses)
        if self.training:
            with torch.no_grad():  # L_i(0): the first step each slot is seen
                for g, v in zip(idx, vals):
                    if not bool(self.has_initial[g]):
                        self.initial_loss[g] = float(v.detach())
                        self.has_initial[g] = True
        # w stays in the graph (DDP-style bookkeeping, the weighted total is logged); its gradient
        # from this total is replaced by the GradNorm gradient in backward()
        total = sum(self.weight[g] * v for g, v in zip(idx, vals))
        wl = self.weight.detach().tolist()
        info = self.slot_info(losses, {g: wl[g] for g in idx})
        info["galw/gradnorm/loss"] = float(self.last_gradnorm_loss)
        return total, info

    def effective_weights(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        wl = self.weight.detach().tolist()
        return {n: wl[self.slot_of[n]] for n in losses}

    def gradnorm_grad(self, idx: List[int], norms: torch.Tensor, loss_values: torch.Tensor) -> torch.Tensor:
        """d L_grad / d w (S,) from the per-slot gradient norms ``||grad_W L_g||`` and loss values.

        Args:
            idx: the present slots; norms, loss_values: (len(idx),) detached.
        """
        w = self.weight.detach()[idx].to(norms)
        g = w * norms  # G_i
        ratio = loss_values / self.initial_loss[idx].to(norms)  # Ltilde_i
        r = ratio / ratio.mean()
        target = g.mean() * r.pow(self.alpha)  # a constant (Sec. 3.2)
        self.last_gradnorm_loss.fill_(float((g - target).abs().sum()))
        out = torch.zeros_like(self.weight)
        out[idx] = (torch.sign(g - target) * norms).to(out)
        return out

    def backward(self, total: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> None:
        require_single_process("GradNorm")
        shared = self.shared_parameters
        idx, vals = self.slot_losses(losses)
        norms = []
        for v in vals:  # ||grad_W L_g||, before the main backward frees the graph
            grads = torch.autograd.grad(v, shared, retain_graph=True, allow_unused=True)
            sq = sum(float(gr.detach().float().pow(2).sum()) for gr in grads if gr is not None)
            norms.append(sq**0.5)
        total.backward()  # the model: grad of sum_i w_i L_i
        gw = self.gradnorm_grad(idx, torch.tensor(norms), torch.tensor([float(v.detach()) for v in vals]))
        self.weight.grad = gw.to(self.weight.device)  # replaces d total / d w = L_i

    @torch.no_grad()
    def after_step(self, losses: Mapping[str, torch.Tensor], iteration: int) -> None:
        # floor (our safeguard, module docstring), then renormalise: sum_i w_i = T (Sec. 3.2)
        self.weight.clamp_(min=self.min_weight)
        s = float(self.weight.sum())
        if s > 0:
            self.weight.mul_(self.num_slots / s)
        else:  # every weight at a floor of 0: start again from equal weights
            self.weight.fill_(1.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, min_weight={self.min_weight}"
