"""ppldm networks: autoencoders, the cross-attention UNet and their building blocks."""
from . import autoencoder_trainer, ldm  # noqa: F401,E402  (registers AutoencoderTrainer, LatentDiffusion)
from .attention import Attention, BasicTransformerBlock, SpatialTransformer, set_attention_type  # noqa: F401
from .autoencoder_blocks import Decoder, DiagonalGaussian, Encoder  # noqa: F401
from .autoencoder_kl import AutoencoderKL  # noqa: F401
from .unet import UNet  # noqa: F401
from .vq import VectorQuantizer, VQModel  # noqa: F401
