"""Class-label conditioning: one learned embedding per class plus a null class."""
from __future__ import annotations

import numpy as np
import paddle

from ppengine.errors import ConfigError, InputError

from .base import CONDITIONERS, Conditioner, to_numpy


@CONDITIONERS.register()
class ClassEmbedder(Conditioner):
    """Labels [B] int (``-1`` = unconditional) -> context [B, 1, embed_dim].

    Index ``n_classes`` of the embedding table is the learned null class used for
    classifier-free guidance.
    """

    def __init__(self, n_classes: int, embed_dim: int = 64, key: str = "label"):
        super().__init__()
        if int(n_classes) < 1:
            raise ConfigError(f"ClassEmbedder: n_classes must be >= 1, got {n_classes}")
        self.n_classes, self.out_dim, self.key = int(n_classes), int(embed_dim), key
        self.embedding = paddle.nn.Embedding(self.n_classes + 1, self.out_dim)

    def null(self, n: int):
        return np.full([n], -1, np.int64)

    def apply_drop(self, values, drop):
        v = to_numpy(values).astype(np.int64).copy()
        v[drop] = -1
        return v

    def encode(self, values) -> paddle.Tensor:
        v = to_numpy(values).astype(np.int64).reshape(-1)
        if np.any(v >= self.n_classes) or np.any(v < -1):
            bad = v[(v >= self.n_classes) | (v < -1)][0]
            raise InputError(f"class label {int(bad)} is out of range: this model knows classes "
                             f"0..{self.n_classes - 1} (or -1 for unconditional)")
        v = np.where(v < 0, self.n_classes, v)
        return self.embedding(paddle.to_tensor(v)).unsqueeze(1)
