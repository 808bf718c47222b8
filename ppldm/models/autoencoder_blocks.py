"""Encoder, decoder and the diagonal Gaussian posterior shared by the KL and VQ autoencoders.

Parameter names follow diffusers' ``Encoder``/``Decoder`` (``conv_in``, ``down_blocks.i.resnets.j``,
``down_blocks.i.downsamplers.0.conv``, ``mid_block.attentions.0.to_q``, ``conv_norm_out``,
``conv_out``; decoder ``up_blocks`` from the lowest resolution up).
"""
from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .attention import Attention
from .blocks import Downsample, ResnetBlock, Upsample


class SpatialSelfAttention(Attention):
    """Single-head self-attention over a feature map with GroupNorm and a residual (``group_norm``).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6):
        super().__init__(channels, None, heads=1, dim_head=channels, qkv_bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, epsilon=eps)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose([0, 2, 1])
        t = super().forward(t)
        if h is None or w is None or h < 0 or w < 0:
            h, w = paddle.shape(x)[2], paddle.shape(x)[3]
        return t.transpose([0, 2, 1]).reshape([0, 0, h, w]) + x


class _Block(nn.Layer):
    def __init__(self, resnets, sampler_name=None, sampler=None):
        super().__init__()
        self.resnets = nn.LayerList(resnets)
        self.downsamplers = nn.LayerList([sampler]) if sampler_name == "down" else None
        self.upsamplers = nn.LayerList([sampler]) if sampler_name == "up" else None


class _Mid(nn.Layer):
    def __init__(self, ch, groups, eps, attention):
        super().__init__()
        self.resnets = nn.LayerList([ResnetBlock(ch, ch, None, groups, eps), ResnetBlock(ch, ch, None, groups, eps)])
        self.attentions = nn.LayerList([SpatialSelfAttention(ch, groups, eps)]) if attention else None

    def forward(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Layer):
    """Image -> latent moments. (B, in_channels, H, W) -> (B, out_channels, H/f, W/f),
    f = 2 ** (len(block_channels) - 1)."""

    def __init__(self, in_channels: int, out_channels: int, block_channels: Sequence[int],
                 layers_per_block: int = 2, groups: int = 32, mid_attention: bool = True, eps: float = 1e-6):
        super().__init__()
        self.conv_in = nn.Conv2D(in_channels, block_channels[0], 3, padding=1)
        blocks, ch = [], block_channels[0]
        for i, cout in enumerate(block_channels):
            resnets = []
            for _ in range(layers_per_block):
                resnets.append(ResnetBlock(ch, cout, None, groups, eps))
                ch = cout
            last = i == len(block_channels) - 1
            blocks.append(_Block(resnets, None if last else "down",
                                 None if last else Downsample(ch, asymmetric_pad=True)))
        self.down_blocks = nn.LayerList(blocks)
        self.mid_block = _Mid(ch, groups, eps, mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch, epsilon=eps)
        self.conv_out = nn.Conv2D(ch, out_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.down_blocks:
            for r in block.resnets:
                h = r(h)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Layer):
    """Latent -> image. (B, in_channels, h, w) -> (B, out_channels, h*f, w*f)."""

    def __init__(self, in_channels: int, out_channels: int, block_channels: Sequence[int],
                 layers_per_block: int = 2, groups: int = 32, mid_attention: bool = True, eps: float = 1e-6):
        super().__init__()
        rev = list(reversed(block_channels))
        ch = rev[0]
        self.conv_in = nn.Conv2D(in_channels, ch, 3, padding=1)
        self.mid_block = _Mid(ch, groups, eps, mid_attention)
        blocks = []
        for i, cout in enumerate(rev):
            resnets = []
            for _ in range(layers_per_block + 1):
                resnets.append(ResnetBlock(ch, cout, None, groups, eps))
                ch = cout
            last = i == len(rev) - 1
            blocks.append(_Block(resnets, None if last else "up", None if last else Upsample(ch)))
        self.up_blocks = nn.LayerList(blocks)
        self.conv_norm_out = nn.GroupNorm(groups, ch, epsilon=eps)
        self.conv_out = nn.Conv2D(ch, out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            for r in block.resnets:
                h = r(h)
            if block.upsamplers is not None:
                h = block.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class DiagonalGaussian:
    """Posterior N(mean, diag(exp(logvar))) from moments (B, 2C, h, w) split on channels.

    ``sample()``, ``mode()``: (B, C, h, w); ``kl()``: (B,) KL to N(0, I) summed over C, h, w;
    ``nll(x)``: (B,) negative log-likelihood of x.
    """

    def __init__(self, moments: paddle.Tensor, deterministic: bool = False):
        self.mean, logvar = paddle.chunk(moments, 2, axis=1)
        self.logvar = paddle.clip(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.logvar = paddle.zeros_like(self.mean) - 1e4  # var -> 0
        self.std = paddle.exp(0.5 * self.logvar)
        self.var = paddle.exp(self.logvar)

    def sample(self) -> paddle.Tensor:
        noise = paddle.randn(self.mean.shape, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> paddle.Tensor:
        return self.mean

    def kl(self) -> paddle.Tensor:
        if self.deterministic:
            return paddle.zeros([self.mean.shape[0]])
        return 0.5 * paddle.sum(self.mean ** 2 + self.var - 1.0 - self.logvar, axis=[1, 2, 3])

    def nll(self, x) -> paddle.Tensor:
        import math

        return 0.5 * paddle.sum(math.log(2 * math.pi) + self.logvar + (x - self.mean) ** 2 / self.var,
                                axis=[1, 2, 3])
