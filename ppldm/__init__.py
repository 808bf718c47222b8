"""ppldm: latent diffusion (autoencoders, cross-attention UNet, samplers, conditioners) in Paddle.

Importing the package registers its models, datasets and metrics with ppengine.
Each subpackage that registers something is imported here, explicitly.
"""
from . import conditioners, data, interop, metrics, models  # noqa: F401  (registers datasets, conditioners, checkers, models, StableDiffusion)
from . import export  # noqa: F401,E402  (declares the models' export components)
