"""ppldm: latent diffusion (autoencoders, cross-attention UNet, samplers, conditioners) in Paddle.

Importing the package registers its models, datasets and metrics with ppengine, and declares the
models' export components (:mod:`ppldm.export`). Each subpackage that registers something is
imported here, explicitly.
"""
from . import conditioners, data, export, interop, metrics, models  # noqa: F401  (registers datasets, conditioners, checkers, models, StableDiffusion, export components)
