"""Attention, GEGLU feed-forward, transformer block and SpatialTransformer.

Two interchangeable attention forms share one set of parameters (``to_q``, ``to_k``, ``to_v``,
``to_out.0``, the diffusers names), chosen by ``attention_type``:

* ``"standard"``: tokens in (B, S, C) layout, all heads batched in one matmul.
* ``"split_einsum"``: the Apple Neural Engine friendly form of ml-stable-diffusion: tokens in
  (B, C, 1, S) layout, projections as 1x1 convolutions (the Linear weights reshaped), and one
  einsum per head. It computes the same function (tested to 1e-5) and exists for Core ML export.

Switch a built model with :func:`set_attention_type`.
"""
from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

ATTENTION_TYPES = ("standard", "split_einsum")
POSITION_ENCODINGS = (None, "sincos")


def _check_type(attention_type: str) -> str:
    if attention_type not in ATTENTION_TYPES:
        from ppengine.errors import ConfigError

        raise ConfigError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
    return attention_type


def _conv1x1(x: paddle.Tensor, linear: nn.Linear) -> paddle.Tensor:
    """Apply ``linear`` as a 1x1 convolution on (B, C_in, 1, S) -> (B, C_out, 1, S)."""
    w = linear.weight.transpose([1, 0]).unsqueeze([2, 3])  # [in, out] -> [out, in, 1, 1]
    return F.conv2d(x, w, linear.bias)


class Attention(nn.Layer):
    """Multi-head (cross-)attention.

    Args:
        query_dim: channels C of the queries.
        context_dim: channels of the keys/values source (None: self-attention, context = x).
        heads, dim_head: number of heads and width of each; inner width = heads * dim_head.
        qkv_bias: biases on ``to_q``/``to_k``/``to_v`` (the UNet has none, the VAE has them).
        attention_type: ``"standard"`` or ``"split_einsum"`` (same numbers, different layout).
        upcast_softmax: softmax in float32 when running in float16.
    Shapes: x (B, S, C), context (B, M, context_dim) -> (B, S, C).
    """

    def __init__(self, query_dim: int, context_dim: int = None, heads: int = 8, dim_head: int = 64,
                 qkv_bias: bool = False, dropout: float = 0.0, attention_type: str = "standard",
                 upcast_softmax: bool = True):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5
        self.attention_type = _check_type(attention_type)
        self.upcast_softmax = upcast_softmax
        bias = None if qkv_bias else False
        self.to_q = nn.Linear(query_dim, inner, bias_attr=bias)
        self.to_k = nn.Linear(context_dim, inner, bias_attr=bias)
        self.to_v = nn.Linear(context_dim, inner, bias_attr=bias)
        self.to_out = nn.LayerList([nn.Linear(inner, query_dim), nn.Dropout(dropout)])
        # set by ppldm.models.grounding while training with a grounding loss: the standard form
        # then keeps its attention probabilities (B, heads, S, M), with their graph, in .probs
        self.keep_probs = False
        self.probs = None

    def _softmax(self, x, axis):
        if self.upcast_softmax and x.dtype != paddle.float32:
            return F.softmax(x.astype("float32"), axis=axis).astype(x.dtype)
        return F.softmax(x, axis=axis)

    def forward(self, x, context=None):
        if context is None:
            context = x
        if self.attention_type == "split_einsum":
            # (B, S, C) -> (B, C, 1, S), the ANE layout
            xa = x.transpose([0, 2, 1]).unsqueeze(2)
            ca = context.transpose([0, 2, 1]).unsqueeze(2)
            out = self.forward_split_einsum(xa, ca)
            return out.squeeze(2).transpose([0, 2, 1])
        h, d = self.heads, self.dim_head
        # separate projections: measured faster here than one fused q|k|v matmul plus split
        q = (self.to_q(x) * self.scale).reshape([0, 0, h, d]).transpose([0, 2, 1, 3])
        k = self.to_k(context).reshape([0, 0, h, d]).transpose([0, 2, 1, 3])
        v = self.to_v(context).reshape([0, 0, h, d]).transpose([0, 2, 1, 3])
        w = self._softmax(paddle.matmul(q, k, transpose_y=True), axis=-1)   # (B, h, S, M)
        if self.keep_probs:
            self.probs = w
        out = paddle.matmul(w, v).transpose([0, 2, 1, 3]).reshape([0, 0, h * d])
        out = self.to_out[0](out)
        return self.to_out[1](out) if self.training else out

    def forward_split_einsum(self, x, context):
        """ANE form. x (B, C, 1, S), context (B, Cc, 1, M) -> (B, C, 1, S)."""
        h = self.heads
        q = _conv1x1(x, self.to_q) * self.scale
        k = _conv1x1(context, self.to_k)
        v = _conv1x1(context, self.to_v)
        qs, ks, vs = paddle.split(q, h, axis=1), paddle.split(k, h, axis=1), paddle.split(v, h, axis=1)
        outs = []
        for qi, ki, vi in zip(qs, ks, vs):                              # each (B, d, 1, S|M)
            wi = self._softmax(paddle.einsum("bchq,bchk->bkhq", qi, ki), axis=1)  # (B, M, 1, S)
            outs.append(paddle.einsum("bkhq,bchk->bchq", wi, vi))     # (B, d, 1, S)
        out = _conv1x1(paddle.concat(outs, axis=1), self.to_out[0])
        return self.to_out[1](out)


