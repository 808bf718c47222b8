"""Layout conditioning: LDM's box tokens on a coordinate grid, padded, into a transformer."""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from ppengine.errors import ConfigError, InputError

from .base import CONDITIONERS, Conditioner, to_numpy
from .transformer import TokenTransformer


def tokenize_boxes(boxes: np.ndarray, n_classes: int, grid: int) -> np.ndarray:
    """Boxes [B, N, 5] ``[class, x0, y0, x1, y1]`` (coords in [0, 1]; class < 0 = padding)
    -> tokens [B, 3N] int64: per box ``(grid² + class, cell(x0, y0), cell(x1, y1))`` where
    ``cell(x, y) = round(y (grid-1)) * grid + round(x (grid-1))``; padding boxes become three
    pad tokens (``grid² + n_classes``).
    """
    b = np.asarray(boxes, np.float32)
    if b.ndim != 3 or b.shape[-1] != 5:
        raise InputError(f"layout boxes must have shape [batch, objects, 5] ([class, x0, y0, x1, y1]), got {b.shape}")
    cls = np.round(b[..., 0]).astype(np.int64)
    real = cls >= 0
    if np.any(cls[real] >= n_classes):
        raise InputError(f"box class {int(cls[real].max())} is out of range: this model knows classes 0..{n_classes - 1}")
    xy = b[..., 1:]
    if np.any(real) and (np.any(xy[real] < 0) or np.any(xy[real] > 1) or not np.all(np.isfinite(xy[real]))):
        raise InputError("box coordinates must be in [0, 1] (fractions of the image width/height)")
    q = np.round(np.clip(xy, 0, 1) * (grid - 1)).astype(np.int64)
    tl = q[..., 1] * grid + q[..., 0]
    br = q[..., 3] * grid + q[..., 2]
    pad = grid * grid + n_classes
    tok = np.stack([grid * grid + cls, tl, br], axis=-1)
    tok[~real] = pad
    return tok.reshape(b.shape[0], -1)


def cell_sincos(grid: int, dim: int) -> np.ndarray:
    """Fixed 2D sinusoidal codes of the ``grid²`` coordinate cells: (grid², dim) float32.

    Cell ``r * grid + c`` sits at ``(x, y) = (c, r) / (grid - 1)`` (the inverse of
    :func:`tokenize_boxes`); a quarter of the channels each: sin and cos of x and of y at
    ``dim // 4`` frequencies geometric from pi to pi * max(grid / 4, 1) (a period of a quarter of
    the image at most; higher ones make cells a few apart as unlike as far ones); the remaining
    channels are zero. Near cells get near codes, so what the transformer learns for one cell
    carries over to its neighbours.
    """
    q = dim // 4
    if q < 1:
        raise ConfigError(f"LayoutEmbedder: coord_encoding needs dim >= 4, got {dim}")
    freqs = np.pi * max(grid / 4.0, 1.0) ** (np.arange(q) / max(q - 1, 1))
    r, c = np.divmod(np.arange(grid * grid), grid)
    ax = (c / (grid - 1))[:, None] * freqs
    ay = (r / (grid - 1))[:, None] * freqs
    out = np.zeros([grid * grid, dim], np.float32)
    out[:, : 4 * q] = np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], 1)
    return out


@CONDITIONERS.register()
class LayoutEmbedder(Conditioner):
    """Boxes [B, max_objects, 5] (class -1 rows = padding; all padding = unconditional)
    -> context [B, 3 * max_objects, dim] from a transformer trained from scratch.

    Vocabulary: ``grid²`` coordinate cells, ``n_classes`` object classes, one pad token.
    ``coord_encoding="sincos"`` adds the fixed :func:`cell_sincos` code of each coordinate token
    to its learned embedding (None, the default: learned embeddings only, as in LDM).
    """

    def __init__(self, n_classes: int, max_objects: int = 2, grid: int = 16, dim: int = 128, depth: int = 2,
                 heads: int = 4, key: str = "boxes", coord_encoding: str = None):
        super().__init__()
        if int(grid) < 2 or int(n_classes) < 1 or int(max_objects) < 1:
            raise ConfigError("LayoutEmbedder: need grid >= 2, n_classes >= 1, max_objects >= 1")
        self.n_classes, self.max_objects, self.grid = int(n_classes), int(max_objects), int(grid)
        self.key, self.out_dim = key, int(dim)
        self.vocab_size = self.grid ** 2 + self.n_classes + 1
        self.transformer = TokenTransformer(self.vocab_size, 3 * self.max_objects, dim, depth, heads)
        if coord_encoding not in (None, "sincos"):
            raise ConfigError(f"LayoutEmbedder: coord_encoding must be null or 'sincos', got {coord_encoding!r}")
        self.coord_encoding = coord_encoding
        if coord_encoding == "sincos":
            table = np.zeros([self.vocab_size, self.out_dim], np.float32)
            table[: self.grid ** 2] = cell_sincos(self.grid, self.out_dim)
            # fixed, not saved: checkpoints keep the same keys with the option on or off
            self.register_buffer("coord_table", paddle.to_tensor(table), persistable=False)

    def null(self, n: int):
        b = np.zeros([n, self.max_objects, 5], np.float32)
        b[..., 0] = -1
        return b

    def apply_drop(self, values, drop):
        b = to_numpy(values).astype(np.float32).copy()
        b[drop, :, 0] = -1
        return b

    def _fit(self, b: np.ndarray) -> np.ndarray:
        if b.ndim == 2:
            b = b[None]
        n = b.shape[1]
        if n > self.max_objects:
            if np.any(b[:, self.max_objects:, 0] >= 0):
                raise InputError(f"{n} boxes given; this model takes at most {self.max_objects}")
            b = b[:, : self.max_objects]
        elif n < self.max_objects:
            pad = np.zeros([b.shape[0], self.max_objects - n, 5], np.float32)
            pad[..., 0] = -1
            b = np.concatenate([b, pad], 1)
        return b

    def encode(self, values) -> paddle.Tensor:
        b = self._fit(to_numpy(values).astype(np.float32))
        tok = paddle.to_tensor(tokenize_boxes(b, self.n_classes, self.grid))
        extra = F.embedding(tok, self.coord_table) if self.coord_encoding else None
        return self.transformer(tok, extra=extra)
