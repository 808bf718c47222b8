"""Small helpers shared by the checkers."""
from __future__ import annotations

import numpy as np


def to_np(x) -> np.ndarray:
    """A paddle Tensor, list or array -> numpy array."""
    if hasattr(x, "numpy"):
        return x.numpy()
    return np.asarray(x)


def images_01(x) -> np.ndarray:
    """Images [B, C, H, W] in [-1, 1] -> float32 numpy in [0, 1] (clipped)."""
    return np.clip((to_np(x).astype(np.float32) + 1) / 2, 0, 1)
