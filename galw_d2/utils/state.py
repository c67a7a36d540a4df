"""Deferred state updates of stateful losses (OIM lookup tables and queues).

A loss such as OIM must update its table with the features of the current step, but not inside
autograd backward: GALW's gradient probes call ``torch.autograd.grad`` on each task loss, and an update
hidden in backward would run once per probe (SPEC §1). Modules instead queue the update during forward
and expose ``apply_pending_updates()``; the trainer calls :func:`apply_pending_updates` once after the
optimizer step.
"""

import torch

__all__ = ["apply_pending_updates"]


@torch.no_grad()
def apply_pending_updates(model: torch.nn.Module) -> int:
    """Call ``apply_pending_updates()`` on every submodule of ``model`` that defines it.

    Works through DistributedDataParallel wrappers. Returns how many modules were called.
    Convention: only the stateful leaf modules define the method (a container that also defined it
    would be called in addition to its children).
    """
    inner = model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
    n = 0
    for m in inner.modules():
        fn = getattr(m, "apply_pending_updates", None)
        if callable(fn):
            fn()
            n += 1
    return n
