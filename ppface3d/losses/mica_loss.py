"""MICA's loss: a region-weighted L1 distance between predicted and true neutral meshes.

    loss = MICALoss()                      # MICA's weights: face 150, whole 1, eyes 0.01, ears 0.01, x 1000
    loss.setup(face_model)                 # the regions of the model's FLAME (ppface3d.flame.masks)
    loss(pred_vertices, gt_vertices)       # (N, V, 3) each, metres

As MICA's ``compute_losses``: ``mean(|pred - gt| * w) * 1000`` over every image, vertex and
coordinate, with ``w`` (V,) from :func:`ppface3d.flame.masks.vertex_weights` (the face region
150, eyeballs and ears 0.01, everything else 1).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import paddle

from ppengine.registry import LOSSES


def mica_vertex_loss(pred: paddle.Tensor, gt: paddle.Tensor, weights: paddle.Tensor, scale: float = 1000.0):
    """``mean(|pred - gt| * weights[None, :, None]) * scale``; pred, gt (N, V, 3), weights (V,)."""
    return ((pred - gt).abs() * weights.reshape([1, -1, 1])).mean() * scale


@LOSSES.register()
class MICALoss:
    """MICA's region-weighted L1 vertex loss on the neutral mesh.

    Args:
        face, whole, eyes, ears: region weights (MICA: 150, 1, 0.01, 0.01).
        scale: overall factor (MICA: 1000, metres -> millimetres).
        masks_path: FLAME's ``FLAME_masks.pkl`` for a real FLAME model (the generated model's
            regions are derived from it; see :mod:`ppface3d.flame.masks`).
    """

    def __init__(self, face: float = 150.0, whole: float = 1.0, eyes: float = 0.01, ears: float = 0.01,
                 scale: float = 1000.0, masks_path: Optional[str] = None):
        self.region_weights = dict(face=float(face), whole=float(whole), eyes=float(eyes), ears=float(ears))
        self.scale = float(scale)
        self.masks_path = masks_path
        self.weights = None
        self.masks = None

    def setup(self, face_model) -> None:
        """Per-vertex weights for the face model's FLAME."""
        from ..flame.masks import flame_masks, vertex_weights

        flame = face_model.flame
        self.masks = flame_masks(flame, self.masks_path)
        w = vertex_weights(self.masks, flame.num_vertices, **self.region_weights)
        self.weights = paddle.to_tensor(np.asarray(w, np.float32))

    def __call__(self, pred: paddle.Tensor, gt: paddle.Tensor) -> paddle.Tensor:
        if self.weights is None:
            raise RuntimeError("MICALoss.setup(face_model) must be called first")
        return mica_vertex_loss(pred, gt, self.weights, self.scale)
