"""Identity consistency: how much a model's neutral shape of one subject moves between its images.

MICA's claim is that a shape read from identity features stays put when pose, expression and
light change, where a per-image regressor (DECA) scatters. On a dataset with K > 1 images per
subject (``SyntheticFaces(K=4)``), for every subject: the predicted neutral meshes of its K images,
their mean, and the mean distance of each to that mean over the face region (the vertices within
``radius`` of the mean face's nose tip, the region the NoW-style error scores), in millimetres.

Results: ``identity_spread_mm`` (mean over subjects; lower = more consistent), and for scale
``between_subjects_mm`` (the same distance between each subject's mean prediction and the mean
over all subjects: how far the model's shapes move from one person to the next) and
``gt_between_subjects_mm`` (the same for the true meshes, when the batch has them). A model that
predicts one face for everybody has spread 0 and between-subject distance 0 too; compare the
ratio ``spread_over_between``.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from ppengine.registry import METRICS


def _np(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


@METRICS.register()
class IdentitySpreadMetric:
    """Spread of a subject's predicted neutral mesh over its K images (see the module docstring).

    Needs from the model's eval outputs 'verts_neutral' (B*K, V, 3), 'verts_mean' (V, 3) and
    'lmk3d_mean' (68, 3) (DECA's and MICA's ``eval_step``), and from the batch 'subject' (B,) (or
    any (B, K, ...) entry giving K); 'gt_verts_neutral' (B, K, V, 3) adds the true between-subject
    distance.
    """

    def __init__(self, radius: float = 0.095, unit: float = 1000.0):
        self.radius, self.unit = float(radius), float(unit)
        self.reset()

    def reset(self):
        self._spread, self._means, self._gt_means = [], [], []
        self._region = None

    def update(self, batch: Dict, outputs: Dict):
        pv = _np(outputs["verts_neutral"])
        pv = pv.reshape(-1, pv.shape[-2], 3)
        B = len(_np(batch["subject"]).reshape(-1)) if "subject" in batch else _np(batch["shape"]).shape[0]
        K = pv.shape[0] // B
        if self._region is None:
            mv, ml = _np(outputs["verts_mean"]), _np(outputs["lmk3d_mean"])
            self._region = np.linalg.norm(mv - ml[30], axis=-1) <= self.radius
        pv = pv.reshape(B, K, -1, 3)[:, :, self._region].astype(np.float64)
        mean = pv.mean(1, keepdims=True)
        if K > 1:
            self._spread.extend((np.linalg.norm(pv - mean, axis=-1).mean((1, 2)) * self.unit).tolist())
        self._means.append(mean[:, 0])
        if "gt_verts_neutral" in batch:
            gt = _np(batch["gt_verts_neutral"])
            self._gt_means.append(gt.reshape(B, -1, gt.shape[-2], 3)[:, 0, self._region].astype(np.float64))

    def compute(self) -> Dict[str, float]:
        if not self._means:
            return {}
        out = {}
        if self._spread:
            out["identity_spread_mm"] = float(np.mean(self._spread))

        def between(means):
            m = np.concatenate(means)
            return float(np.linalg.norm(m - m.mean(0, keepdims=True), axis=-1).mean() * self.unit)

        out["between_subjects_mm"] = between(self._means)
        if self._gt_means:
            out["gt_between_subjects_mm"] = between(self._gt_means)
        if "identity_spread_mm" in out:
            out["spread_over_between"] = out["identity_spread_mm"] / max(out["between_subjects_mm"], 1e-12)
        return out
