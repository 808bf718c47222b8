"""Building blocks shared by the UNet and the autoencoders.

Parameter names follow diffusers (``norm1``, ``conv1``, ``time_emb_proj``, ...), so weights
saved by diffusers / ppdiffusers load by name (see :mod:`ppldm.interop`).
"""
from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def timestep_embedding(t: paddle.Tensor, dim: int, max_period: float = 10000.0,
                       flip_sin_to_cos: bool = True, freq_shift: float = 0.0) -> paddle.Tensor:
    """Sinusoidal embedding of diffusion timesteps.

    Args:
        t: (B,) timesteps (int or float).
        dim: embedding width.
        flip_sin_to_cos: put the cosine half first (the latent-diffusion / SD order).
        freq_shift: subtracted from the half width in the frequency exponent's denominator.
    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * paddle.arange(half, dtype="float32") / (half - freq_shift)
    args = t.astype("float32").unsqueeze(1) * paddle.exp(exponent).unsqueeze(0)
    sin, cos = paddle.sin(args), paddle.cos(args)
    emb = paddle.concat([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = paddle.concat([emb, paddle.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepEmbedding(nn.Layer):
    """MLP on the sinusoidal embedding: (B, in_dim) -> (B, out_dim) (``linear_1``, SiLU, ``linear_2``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Layer):
    """GroupNorm-SiLU-Conv residual block with an optional time-embedding shift.

    Args:
        in_channels, out_channels: channels of input and output.
        temb_channels: width of the time embedding added after ``conv1`` (None: no embedding).
        groups: GroupNorm groups; eps: GroupNorm epsilon; dropout: before ``conv2``.
    Shapes: x (B, in, H, W), temb (B, temb_channels) -> (B, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int = None, temb_channels: int = None,
                 groups: int = 32, eps: float = 1e-5, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = nn.GroupNorm(groups, in_channels, epsilon=eps)
        self.conv1 = nn.Conv2D(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, epsilon=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2D(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2D(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb)).unsqueeze([2, 3])
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample(nn.Layer):
    """Stride-2 3x3 convolution (``conv``).

    ``asymmetric_pad=True`` pads right/bottom by one and uses no conv padding (the autoencoder
    form); otherwise the conv pads by one on all sides (the UNet form).
    Shapes: (B, C, H, W) -> (B, C, H/2, W/2).
    """

    def __init__(self, channels: int, asymmetric_pad: bool = False):
        super().__init__()
        self.asymmetric_pad = asymmetric_pad
        self.conv = nn.Conv2D(channels, channels, 3, stride=2, padding=0 if asymmetric_pad else 1)

    def forward(self, x):
        if self.asymmetric_pad:
            x = F.pad(x, [0, 1, 0, 1])
        return self.conv(x)


def upsample_nearest2x(x: paddle.Tensor) -> paddle.Tensor:
    """Nearest-neighbour 2x upsampling by expand + reshape: (B, C, H, W) -> (B, C, 2H, 2W).

    Written without ``F.interpolate(scale_factor=...)`` so that it traces and exports to ONNX, and
    with no tensor above rank 5 (Core ML's limit): columns first, then rows.
    """
    x = paddle.expand(x.unsqueeze(4), [-1, -1, -1, -1, 2]).flatten(3, 4)   # (B, C, H, 2W)
    return paddle.expand(x.unsqueeze(3), [-1, -1, -1, 2, -1]).flatten(2, 3)  # (B, C, 2H, 2W)


class Upsample(nn.Layer):
    """Nearest 2x upsampling followed by a 3x3 convolution (``conv``).

    Shapes: (B, C, H, W) -> (B, C, 2H, 2W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2D(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(upsample_nearest2x(x))
