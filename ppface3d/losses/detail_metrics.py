"""The detail metric: angular error of the rendered normals against the ground truth's.

On :class:`~ppface3d.data.synthetic.SyntheticFaces` with ``wrinkles`` and ``detail_gt`` the
batch carries ``normal_gt`` (B, 3, S, S), the world normals of the detailed ground-truth render,
and ``detail_region`` (B, S, S), the face region the detail covers. A detail model's eval outputs
give the normals of its own render twice: with the coarse mesh's vertex normals
(``normal_coarse``) and with its detail normal map (``normal_detail``), and its silhouette
``alpha``. The error is the angle between predicted and true normals at every pixel of the
region that the prediction covers too, pooled over the test set. The same is measured with the
predicted detail map on the true coarse mesh (see :class:`DetailNormalMetric`).
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

    Two protocols, both on the ground truth's pixels: the model's own render (its coarse fit and
    its detail map: ``angle_*``), and, when the eval outputs carry them, the predicted detail map
    on the true coarse mesh (``gt_mesh_angle_*``), where the coarse error is the detail alone
    and the ratio measures the detail branch apart from the coarse fit, whose pixel misalignment
    otherwise dominates both numbers.

    Needs eval outputs 'normal_coarse', 'normal_detail' (B, 3, S, S), 'alpha' (B, 1, S, S)
    (optionally the same with a 'gt_mesh_' prefix) and batch 'normal_gt' (B[, K], 3, S, S),
    'detail_region' (B[, K], S, S).
    """

    PROTOCOLS = ("", "gt_mesh_")

    def __init__(self):
        self.reset()

    def reset(self):
        self._angles = {p: ([], []) for p in self.PROTOCOLS}

    @staticmethod
    def _np(x):
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    def update(self, batch: Dict, outputs: Dict):
        S = self._np(outputs["normal_coarse"]).shape[-1]
        gt = self._np(batch["normal_gt"]).reshape(-1, 3, S, S)
        region = self._np(batch["detail_region"]).reshape(-1, S, S) > 0.5
        for p, (coarse, detail) in self._angles.items():
            if p + "normal_coarse" not in outputs:
                continue
            m = region & (self._np(outputs[p + "alpha"]).reshape(-1, S, S) > 0.5)
            coarse.append(normal_angles(self._np(outputs[p + "normal_coarse"]), gt)[m])
            detail.append(normal_angles(self._np(outputs[p + "normal_detail"]), gt)[m])

    def compute(self) -> Dict[str, float]:
        out = {}
        for p, (coarse, detail) in self._angles.items():
            if not coarse or sum(a.size for a in coarse) == 0:
                continue
            c, d = np.concatenate(coarse), np.concatenate(detail)
            out.update({p + "angle_coarse": float(c.mean()), p + "angle_detail": float(d.mean()),
                        p + "angle_coarse_median": float(np.median(c)), p + "angle_detail_median": float(np.median(d)),
                        p + "angle_ratio": float(d.mean() / max(c.mean(), 1e-12)), p + "angle_pixels": float(c.size)})
        return out
