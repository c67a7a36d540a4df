"""ProtoNorm: prototype-weighted feature normalisation of OIMNet++ (Lee et al., ECCV 2022, Sec. 3.2).

BatchNorm standardises proposal features with the batch mean, which is dominated by the identities
that have many proposals in the batch (long-tailed identity distributions). ProtoNorm first averages
the features of each identity into a prototype and takes the mean over prototypes, so that every
identity counts once; the variance is the mean squared deviation of the samples from that prototype
mean (as in the authors' public code, cvlab-yonsei/OIMNetPlus). Features are then standardised with
these statistics before the L2 normalisation of the embedding.

Grouping (``prototype_groups``): labeled proposals of one identity form one prototype; every
unlabeled person proposal is its own prototype; all background proposals together form one prototype
(the public code groups them under the background label the same way).

Running statistics and distributed training: the batch statistics of a training forward are
queued (detached) and applied after the optimizer step by :meth:`ProtoNorm1d.apply_pending_updates`
(called by ``galw_d2.utils.state.apply_pending_updates``, like the OIM tables). That method gathers
the queued statistics of every rank, averages them and makes one exponential-moving-average step, so
all ranks hold identical running statistics (and a rank-0 checkpoint holds everybody's). The forward
itself normalises with local batch statistics, like detectron2's default (non-synchronised) BN: no
collective runs inside forward or backward, which keeps GALW's per-task ``torch.autograd.grad``
probes free of communication. The buffer names equal BatchNorm1d's, so checkpoints of the two are
interchangeable.
"""

from typing import List, Optional

import torch
from torch import nn

from .oim import all_gather_objects

__all__ = ["ProtoNorm1d", "prototype_statistics", "prototype_groups", "BACKGROUND_PID", "UNLABELED_PID"]

UNLABELED_PID = -1  # a person without identity (pushed to the OIM queue)
BACKGROUND_PID = -2  # a background RoI


def prototype_groups(pids: torch.Tensor) -> torch.Tensor:
    """Prototype id of each row from the ROI-head identity codes.

    Args:
        pids: (N,) int64; >= 0 labeled identity, -1 unlabeled person, -2 background.
    Returns:
        (N,) int64 group ids: the identity for labeled rows, -2 for every background row (one
        prototype), and a distinct id <= -3 for each unlabeled row (a prototype of its own).
    """
    if pids.dim() != 1:
        raise ValueError(f"prototype_groups: pids must be 1-D, got shape {tuple(pids.shape)}")
    bad = pids < BACKGROUND_PID
    if bool(bad.any()):
        raise ValueError(f"prototype_groups: pid {int(pids[bad][0])} is not >= 0, -1 (unlabeled) or -2 (background)")
    groups = pids.clone().long()
    unl = pids == UNLABELED_PID
    groups[unl] = -3 - torch.arange(int(unl.sum()), device=pids.device)
    return groups


def prototype_statistics(x: torch.Tensor, groups: torch.Tensor):
    """ProtoNorm batch statistics (differentiable).

    Args:
        x: (N, C) features.
        groups: (N,) int64 prototype ids (see :func:`prototype_groups`).
    Returns:
        mean (C,): the mean of the K per-group means (prototypes), each group weighted 1/K;
        var (C,): mean over the N samples of (x - mean)^2 (biased, as BatchNorm normalises with).
    """
    if x.dim() != 2 or groups.shape != (x.shape[0],):
        raise ValueError(
            f"prototype_statistics: need x (N, C) and groups (N,), got {tuple(x.shape)} and {tuple(groups.shape)}"
        )
    uniq, inv = torch.unique(groups, return_inverse=True)
    sums = x.new_zeros(len(uniq), x.shape[1]).index_add_(0, inv, x)
    counts = torch.bincount(inv, minlength=len(uniq)).to(x.dtype).unsqueeze(1)
    mean = (sums / counts).mean(dim=0)
    var = ((x - mean) ** 2).mean(dim=0)
    return mean, var


class ProtoNorm1d(nn.Module):
    """Drop-in replacement of ``nn.BatchNorm1d`` that standardises with prototype statistics in training.

    Args:
        num_features: C.
        eps: added to the variance.
        momentum: EMA factor of the running statistics (BatchNorm's 0.1).
        affine: learn a per-channel scale and shift after the standardisation (as the BatchNorm it
            replaces in the NAE projectors; the norm of the NAE embedding is the detection logit, so the
            scale must stay learnable).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
        super().__init__()
        if num_features <= 0 or not 0.0 < momentum <= 1.0:
            raise ValueError(
                f"ProtoNorm1d: need num_features > 0 and 0 < momentum <= 1, got {num_features}, {momentum}"
            )
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self._pending: List[tuple] = []

    def forward(self, x: torch.Tensor, groups: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args:
            x: (N, C) features.
            groups: (N,) prototype ids; required in training, ignored in eval.
        Returns:
            (N, C): standardised with the batch prototype statistics (training) or the running
            statistics (eval), then scaled and shifted when affine.
        """
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"ProtoNorm1d: expected (N, {self.num_features}) input, got {tuple(x.shape)}")
        if self.training:
            if groups is None:
                raise ValueError(
                    "ProtoNorm1d: training needs the prototype group of every row (groups=...); "
                    "the NAE ROI heads pass prototype_groups(pids)"
                )
            if x.shape[0] == 0:
                return x
            mean, var = prototype_statistics(x, groups.to(x.device))
            n = x.shape[0]
            if n > 1:
                # Running variance: unbiased, as BatchNorm keeps it.
                self._pending.append((mean.detach().float().cpu(), (var.detach() * n / (n - 1)).float().cpu()))
        else:
            if self._pending:
                self.apply_pending_updates()  # stand-alone use: a trainer would have applied them already
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y

    def has_pending(self) -> bool:
        return bool(self._pending)

    @torch.no_grad()
    def apply_pending_updates(self) -> None:
        """One EMA step of the running statistics with the queued batch statistics of every rank (their
        average), then clear the queue. Every rank ends with identical running statistics."""
        local = [(m, v) for m, v in self._pending]
        self._pending = []
        stats = [s for part in all_gather_objects(local) for s in part]
        if not stats:
            return
        mean = torch.stack([m for m, _ in stats]).mean(0).to(self.running_mean)
        var = torch.stack([v for _, v in stats]).mean(0).to(self.running_var)
        a = self.momentum
        self.running_mean.mul_(1.0 - a).add_(a * mean)
        self.running_var.mul_(1.0 - a).add_(a * var)
        self.num_batches_tracked += 1

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"
