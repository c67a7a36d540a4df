"""Training engine: :class:`GALWTrainer` (DefaultTrainer + GALW), its step :class:`GALWStep`, the
:class:`GALWModel` wrapper, and :class:`PersonSearchTrainer` (+ person-search data and evaluation)."""

from .checkpoint import SafeCheckpointer
from .galw_model import GALWModel, unwrap_galw
from .optimizer import build_galw_optimizer, maybe_add_full_model_gradient_clipping
from .train_loop import GALWStep
from .trainer import GALWTrainer, build_recorder, epoch_iters_from_cfg, select_shared_parameters

__all__ = [
    "GALWModel",
    "GALWStep",
    "GALWTrainer",
    "SafeCheckpointer",
    "unwrap_galw",
    "build_galw_optimizer",
    "maybe_add_full_model_gradient_clipping",
    "build_recorder",
    "epoch_iters_from_cfg",
    "select_shared_parameters",
]
