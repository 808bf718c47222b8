"""The latent-diffusion UNet: residual blocks with a time embedding and SpatialTransformer
blocks with self- and cross-attention (the Stable Diffusion denoiser).

Parameter names are diffusers' ``UNet2DConditionModel`` names (``conv_in``, ``time_embedding``,
``down_blocks.i.resnets.j``, ``down_blocks.i.attentions.j``, ``mid_block``, ``up_blocks``,
``conv_norm_out``, ``conv_out``), so :func:`ppldm.interop.load_unet` loads a diffusers /
ppdiffusers folder by name.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .attention import SpatialTransformer, _check_type
from .blocks import Downsample, ResnetBlock, TimestepEmbedding, Upsample, timestep_embedding


def _per_level(value, n: int, name: str):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            from ppengine.errors import ConfigError

            raise ConfigError(f"UNet: {name} has {len(value)} entries, one per level ({n}) expected")
        return list(value)
    return [value] * n


class _Level(nn.Layer):
    """One resolution level: ``resnets``, optional ``attentions``, optional ``downsamplers``/``upsamplers``."""

    def __init__(self, resnets, attentions, sampler_name: Optional[str], sampler):
        super().__init__()
        self.resnets = nn.LayerList(resnets)
        self.attentions = nn.LayerList(attentions) if attentions else None
        self.downsamplers = nn.LayerList([sampler]) if sampler_name == "down" else None
        self.upsamplers = nn.LayerList([sampler]) if sampler_name == "up" else None


class _Mid(nn.Layer):
    def __init__(self, resnets, attentions):
        super().__init__()
        self.resnets = nn.LayerList(resnets)
        self.attentions = nn.LayerList(attentions) if attentions else None


class UNet(nn.Layer):
    """Denoising UNet with cross-attention.

    Args:
        in_channels: channels of the noisy latent x_t (4 for SD).
        out_channels: channels predicted (eps / v / x0), usually = in_channels.
        concat_channels: extra input channels concatenated to x_t (inpainting masks,
            low-resolution images for super-resolution); ``conv_in`` takes in + concat.
        block_channels: channels per resolution level (SD 2.x: 320, 640, 1280, 1280); each
            level but the last halves the resolution.
        layers_per_block: residual blocks per level on the way down (up: one more).
        attention_resolutions: downsampling rates (1, 2, 4, ...) at which the levels carry a
            SpatialTransformer after each residual block (SD: 1, 2, 4). The middle block always
            has one.
        num_heads: heads per attention (an int, or one per level); used when ``head_channels`` is None.
        head_channels: width of each head (SD 2.x: 64); heads = level channels // head_channels.
        transformer_depth: transformer blocks per SpatialTransformer (int or one per level).
        context_dim: width of the cross-attention context (SD 2.x: 1024, SD 1.x: 768);
            None: no cross-attention source, the second attention attends to the map itself.
        use_linear_projection: Linear ``proj_in``/``proj_out`` (SD 2.x) or 1x1 conv (SD 1.x).
        num_classes: ADM-style class conditioning, an embedding added to the time embedding.
        attention_type: ``"standard"`` or ``"split_einsum"`` (ANE form, same numbers).
        norm_groups, norm_eps: GroupNorm settings; dropout: in residual blocks and attention.
        flip_sin_to_cos, freq_shift: timestep-embedding convention (SD: True, 0).
        position_encoding: None (SD) or ``"sincos"``: every SpatialTransformer adds a fixed 2D
            sinusoidal encoding of the pixel position (as a fraction of the map) to its tokens,
            so cross-attention queries know where they are (layouts, "left of"). No parameters.

    Forward shapes:
        x (B, in_channels, H, W), t (B,) or scalar, context (B, M, context_dim),
        class_labels (B,) int64, concat (B, concat_channels, H, W) -> (B, out_channels, H, W).
        H and W must be divisible by 2 ** (len(block_channels) - 1).
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 4, concat_channels: int = 0,
                 block_channels: Sequence[int] = (320, 640, 1280, 1280), layers_per_block: int = 2,
                 attention_resolutions: Sequence[int] = (1, 2, 4),
                 num_heads: Union[int, Sequence[int], None] = None, head_channels: Optional[int] = 64,
                 transformer_depth: Union[int, Sequence[int]] = 1, context_dim: Optional[int] = 1024,
                 use_linear_projection: bool = True, num_classes: Optional[int] = None,
                 attention_type: str = "standard", norm_groups: int = 32, norm_eps: float = 1e-5,
                 dropout: float = 0.0, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                 position_encoding: Optional[str] = None):
        super().__init__()
        _check_type(attention_type)
        if num_heads is None and head_channels is None:
            from ppengine.errors import ConfigError

            raise ConfigError("UNet: give num_heads or head_channels")
        block_channels = list(block_channels)
        n = len(block_channels)
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, concat_channels=concat_channels,
            block_channels=block_channels, layers_per_block=layers_per_block,
            attention_resolutions=list(attention_resolutions), num_heads=num_heads,
            head_channels=head_channels, transformer_depth=transformer_depth, context_dim=context_dim,
            use_linear_projection=use_linear_projection, num_classes=num_classes,
            attention_type=attention_type, norm_groups=norm_groups, norm_eps=norm_eps, dropout=dropout,
            flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift, position_encoding=position_encoding)
        self.in_channels, self.out_channels, self.concat_channels = in_channels, out_channels, concat_channels
        self.context_dim = context_dim
        self.num_levels = n
        self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift
        self.model_channels = block_channels[0]
        temb = 4 * block_channels[0]
        heads_cfg = _per_level(num_heads, n, "num_heads")
        depths = _per_level(transformer_depth, n, "transformer_depth")
        has_attn = [2 ** i in attention_resolutions for i in range(n)]

        def heads_of(level):
            ch = block_channels[level]
            heads = ch // head_channels if head_channels else heads_cfg[level]
            return heads, ch // heads

        def attn(level):
            heads, dh = heads_of(level)
            return SpatialTransformer(block_channels[level], heads, dh, depths[level], context_dim,
                                      use_linear_projection, norm_groups, dropout, attention_type,
                                      position_encoding)

        def res(cin, cout):
            return ResnetBlock(cin, cout, temb, norm_groups, norm_eps, dropout)

        self.conv_in = nn.Conv2D(in_channels + concat_channels, block_channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(block_channels[0], temb)
        self.class_embedding = nn.Embedding(num_classes, temb) if num_classes else None

        skips = [block_channels[0]]
        down, ch = [], block_channels[0]
        for i, cout in enumerate(block_channels):
            resnets, attns = [], []
            for _ in range(layers_per_block):
                resnets.append(res(ch, cout))
                ch = cout
                if has_attn[i]:
                    attns.append(attn(i))
                skips.append(ch)
            last = i == n - 1
            down.append(_Level(resnets, attns, None if last else "down", None if last else Downsample(ch)))
            if not last:
                skips.append(ch)
        self.down_blocks = nn.LayerList(down)
        self.mid_block = _Mid([res(ch, ch), res(ch, ch)], [attn(n - 1)])

        up = []
        for k, i in enumerate(reversed(range(n))):
            cout = block_channels[i]
            resnets, attns = [], []
            for _ in range(layers_per_block + 1):
                resnets.append(res(ch + skips.pop(), cout))
                ch = cout
                if has_attn[i]:
                    attns.append(attn(i))
            last = i == 0
            up.append(_Level(resnets, attns, None if last else "up", None if last else Upsample(ch)))
        self.up_blocks = nn.LayerList(up)
        self.conv_norm_out = nn.GroupNorm(norm_groups, ch, epsilon=norm_eps)
        self.conv_out = nn.Conv2D(ch, out_channels, 3, padding=1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_levels - 1)

    def _check_inputs(self, x, context, class_labels, concat):
        from ppengine.errors import InputError

        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"UNet: x must be (B, {self.in_channels}, H, W), got {list(x.shape)}")
        f = self.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise InputError(f"UNet: H and W must be divisible by {f}, got {x.shape[2]}x{x.shape[3]}; "
                             "pad or resize the input")
        if self.concat_channels and (concat is None or concat.shape[1] != self.concat_channels):
            raise InputError(f"UNet: concat of {self.concat_channels} channels is required, got "
                             f"{None if concat is None else list(concat.shape)}")
        if context is None and self.context_dim:
            raise InputError(f"UNet: this UNet cross-attends to a context of width {self.context_dim}; pass "
                             f"context (B, M, {self.context_dim}) (or build it with context_dim=None)")
        if context is not None and self.context_dim and context.shape[-1] != self.context_dim:
            raise InputError(f"UNet: context must be (B, M, {self.context_dim}), got {list(context.shape)}")
        if self.class_embedding is not None and class_labels is None:
            raise InputError("UNet: this model is class-conditional (num_classes set); pass class_labels")

    def forward(self, x, t, context=None, class_labels=None, concat=None):
        if paddle.in_dynamic_mode():
            self._check_inputs(x, context, class_labels, concat)
        if concat is not None:
            x = paddle.concat([x, concat.astype(x.dtype)], axis=1)
        if not isinstance(t, paddle.Tensor):
            t = paddle.to_tensor(t, dtype="float32")
        t = t.reshape([-1]).astype("float32") + paddle.zeros_like(x[:, 0, 0, 0], dtype="float32")
        emb = timestep_embedding(t, self.model_channels, flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift).astype(x.dtype)
        emb = self.time_embedding(emb)
        if self.class_embedding is not None and class_labels is not None:
            emb = emb + self.class_embedding(class_labels.reshape([-1]).astype("int64")).astype(emb.dtype)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            for j, resnet in enumerate(level.resnets):
                h = resnet(h, emb)
                if level.attentions is not None:
                    h = level.attentions[j](h, context)
                skips.append(h)
            if level.downsamplers is not None:
                h = level.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, emb)
        h = self.mid_block.attentions[0](h, context)
        h = self.mid_block.resnets[1](h, emb)
        for level in self.up_blocks:
            for j, resnet in enumerate(level.resnets):
                h = resnet(paddle.concat([h, skips.pop()], axis=1), emb)
                if level.attentions is not None:
                    h = level.attentions[j](h, context)
            if level.upsamplers is not None:
                h = level.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
