"""Gradient-trend recorder (paper Eq. 6, Algorithm 1 lines 1-6). Pure torch (+ torch.distributed).

Every ``period`` iterations, :meth:`GradientTrendRecorder.probe` measures, for every task t, the
gradient magnitude over the M shared parameter tensors

    Gamma^t = (1/M) * sum_m || dL_t / dtheta_m ||_2

with ``torch.autograd.grad(L_t, shared, retain_graph=True)``. It must run BEFORE the main backward
(which frees the graph). ``autograd.grad`` returns the gradients instead of accumulating them into
``.grad`` and runs no AccumulateGrad node, so the main gradients (and DDP's gradient buckets) are
exactly as without probing; stateful losses only update after the optimizer step
(:mod:`galw_d2.utils.state`), so a probe cannot update them either. A parameter a task does not
reach counts as norm 0; a task whose loss has no graph gets Gamma = 0.

Probe values are averaged over ranks at each probe (one all-reduce of 2T numbers when
torch.distributed is initialised), so every rank holds the same state, then accumulated per epoch
(epoch = iteration // epoch_iters). :meth:`state_dict` / :meth:`load_state_dict` persist the sums
across resume; :meth:`trends` returns the trends file content::

    {"tasks": [name, ...],
     "gradient_magnitude": {name: [mean Gamma of epoch 0, epoch 1, ...; null = no probe], ...},
     "probe_counts": {name: [probes per epoch, ...]},
     "settings": {"period", "epoch_iters", "num_shared_params", "shared_params" (names),
                  "world_size", ... plus what the caller adds}}
"""

import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

__all__ = ["GradientTrendRecorder", "task_gradient_magnitudes"]


