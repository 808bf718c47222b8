"""ppengine: the training engine shared by ppface3d and ppldm (config, registry, trainer,
checkpoints, logging, data-parallel launch, atomic file writing, loading a trained run for
inference). It knows nothing of faces or diffusion."""
from .quiet import importing_paddle as _importing_paddle

with _importing_paddle():  # paddle's import-time notices (OMP_NUM_THREADS, ccache) are not ours
    import paddle  # noqa: F401,E402

from . import optim  # noqa: F401,E402  (registers optimizers and LR schedules)
from .config import Config, load_config  # noqa: E402
from .errors import CheckpointError, ConfigError, InputError, PPError, TrainingDiverged  # noqa: E402
from .inference import load_for_inference  # noqa: E402
from .registry import CALLBACKS, DATASETS, LOSSES, LR_SCHEDULERS, METRICS, MODELS, OPTIMIZERS  # noqa: E402
from .trainer import Trainer, build_dataset, build_model  # noqa: E402

__all__ = [
    "Config", "load_config", "load_for_inference", "Trainer", "build_model", "build_dataset", "CheckpointError",
    "ConfigError", "InputError", "PPError", "TrainingDiverged", "CALLBACKS", "DATASETS", "LOSSES", "LR_SCHEDULERS", "METRICS",
    "MODELS", "OPTIMIZERS",
]
