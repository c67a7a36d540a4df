"""Fast Adaptive Multitask Optimization (FAMO).

B. Liu, Y. Feng, P. Stone, Q. Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023
(Sec. 3; public code github.com/Cranial-XIX/FAMO, ``famo.py``). Task weights ``z = softmax(xi)`` of
learned logits ``xi`` (init 0); with ``D_i = L_i - b_i + eps`` (``b_i`` a lower bound of L_i, 0 by
default) the model is trained on

    total = c sum_i z_i log D_i,   c = (sum_i z_i / D_i)^(-1) (a constant: no gradient)

whose gradient is ``sum_i (c z_i / D_i) grad L_i``, a convex combination of the task gradients
(effective weight of L_i: ``c z_i / D_i``). After the model step the logits move so that tasks whose
log loss fell less get more weight: with ``delta_i = log D_i(before) - log D_i(after)``, one Adam step
(lr ``GALW.FAMO.LR`` = 0.025, L2 weight decay ``GALW.FAMO.GAMMA``, the paper's regulariser gamma) on
the gradient ``d (z . delta) / d xi = z * (delta - z . delta)``.

"After" -- our one deviation, documented: the public code re-runs the model on the SAME batch after
``optimizer.step()`` to measure the new losses (an extra forward per step). A detectron2 step has no
second forward (and person-search models queue OIM-table updates in their forward), so here "after"
is the next iteration's losses (a new batch): :meth:`after_step` stores ``log D`` of the step, the
next :meth:`forward` takes the Adam step before weighting (the same order as the public loop: update,
then the next step's weighting). The delta is then noisier (batch-to-batch variation) but costs
nothing. The logits are NOT in the model optimizer (FAMO prescribes its own Adam): they and the Adam
moments are buffers (checkpoints restore them); the Adam update is written out here (Kingma & Ba
2015, identical to ``torch.optim.Adam`` with ``weight_decay``; tested against it).

Losses must stay above ``b_i`` (log). A loss near ``b_i`` takes almost all the weight (``c z_i / D_i``
~ 1): a margin triplet loss at 0, or an OIM loss on a repeated batch (4.25 -> 0.0009 in one step on
ROI-AlignPS* tiny, weight 0.994 after 6 steps): set its ``b_i`` below its minimum
(``GALW.FAMO.MIN_LOSSES: ["loss_triplet=-0.1"]``) or put it in a group with other tasks. With
``GALW.GROUPS`` one logit per group (``L_g = sum_{i in g} L_i``). Cost: O(K) scalars per step.
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from .base import WEIGHTING_REGISTRY, parse_name_values
from .slots import SlotWeighting, slot_args

__all__ = ["FAMO"]


@WEIGHTING_REGISTRY.register("famo")
class FAMO(SlotWeighting):
    """FAMO (module docstring).

    Args:
        tasks, groups: see :class:`~galw_d2.galw.weighting.slots.SlotWeighting`.
        lr: Adam learning rate of the logits (the paper / public code: 0.025).
        gamma: L2 weight decay of the logits (the public run scripts: 0.001; ``famo.py``'s default 0.01).
        eps: added to ``L - b`` before the log (public code: 1e-8).
        min_losses: task name -> lower bound ``b`` (a group's bound is the sum of its tasks'); others 0.
        betas, adam_eps: Adam's (torch defaults).

    State (buffers, in checkpoints): ``logits`` (S,), ``adam_m``, ``adam_v`` (S,), ``adam_step`` (),
    ``prev_log_d`` (S,) log D of the previous step, ``prev_valid`` (S,) bool (slots with a pending update).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        groups: Optional[Sequence[Sequence[str]]] = None,
        *,
        lr: float = 0.025,
        gamma: float = 0.001,
        eps: float = 1e-8,
        min_losses: Optional[Mapping[str, float]] = None,
        betas: Tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
    ):
        super().__init__(tasks, groups)
        if float(lr) < 0 or float(gamma) < 0 or not float(eps) > 0:
            raise ValueError(f"GALW.FAMO: need LR >= 0, GAMMA >= 0, EPS > 0; got {lr}, {gamma}, {eps}")
        unknown = [t for t in (min_losses or {}) if t not in self.slot_of]
        if unknown:
            raise ValueError(f"GALW.FAMO.MIN_LOSSES: unknown task(s) {unknown}; known tasks: {self.tasks}")
        self.lr, self.gamma, self.eps = float(lr), float(gamma), float(eps)
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = float(adam_eps)
        s = self.num_slots
        b = torch.zeros(s)
        for t, v in (min_losses or {}).items():
            b[self.slot_of[t]] += float(v)
        self.register_buffer("min_loss", b, persistent=False)
        self.register_buffer("logits", torch.zeros(s))
        self.register_buffer("adam_m", torch.zeros(s))
        self.register_buffer("adam_v", torch.zeros(s))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_log_d", torch.zeros(s))
        self.register_buffer("prev_valid", torch.zeros(s, dtype=torch.bool))
        self.register_buffer("last_weights", torch.ones(s), persistent=False)

    @classmethod
    def from_config(cls, cfg, tasks=None):
        f = cfg.GALW.FAMO
        return {
            **slot_args(cfg, tasks),
            "lr": float(f.LR),
            "gamma": float(f.GAMMA),
            "eps": float(f.EPS),
            "min_losses": parse_name_values(f.MIN_LOSSES, "GALW.FAMO.MIN_LOSSES", float),
        }

    # ------------------------------------------------------------------ pieces
    def log_d(self, idx, vals) -> torch.Tensor:
        """(len(idx),) ``log(L_g - b_g + eps)``; ``ValueError`` naming a slot whose loss is <= b - eps."""
        v = torch.stack([x.float() for x in vals])
        d = v - self.min_loss[idx].to(v.device) + self.eps
        bad = [
            (self.groups[g], float(x))
            for g, x in zip(idx, v.detach().tolist())
            if not x - float(self.min_loss[g]) + self.eps > 0
        ]
        if bad:
            raise ValueError(
                f"FAMO takes log(L - b): loss(es) {bad} are not above their lower bound b "
                f"(GALW.FAMO.MIN_LOSSES, default 0); set b below the loss's minimum"
            )
        return torch.log(d)

    @torch.no_grad()
    def update_logits(self, delta: torch.Tensor) -> None:
        """One Adam step on the logits with gradient ``z * (delta - z . delta)`` (+ gamma * xi).

        Args:
            delta: (S,) ``log D(before) - log D(after)`` (0 for slots without a measurement).
        """
        xi = self.logits
        z = torch.softmax(xi, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.gamma * xi  # softmax Jacobian^T delta, + L2 decay
        b1, b2 = self.betas
        self.adam_step += 1
        t = int(self.adam_step)
        self.adam_m.mul_(b1).add_(grad, alpha=1 - b1)
        self.adam_v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.adam_m / (1 - b1**t)
        v_hat = self.adam_v / (1 - b2**t)
        xi.sub_(self.lr * m_hat / (v_hat.sqrt() + self.adam_eps))

    # ------------------------------------------------------------------ the method
    def forward(self, losses: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        idx, vals = self.slot_losses(losses)
        log_d = self.log_d(idx, vals)
        if self.training and bool(self.prev_valid.any()):
            # the update of the previous step, measured now ("after" = this batch; module docstring)
            delta = torch.zeros_like(self.logits)
            cur = torch.zeros_like(self.logits)
            cur[idx] = log_d.detach().to(cur)
            both = self.prev_valid.clone()
            both[[g for g in range(self.num_slots) if g not in idx]] = False
            delta[both] = self.prev_log_d[both] - cur[both]
            self.update_logits(delta)
            self.prev_valid.zero_()
        z = torch.softmax(self.logits[idx], dim=0).to(log_d)
        d = torch.exp(log_d.detach())
        c = 1.0 / (z / d).sum()
        total = (c * z * log_d).sum()
        w = (c * z / d).tolist()  # d total / d L_g
        self.last_weights[idx] = torch.tensor(w, device=self.last_weights.device)
        info = self.slot_info(losses, dict(zip(idx, w)))
        info.update({f"galw/famo/z/{'+'.join(self.groups[g])}": float(x) for g, x in zip(idx, z.tolist())})
        return total, info

    def effective_weights(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        w = self.last_weights.tolist()
        return {n: w[self.slot_of[n]] for n in losses}

    @torch.no_grad()
    def after_step(self, losses: Mapping[str, torch.Tensor], iteration: int) -> None:
        idx, vals = self.slot_losses(losses)
        log_d = self.log_d(idx, [v.detach() for v in vals])
        self.prev_log_d[idx] = log_d.to(self.prev_log_d)
        self.prev_valid.zero_()
        self.prev_valid[idx] = True

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lr={self.lr}, gamma={self.gamma}, eps={self.eps}"
