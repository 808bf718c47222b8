"""VQ autoencoder: encoder, vector quantizer with a learned codebook, decoder (VQ-GAN / LDM ``VQModel``)."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .autoencoder_blocks import Decoder, Encoder


class VectorQuantizer(nn.Layer):
    """Nearest-codebook-entry quantization with a straight-through gradient.

    Args:
        num_codes: codebook size K; code_dim: width D of each code.
        beta: commitment weight: loss = ||sg[z] - q||^2 + beta ||z - sg[q]||^2 (means).

    Tracks code usage: ``code_counts`` (K,) counts assignments since :meth:`reset_usage`
    (training mode only); :meth:`usage` is the fraction of codes used at least once.
    Shapes: z (B, D, h, w) -> (q (B, D, h, w), loss scalar, info dict with ``indices`` (B, h, w),
    ``perplexity`` (scalar)).
    """

    def __init__(self, num_codes: int, code_dim: int, beta: float = 0.25):
        super().__init__()
        self.num_codes, self.code_dim, self.beta = num_codes, code_dim, beta
        self.embedding = nn.Embedding(num_codes, code_dim, weight_attr=paddle.ParamAttr(
            initializer=nn.initializer.Uniform(-1.0 / num_codes, 1.0 / num_codes)))
        self.register_buffer("code_counts", paddle.zeros([num_codes], dtype="int64"), persistable=False)

    def reset_usage(self):
        self.code_counts.set_value(paddle.zeros([self.num_codes], dtype="int64"))

    def usage(self) -> float:
        """Fraction of the codebook used since the last reset."""
        return float((self.code_counts > 0).astype("float32").mean())

    def lookup(self, indices: paddle.Tensor) -> paddle.Tensor:
        """(B, h, w) int64 code indices -> (B, D, h, w) codes."""
        return self.embedding(indices).transpose([0, 3, 1, 2])

    def forward(self, z) -> Tuple[paddle.Tensor, paddle.Tensor, Dict[str, paddle.Tensor]]:
        b, d, h, w = z.shape
        zf = z.transpose([0, 2, 3, 1]).reshape([-1, d])
        e = self.embedding.weight
        dist = (zf ** 2).sum(1, keepdim=True) - 2 * paddle.matmul(zf, e, transpose_y=True) + (e ** 2).sum(1)
        idx = paddle.argmin(dist, axis=1)
        q = paddle.gather(e, idx).reshape([b, h, w, d]).transpose([0, 3, 1, 2])
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(q.detach(), z)
        q = z + (q - z).detach()
        counts = paddle.bincount(idx, minlength=self.num_codes)
        if self.training:
            self.code_counts.set_value(self.code_counts + counts.astype("int64"))
        p = counts.astype("float32") / float(idx.shape[0])
        perplexity = paddle.exp(-(p * paddle.log(p + 1e-10)).sum())
        return q, loss, {"indices": idx.reshape([b, h, w]), "perplexity": perplexity}


class VQModel(nn.Layer):
    """VQ-regularised autoencoder (diffusers names: ``encoder``, ``quant_conv``, ``quantize.embedding``,
    ``post_quant_conv``, ``decoder``).

    Args:
        in_channels, out_channels: image channels.
        block_channels: channels per level; downsampling factor f = 2 ** (len - 1).
        layers_per_block, norm_groups, mid_attention: as :class:`AutoencoderKL`.
        latent_channels: encoder output channels; embed_dim: code width D (default = latent_channels).
        num_codes: codebook size K; beta: commitment weight.
        scaling_factor: latent scale used by diffusion (stored only).

    Shapes: encode (B, 3, H, W) -> (B, D, H/f, W/f) (pre-quantization);
    quantize -> (q, loss, info); decode (B, D, h, w) -> (B, 3, h*f, w*f);
    forward -> (reconstruction, vq loss, info).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, block_channels: Sequence[int] = (64, 128, 256),
                 layers_per_block: int = 2, latent_channels: int = 3, embed_dim: int = None,
                 num_codes: int = 8192, beta: float = 0.25, norm_groups: int = 32, mid_attention: bool = True,
                 scaling_factor: float = 1.0):
        super().__init__()
        embed_dim = embed_dim or latent_channels
        self.config = dict(in_channels=in_channels, out_channels=out_channels, block_channels=list(block_channels),
                           layers_per_block=layers_per_block, latent_channels=latent_channels,
                           embed_dim=embed_dim, num_codes=num_codes, beta=beta, norm_groups=norm_groups,
                           mid_attention=mid_attention, scaling_factor=scaling_factor)
        self.scaling_factor = scaling_factor
        self.downsample_factor = 2 ** (len(block_channels) - 1)
        self.encoder = Encoder(in_channels, latent_channels, block_channels, layers_per_block, norm_groups,
                               mid_attention)
        self.quant_conv = nn.Conv2D(latent_channels, embed_dim, 1)
        self.quantize = VectorQuantizer(num_codes, embed_dim, beta)
        self.post_quant_conv = nn.Conv2D(embed_dim, latent_channels, 1)
        self.decoder = Decoder(latent_channels, out_channels, block_channels, layers_per_block, norm_groups,
                               mid_attention)

    def usage(self) -> float:
        """Fraction of codebook entries used (in training mode) since ``quantize.reset_usage()``."""
        return self.quantize.usage()

    def encode(self, x):
        if paddle.in_dynamic_mode() and (x.ndim != 4 or x.shape[2] % self.downsample_factor
                                         or x.shape[3] % self.downsample_factor):
            from ppengine.errors import InputError

            raise InputError(f"VQModel: images must be (B, C, H, W) with H, W divisible by "
                             f"{self.downsample_factor}, got {list(x.shape)}")
        return self.quant_conv(self.encoder(x))

    def decode(self, h, force_not_quantize: bool = False):
        """Decode pre-quantization latents (quantized first unless ``force_not_quantize``)."""
        if not force_not_quantize:
            h = self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(h))

    def decode_indices(self, indices):
        """(B, h, w) code indices -> image."""
        return self.decoder(self.post_quant_conv(self.quantize.lookup(indices)))

    def forward(self, x):
        q, loss, info = self.quantize(self.encode(x))
        return self.decoder(self.post_quant_conv(q)), loss, info
