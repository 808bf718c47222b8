"""DECA's detail branch: the detail encoder (image -> 128-d detail code) and the detail decoder
(detail code + expression + jaw pose -> UV displacement map).

    enc = DetailEncoder()                        # ResNet-50 -> 2048 -> 1024 -> 128 (DECA's E_detail)
    dec = DetailDecoder()                        # DECA's Generator: 181 -> 128x8x8 -> 1x256x256
    detail = enc(images)                         # images (B, 3, 224, 224) in [0, 1]
    uv_z = dec.displacement(detail, codes["exp"], codes["pose"][:, 3:])   # (B, 1, 256, 256)

Layouts and parameter names are DECA's (``decalib/models/encoders.py``, ``decoders.py``), so the
released ``E_detail`` / ``D_detail`` state dicts load name by name
(:mod:`ppface3d.models.deca_release`). The displacement map becomes normals and a dense mesh in
:mod:`ppface3d.models.displacement`.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn

from ppengine.errors import InputError

from .encoder import DECAResNetEncoder

N_DETAIL = 128  # DECA's detail code size
N_COND = 50 + 3  # DECA's decoder condition: expression (50) + jaw pose (3)


class DetailEncoder(DECAResNetEncoder):
    """DECA's ``E_detail``: :class:`~ppface3d.models.encoder.DECAResNetEncoder` with a 128-d output."""

    def __init__(self, n_detail: int = N_DETAIL, width: int = 64):
        super().__init__(n_detail, width=width)


class DetailDecoder(nn.Layer):
    """DECA's detail ``Generator``: a linear layer to 128 x 8 x 8, five (bilinear x2 upsample +
    3x3 conv + batch norm + LeakyReLU 0.2) stages to 16 x 256 x 256, a last 3x3 conv to one
    channel, tanh, times ``out_scale`` (DECA's ``max_z`` 0.01).

    The batch norms after the convolutions have epsilon 0.8: DECA writes ``nn.BatchNorm2d(C, 0.8)``,
    whose second argument is epsilon, and its released weights were trained with that.
    Names: ``l1.0`` (the linear layer), ``conv_blocks.<i>`` with DECA's indices (0 the first
    batch norm, 2/6/10/14/18 the upsampling convs, 21 the output conv).

    Args:
        latent_dim: input size (DECA: 128 detail + 50 expression + 3 jaw = 181).
        out_channels: 1 (a displacement along the normal).
        out_scale: tanh output scale (DECA: 0.01).
        out_size: output side, 8 x 2^k (DECA: 256, five stages; 128 = four).
        channels: the k + 1 channel counts from the 8 x 8 input to the last stage (default DECA's
            128, 128, 64, 64, 32, 16, cut to the stages there are); narrower ones for a CPU.
    """

    CHANNELS = (128, 128, 64, 64, 32, 16)

    def __init__(self, latent_dim: int = N_DETAIL + N_COND, out_channels: int = 1, out_scale: float = 0.01,
                 out_size: int = 256, channels=None):
        super().__init__()
        from ppengine.errors import ConfigError

        self.latent_dim = int(latent_dim)
        self.out_scale = float(out_scale)
        self.init_size = 8
        n_up = int(np.log2(max(int(out_size), 1) / self.init_size)) if int(out_size) >= 16 else 0
        if n_up < 1 or self.init_size * 2 ** n_up != int(out_size):
            raise ConfigError(f"DetailDecoder (model.detail_size): out_size {out_size} must be 8 x a power of two (16 ... 256; DECA 256)")
        chans = tuple(int(c) for c in (channels if channels is not None else self.CHANNELS[:n_up + 1]))
        if len(chans) != n_up + 1 or min(chans) < 1:
            raise ConfigError(f"DetailDecoder (model.decoder_channels): channels {list(chans)} must give {n_up + 1} positive counts for "
                              f"out_size {out_size} (the 8 x 8 input and {n_up} upsampling stages)")
        self.out_size = int(out_size)
        c0 = chans[0]
        self.l1 = nn.Sequential(nn.Linear(self.latent_dim, c0 * self.init_size ** 2))
        self._c0 = c0
        blocks = [nn.BatchNorm2D(c0)]
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2D(cin, cout, 3, stride=1, padding=1), nn.BatchNorm2D(cout, epsilon=0.8),
                       nn.LeakyReLU(0.2)]
        blocks += [nn.Conv2D(chans[-1], out_channels, 3, stride=1, padding=1), nn.Tanh()]
        self.conv_blocks = nn.Sequential(*blocks)

    def forward(self, latent: paddle.Tensor) -> paddle.Tensor:
        """latent (B, latent_dim) in DECA's order [jaw pose, expression, detail] -> (B, C, out_size, out_size)."""
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise InputError(f"DetailDecoder: expected a (B, {self.latent_dim}) input, got {list(latent.shape)}")
        out = self.l1(latent).reshape([-1, self._c0, self.init_size, self.init_size])
        return self.conv_blocks(out) * self.out_scale

    def displacement(self, detail: paddle.Tensor, exp: paddle.Tensor, jaw: paddle.Tensor) -> paddle.Tensor:
        """UV displacement (B, 1, out_size, out_size) from detail code (B, 128), expression (B, 50) and jaw
        pose (B, 3), concatenated as DECA does: ``cat([pose[:, 3:], exp, detail])``."""
        return self(paddle.concat([jaw, exp, detail], axis=1))
