"""AutoencoderKL: the latent-diffusion / Stable Diffusion VAE with a diagonal Gaussian posterior."""
from __future__ import annotations

from typing import Sequence, Tuple

import paddle
import paddle.nn as nn

from .autoencoder_blocks import Decoder, DiagonalGaussian, Encoder


class AutoencoderKL(nn.Layer):
    """KL-regularised autoencoder (diffusers names: ``encoder``, ``quant_conv``, ``post_quant_conv``,
    ``decoder``).

    Args:
        in_channels, out_channels: image channels (3).
        block_channels: channels per level; downsampling factor f = 2 ** (len - 1)
            (SD: 128, 256, 512, 512 -> f = 8; three levels -> f = 4).
        layers_per_block: residual blocks per encoder level (decoder: one more).
        latent_channels: channels C of the latent (SD: 4).
        norm_groups: GroupNorm groups (channels must be divisible by it).
        mid_attention: single-head self-attention in the middle blocks.
        scaling_factor: the latent scale used by diffusion (SD: 0.18215); stored, not applied here.

    Shapes: encode (B, 3, H, W) -> DiagonalGaussian over (B, C, H/f, W/f);
    decode (B, C, h, w) -> (B, 3, h*f, w*f); forward -> (reconstruction, posterior).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 block_channels: Sequence[int] = (128, 256, 512, 512), layers_per_block: int = 2,
                 latent_channels: int = 4, norm_groups: int = 32, mid_attention: bool = True,
                 scaling_factor: float = 0.18215):
        super().__init__()
        self.config = dict(in_channels=in_channels, out_channels=out_channels,
                           block_channels=list(block_channels), layers_per_block=layers_per_block,
                           latent_channels=latent_channels, norm_groups=norm_groups,
                           mid_attention=mid_attention, scaling_factor=scaling_factor)
        self.latent_channels = latent_channels
        self.scaling_factor = scaling_factor
        self.downsample_factor = 2 ** (len(block_channels) - 1)
        self.encoder = Encoder(in_channels, 2 * latent_channels, block_channels, layers_per_block,
                               norm_groups, mid_attention)
        self.decoder = Decoder(latent_channels, out_channels, block_channels, layers_per_block,
                               norm_groups, mid_attention)
        self.quant_conv = nn.Conv2D(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2D(latent_channels, latent_channels, 1)

    def encode(self, x: paddle.Tensor) -> DiagonalGaussian:
        """(B, in_channels, H, W) in [-1, 1] -> posterior over (B, C, H/f, W/f)."""
        if paddle.in_dynamic_mode() and (x.ndim != 4 or x.shape[2] % self.downsample_factor
                                         or x.shape[3] % self.downsample_factor):
            from ppengine.errors import InputError

            raise InputError(f"AutoencoderKL: images must be (B, C, H, W) with H, W divisible by "
                             f"{self.downsample_factor}, got {list(x.shape)}")
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: paddle.Tensor) -> paddle.Tensor:
        """(B, C, h, w) latent (unscaled) -> (B, out_channels, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: paddle.Tensor, sample_posterior: bool = True) -> Tuple[paddle.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior
