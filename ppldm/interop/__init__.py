"""Interoperability with diffusers / ppdiffusers folders and Stable Diffusion weights (folders and single files)."""
from .diffusers import load_autoencoder, load_unet, save_autoencoder, save_unet, unet_kwargs_from_diffusers  # noqa: F401
from .single_file import load_single_file, read_single_file, save_single_file  # noqa: F401
from .stable_diffusion import StableDiffusion  # noqa: F401
