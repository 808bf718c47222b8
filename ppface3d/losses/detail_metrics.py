"""The detail metric: angular error of the rendered normals against the ground truth's.

On :class:`~ppface3d.data.synthetic.SyntheticFaces` with ``wrinkles`` and ``detail_gt`` the
batch carries ``normal_gt`` (B, 3, S, S), the world normals of the detailed ground-truth render,
and ``detail_region`` (B, S, S), the face region the detail covers. A detail model's eval outputs
give the normals of its own render twice: with the coarse mesh's vertex normals
(``normal_coarse``) and with its detail normal map (``normal_detail``), and its silhouette
``alpha``. The error is the angle between predicted and true normals at every pixel of the
region that the prediction covers too, pooled over the test set.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from ppengine.registry import METRICS


def normal_angles(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Angle in degrees between normal fields (..., 3, H, W) -> (..., H, W) (any length: renormalised)."""
    p = pred / np.maximum(np.linalg.norm(pred, axis=-3, keepdims=True), 1e-8)
    g = gt / np.maximum(np.linalg.norm(gt, axis=-3, keepdims=True), 1e-8)
    return np.degrees(np.arccos(np.clip((p * g).sum(-3), -1.0, 1.0)))


@METRICS.register()
class DetailNormalMetric:
    """Mean / median angular error (degrees) of the coarse and the detail normals over the face
    region, and ``angle_ratio`` = detail / coarse mean (the detail branch's gain; < 1 is better).

    Needs eval outputs 'normal_coarse', 'normal_detail' (B, 3, S, S), 'alpha' (B, 1, S, S) and
    batch 'normal_gt' (B[, K], 3, S, S), 'detail_region' (B[, K], S, S).
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self._coarse, self._detail = [], []

    @staticmethod
    def _np(x):
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    def update(self, batch: Dict, outputs: Dict):
        S = self._np(outputs["normal_coarse"]).shape[-1]
        gt = self._np(batch["normal_gt"]).reshape(-1, 3, S, S)
        region = self._np(batch["detail_region"]).reshape(-1, S, S) > 0.5
        region &= self._np(outputs["alpha"]).reshape(-1, S, S) > 0.5
        self._coarse.append(normal_angles(self._np(outputs["normal_coarse"]), gt)[region])
        self._detail.append(normal_angles(self._np(outputs["normal_detail"]), gt)[region])

    def compute(self) -> Dict[str, float]:
        if not self._coarse:
            return {}
        c, d = np.concatenate(self._coarse), np.concatenate(self._detail)
        if c.size == 0:
            return {}
        return {"angle_coarse": float(c.mean()), "angle_detail": float(d.mean()),
                "angle_coarse_median": float(np.median(c)), "angle_detail_median": float(np.median(d)),
                "angle_ratio": float(d.mean() / max(c.mean(), 1e-12)), "angle_pixels": float(c.size)}