class GEGLU(nn.Layer):
    """GELU-gated linear unit: (..., dim) -> (..., dim_out); ``proj`` makes 2 * dim_out."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim_out * 2)

    def forward(self, x):
        h, gate = paddle.chunk(self.proj(x), 2, axis=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Layer):
    """GEGLU feed-forward ``net = [GEGLU, Dropout, Linear]``: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.LayerList([GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Layer):
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each residual.

    Shapes: x (B, S, dim), context (B, M, context_dim) -> (B, S, dim).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int = None,
                 dropout: float = 0.0, attention_type: str = "standard"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads, dim_head, dropout=dropout, attention_type=attention_type)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, dropout=dropout,
                               attention_type=attention_type)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


def sincos_2d(height: int, width: int, dim: int) -> paddle.Tensor:
    """Fixed 2D sinusoidal position encoding of a ``height`` x ``width`` map: (height*width, dim),
    row-major like the tokens of :class:`SpatialTransformer`.

    Positions are the cell centres as fractions of the map, ``(i + 0.5) / height``, so the same
    place of the image gets the same low-frequency codes at every resolution level. A quarter of
    the channels each: sin and cos of x and of y at ``dim // 4`` frequencies, geometric from pi (one
    half-period over the whole map) to pi * max(height, width) / 2 (a half-period of two pixels:
    higher ones alias on the pixel grid); channels beyond ``4 * (dim // 4)`` are zero.
    """
    q = dim // 4
    if q < 1:
        from ppengine.errors import ConfigError

        raise ConfigError(f"sincos position encoding needs at least 4 channels, got {dim}")
    top = float(max(height, width, 2)) / 2
    freqs = math.pi * top ** (paddle.arange(q, dtype="float32") / max(q - 1, 1))            # (q,)
    ys = (paddle.arange(height, dtype="float32") + 0.5) / height
    xs = (paddle.arange(width, dtype="float32") + 0.5) / width
    ay = ys.unsqueeze(1) * freqs.unsqueeze(0)                                                  # (H, q)
    ax = xs.unsqueeze(1) * freqs.unsqueeze(0)                                                  # (W, q)
    ey = paddle.concat([paddle.sin(ay), paddle.cos(ay)], axis=1).unsqueeze(1).expand([height, width, 2 * q])
    ex = paddle.concat([paddle.sin(ax), paddle.cos(ax)], axis=1).unsqueeze(0).expand([height, width, 2 * q])
    pe = paddle.concat([ex, ey], axis=2).reshape([height * width, 4 * q])
    if dim > 4 * q:
        pe = paddle.concat([pe, paddle.zeros([height * width, dim - 4 * q], pe.dtype)], axis=1)
    return pe


class SpatialTransformer(nn.Layer):
    """Transformer over the pixels of a feature map (diffusers' ``Transformer2DModel``).

    GroupNorm, ``proj_in`` (Linear on tokens, or 1x1 conv on the map when
    ``use_linear_projection=False``), ``depth`` transformer blocks, ``proj_out``, residual.
    Without ``context`` (or ``context_dim=None``) the second attention attends to the map itself.
    ``position_encoding="sincos"`` adds :func:`sincos_2d` to the tokens after ``proj_in``, so the
    queries and keys know where each pixel is (None, the default: no encoding, as in SD).

    Shapes: x (B, C, H, W), context (B, M, context_dim) -> (B, C, H, W).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1,
                 context_dim: int = None, use_linear_projection: bool = True, groups: int = 32,
                 dropout: float = 0.0, attention_type: str = "standard", position_encoding: str = None):
        super().__init__()
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.position_encoding = _check_position_encoding(position_encoding)
        self._pe_cache = {}
        self.norm = nn.GroupNorm(groups, channels, epsilon=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2D(channels, inner, 1)
            self.proj_out = nn.Conv2D(inner, channels, 1)
        self.transformer_blocks = nn.LayerList([
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, attention_type)
            for _ in range(depth)])

    def forward(self, x, context=None):
        b, c, hgt, wid = x.shape
        residual = x
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        h = h.flatten(2).transpose([0, 2, 1])                # (B, H*W, C)
        if self.use_linear_projection:
            h = self.proj_in(h)
        if self.position_encoding is not None:
            h = h + self._position(hgt, wid, h.shape[-1]).astype(h.dtype)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h)
        if hgt is None or wid is None or hgt < 0 or wid < 0:     # dynamic shape while tracing
            hgt, wid = paddle.shape(residual)[2], paddle.shape(residual)[3]
        h = h.transpose([0, 2, 1]).reshape([0, 0, hgt, wid])
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return h + residual

    def _position(self, hgt, wid, dim):
        if not isinstance(hgt, int) or not isinstance(wid, int) or hgt < 0 or wid < 0:
            from ppengine.errors import InputError

            raise InputError("SpatialTransformer: the position encoding needs a static feature-map size")
        if not paddle.in_dynamic_mode():  # tracing for export: the encoding becomes part of the graph
            return sincos_2d(hgt, wid, dim)
        key = (hgt, wid, dim)
        if key not in self._pe_cache:
            self._pe_cache[key] = sincos_2d(hgt, wid, dim)
        return self._pe_cache[key]


def _check_position_encoding(position_encoding):
    if position_encoding not in POSITION_ENCODINGS:
        from ppengine.errors import ConfigError

        raise ConfigError(f"position_encoding must be one of {POSITION_ENCODINGS}, got {position_encoding!r}")
    return position_encoding


def set_attention_type(model: nn.Layer, attention_type: str) -> nn.Layer:
    """Switch every :class:`Attention` in ``model`` to ``"standard"`` or ``"split_einsum"``."""
    _check_type(attention_type)
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, Attention):
            layer.attention_type = attention_type
    return model
