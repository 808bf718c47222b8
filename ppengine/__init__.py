"""ppengine: the training engine shared by ppface3d and ppldm (config, registry, trainer,
checkpoints, logging, data-parallel launch, atomic file writing, loading a trained run for
inference). It knows nothing of faces or diffusion."""
from . import optim  # noqa: F401  (registers optimizers and LR schedules)
from .config import Config, load_config
from .errors import CheckpointError, ConfigError, InputError, PPError, TrainingDiverged
from .inference import load_for_inference
from .registry import CALLBACKS, DATASETS, LOSSES, LR_SCHEDULERS, METRICS, MODELS, OPTIMIZERS
from .trainer import Trainer, build_dataset, build_model

__all__ = [
    "Config", "load_config", "load_for_inference", "Trainer", "build_model", "build_dataset", "CheckpointError",
    "ConfigError", "InputError", "PPError", "TrainingDiverged", "CALLBACKS", "DATASETS", "LOSSES", "LR_SCHEDULERS", "METRICS",
    "MODELS", "OPTIMIZERS",
]
