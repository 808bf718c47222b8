"""Interoperability with diffusers / ppdiffusers folders and Stable Diffusion 2.x weights."""
from .diffusers import (load_autoencoder, load_unet, save_autoencoder, save_unet,  # noqa: F401
                        unet_kwargs_from_diffusers)
from .stable_diffusion import StableDiffusion  # noqa: F401
