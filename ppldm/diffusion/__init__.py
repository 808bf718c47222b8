"""Diffusion: training objective, latent scaling, ppdiffusers samplers with guidance."""
from .gaussian import GaussianDiffusion, drop_condition  # noqa: F401
from .latent_scale import LatentScale  # noqa: F401
from .sampling import sample  # noqa: F401
from .schedulers import SAMPLERS, make_scheduler  # noqa: F401
