"""The conditioner contract and its registry.

A conditioner turns one raw batch entry (``key``: class labels, captions, box lists) into a
context sequence ``[B, L, out_dim]`` for the UNet's cross-attention. For classifier-free
guidance every conditioner has a *null* input (label -1, empty caption, no boxes): entries
flagged in ``drop`` are replaced by it, so the unconditional context is learned, not zero.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import paddle

from ppengine.registry import Registry

CONDITIONERS = Registry("conditioner")


def to_numpy(x) -> np.ndarray:
    if isinstance(x, paddle.Tensor):
        return x.numpy()
    return np.asarray(x)


class Conditioner(paddle.nn.Layer):
    """Base class. Subclasses set ``key`` and ``out_dim`` and implement :meth:`encode` / :meth:`null`."""

    key: str = ""
    out_dim: int = 0

    def null(self, n: int) -> Any:
        """The raw null (unconditional) input for ``n`` samples."""
        raise NotImplementedError

    def apply_drop(self, values, drop: Optional[np.ndarray]):
        """``values`` with entries where ``drop`` is True replaced by the null input."""
        raise NotImplementedError

    def encode(self, values) -> paddle.Tensor:
        """Raw values -> context [B, L, out_dim]."""
        raise NotImplementedError

    def forward(self, values, drop: Optional[np.ndarray] = None) -> paddle.Tensor:
        """Raw values (``drop``: optional bool [B], True = use the null input) -> [B, L, out_dim]."""
        if drop is not None and np.any(drop):
            values = self.apply_drop(values, np.asarray(drop, bool))
        return self.encode(values)
