"""Drawing on images for people to look at: landmarks as dots."""
from __future__ import annotations

import numpy as np

from .cameras import ndc_to_pixels


def draw_landmarks(image: np.ndarray, lmk_ndc: np.ndarray, color=(1.0, 0.1, 0.1), lmk2=None, color2=(0.1, 1.0, 0.1)):
    """Draw (L, 2) screen-NDC landmarks (and optionally a second set, underneath) as square dots
    on a copy of an (H, W, 3) float image in [0, 1]."""
    out = np.array(image, dtype=np.float32, copy=True)
    H, W = out.shape[:2]
    r = max(1, min(H, W) // 224)
    for pts, col in ((lmk2, color2), (lmk_ndc, color)):
        if pts is None:
            continue
        px = ndc_to_pixels(np.asarray(pts, np.float64)[:, :2], (H, W))
        for x, y in np.round(px).astype(int):
            out[max(0, y - r):max(0, y + r + 1), max(0, x - r):max(0, x + r + 1)] = col
    return out