def task_gradient_magnitudes(losses: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Gamma (Eq. 6) of every loss over ``params``, without touching ``.grad``; keeps the graph."""
    out = {}
    params = list(params)
    for name, loss in losses.items():
        if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
            out[name] = 0.0
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        norms = [g.detach().float().norm() for g in grads if g is not None]
        out[name] = float(torch.stack(norms).sum()) / len(params) if norms else 0.0
    return out


class GradientTrendRecorder:
    """Per-epoch average of the per-task gradient magnitudes over shared parameters.

    Args:
        shared: ``(name, parameter)`` pairs of the shared parameters theta_1..theta_M (M >= 1).
        period: probe every ``period`` iterations (iterations ``0, period, 2 period, ...``).
        epoch_iters: iterations per epoch (>= 1).
        tasks: task order of the trends file; ``None`` = the loss dict's order at the first probe.
    """

    def __init__(
        self,
        shared: Sequence[Tuple[str, torch.Tensor]],
        period: int,
        epoch_iters: int,
        tasks: Optional[Sequence[str]] = None,
    ):
        shared = list(shared)
        if not shared:
            raise ValueError("GradientTrendRecorder: no shared parameters (check GALW.RECORD.SHARED_PARAMS)")
        if int(period) < 1 or int(epoch_iters) < 1:
            raise ValueError(f"GradientTrendRecorder: period ({period}) and epoch_iters ({epoch_iters}) must be >= 1")
        self.shared_names = [n for n, _ in shared]
        self.params = [p for _, p in shared]
        self.period = int(period)
        self.epoch_iters = int(epoch_iters)
        self.tasks: List[str] = list(tasks) if tasks else []
        self.sums: Dict[str, List[float]] = {t: [] for t in self.tasks}
        self.counts: Dict[str, List[int]] = {t: [] for t in self.tasks}
        self.last_probe_iter = -1

    def should_probe(self, iteration: int) -> bool:
        return iteration % self.period == 0 and iteration != self.last_probe_iter

    def epoch_of(self, iteration: int) -> int:
        return iteration // self.epoch_iters

    def _ensure(self, names: Sequence[str], epoch: int) -> None:
        for n in names:
            if n not in self.sums:
                self.tasks.append(n)
                self.sums[n] = []
                self.counts[n] = []
        for n in self.tasks:
            while len(self.sums[n]) <= epoch:
                self.sums[n].append(0.0)
                self.counts[n].append(0)

    def probe(self, losses: Mapping[str, torch.Tensor], iteration: int) -> Dict[str, float]:
        """Measure and accumulate Gamma of every loss at ``iteration``; returns the rank-mean values.

        Every rank must call it at the same iterations with the same loss names (collective).
        """
        if not self.tasks:
            self.tasks = list(losses)
            self.sums = {t: [] for t in self.tasks}
            self.counts = {t: [] for t in self.tasks}
        new = [n for n in losses if n not in self.sums]
        if new:
            raise KeyError(f"GradientTrendRecorder: loss(es) {new} were not in the first probe's tasks {self.tasks}")
        local = task_gradient_magnitudes(losses, self.params)
        vals = torch.zeros(2, len(self.tasks), dtype=torch.float64)
        for i, t in enumerate(self.tasks):
            if t in local:
                vals[0, i] = local[t]
                vals[1, i] = 1.0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dev = self.params[0].device if dist.get_backend() == "nccl" else torch.device("cpu")
            v = vals.to(dev)
            dist.all_reduce(v)
            vals = v.cpu()
        epoch = self.epoch_of(iteration)
        self._ensure([], epoch)
        out = {}
        for i, t in enumerate(self.tasks):
            c = vals[1, i].item()
            if c > 0:
                g = vals[0, i].item() / c
                self.sums[t][epoch] += g
                self.counts[t][epoch] += 1
                out[t] = g
        self.last_probe_iter = iteration
        return out

    def gradient_magnitude(self, max_epoch: Optional[int] = None) -> Dict[str, List[Optional[float]]]:
        """Per-task list of per-epoch means (``None`` where the epoch had no probe), epochs < max_epoch."""
        out = {}
        for t in self.tasks:
            s, c = self.sums[t], self.counts[t]
            n = len(s) if max_epoch is None else min(len(s), max_epoch)
            out[t] = [s[e] / c[e] if c[e] else None for e in range(n)]
        return out

    def trends(self, settings: Optional[dict] = None, max_epoch: Optional[int] = None) -> dict:
        ws = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        st = {
            "period": self.period,
            "epoch_iters": self.epoch_iters,
            "num_shared_params": len(self.params),
            "shared_params": self.shared_names,
            "world_size": ws,
            "gamma": "mean over M of L2 norms (Eq. 6)",
        }
        st.update(settings or {})
        counts = {t: list(self.counts[t][: (max_epoch or len(self.counts[t]))]) for t in self.tasks}
        return {
            "tasks": list(self.tasks),
            "gradient_magnitude": self.gradient_magnitude(max_epoch),
            "probe_counts": counts,
            "settings": st,
        }

    def write(self, path: str, settings: Optional[dict] = None) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.trends(settings), f, indent=1)
        os.replace(tmp, path)
        return path

    def state_dict(self) -> dict:
        return {
            "tasks": list(self.tasks),
            "sums": {t: list(v) for t, v in self.sums.items()},
            "counts": {t: list(v) for t, v in self.counts.items()},
            "period": self.period,
            "epoch_iters": self.epoch_iters,
            "last_probe_iter": self.last_probe_iter,
            "shared_params": list(self.shared_names),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("shared_params") and list(state["shared_params"]) != self.shared_names:
            raise ValueError(
                "GradientTrendRecorder: the checkpoint's shared parameters differ from this model's "
                f"({len(state['shared_params'])} vs {len(self.shared_names)} tensors)"
            )
        if int(state["epoch_iters"]) != self.epoch_iters:
            raise ValueError(
                f"GradientTrendRecorder: checkpoint epoch_iters {state['epoch_iters']} != {self.epoch_iters}"
            )
        self.tasks = list(state["tasks"])
        self.sums = {t: [float(x) for x in v] for t, v in state["sums"].items()}
        self.counts = {t: [int(x) for x in v] for t, v in state["counts"].items()}
        self.last_probe_iter = int(state.get("last_probe_iter", -1))
