"""Training engine: :class:`GALWTrainer` (DefaultTrainer + GALW weighting and gradient recording)."""
from .trainer import GALWModel, GALWTrainer, build_loss_weighting, unwrap_galw

__all__ = ["GALWModel", "GALWTrainer", "build_loss_weighting", "unwrap_galw"]
