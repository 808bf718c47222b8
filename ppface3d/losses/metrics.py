"""Face reconstruction metrics: NoW-style scan-to-mesh error, vertex error, landmark NME.

NoW protocol (Sanyal et al. 2019, NoW evaluation code), as reproduced here:
1. similarity alignment (rotation, translation, scale) of the predicted mesh to the scan with
   7 corresponding 3D landmarks (eye corners 36/39/42/45, nose base 33, mouth corners 48/54
   of the 68-point scheme);
2. a rigid refinement that minimises the scan-to-mesh distance (here: ICP with a similarity
   update on closest points, a few iterations);
3. the error is the distance of every scan vertex to the closest point on the predicted
   mesh surface (trimesh's exact point-to-triangle query), reported in millimetres as median,
   mean and standard deviation.
On the synthetic test set the "scan" is the ground-truth FLAME mesh in neutral expression and
pose, cropped to a sphere around the nose tip (NoW's scans are face crops).
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional

import numpy as np

from ppengine.registry import METRICS

NOW_LANDMARKS_68 = np.array([36, 39, 42, 45, 33, 48, 54], dtype=np.int64)


def similarity_align(src: np.ndarray, dst: np.ndarray):
    """Least-squares similarity (Umeyama, via scikit-image) mapping src (N, 3) onto dst (N, 3).

    Returns (4, 4) homogeneous matrix.
    """
    from skimage.transform import SimilarityTransform

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(SimilarityTransform, "from_estimate"):
            tf = SimilarityTransform.from_estimate(np.asarray(src, np.float64), np.asarray(dst, np.float64))
            if not tf:
                return np.eye(4)
        else:  # older scikit-image
            tf = SimilarityTransform(dimensionality=3)
            if not tf.estimate(np.asarray(src, np.float64), np.asarray(dst, np.float64)):
                return np.eye(4)
    return np.asarray(tf.params, np.float64)


def transform_points(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) matrix to (N, 3) points."""
    return pts @ M[:3, :3].T + M[:3, 3]


def scan_to_mesh(points: np.ndarray, verts: np.ndarray, faces: np.ndarray):
    """Distance of each point (N, 3) to the closest point on the mesh surface.

    Returns (distances (N,), closest points (N, 3)). Uses trimesh.proximity (needs rtree).
    """
    import trimesh

    mesh = trimesh.Trimesh(vertices=np.asarray(verts, np.float64), faces=np.asarray(faces), process=False)
    closest, dist, _ = trimesh.proximity.closest_point(mesh, np.asarray(points, np.float64))
    return dist, closest


def now_align(pred_verts, pred_lmk, faces, scan, scan_lmk, icp_iters: int = 3):
    """NoW's alignment of a predicted mesh onto a scan.

    Args:
        pred_verts (V, 3), pred_lmk (7, 3): predicted mesh and its landmarks.
        faces (F, 3): predicted mesh triangles.
        scan (N, 3), scan_lmk (7, 3): scan points and their landmarks.
        icp_iters: rigid (similarity) refinement steps on scan-to-mesh closest points.
    Returns:
        aligned predicted vertices (V, 3).
    """
    M = similarity_align(pred_lmk, scan_lmk)
    verts = transform_points(M, pred_verts)
    for _ in range(icp_iters):
        _, closest = scan_to_mesh(scan, verts, faces)
        # move the mesh so its closest points land on the scan
        M = similarity_align(closest, scan)
        verts = transform_points(M, verts)
    return verts


def crop_scan(verts: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Vertices (V, 3) within ``radius`` of ``center`` (3,)."""
    return verts[np.linalg.norm(verts - center[None], axis=1) <= radius]


def shape_error_matrix(flame, n_shape: int, radius: float = 0.095, unit: float = 1000.0) -> np.ndarray:
    """(n_shape, n_shape) matrix M such that, for a small shape-code error e, ``e M e`` is the mean
    squared vertex distance (in ``unit``^2, mm^2 by default) between the two neutral meshes over
    the face region the scan-to-mesh metric scores (within ``radius`` of the nose tip of the
    mean face), after the best similarity alignment (to first order: the basis directions with
    the translations, rotations and uniform scaling of that region projected out). A loss
    ``e M e`` weighs each coefficient by what it costs the NoW-style error."""
    import paddle

    with paddle.no_grad():
        mean = flame(shape=paddle.zeros([1, flame.n_shape]))
    lmk = (mean.landmarks_full68 if mean.landmarks_full68 is not None else mean.landmarks).numpy()[0]
    vt = flame.v_template.numpy().astype(np.float64)
    face = np.linalg.norm(vt - lmk[30], axis=1) <= radius
    v = vt[face]
    c = v.mean(0)
    similarity = ([np.tile(e, (len(v), 1)) for e in np.eye(3)]  # translations
                  + [np.cross(e, v - c) for e in np.eye(3)]  # infinitesimal rotations
                  + [v - c])  # scale
    Q, _ = np.linalg.qr(np.stack([d.reshape(-1) for d in similarity], 1))
    B = flame.dirs.numpy()[:n_shape].astype(np.float64).reshape(n_shape, -1, 3)[:, face].reshape(n_shape, -1).T
    B = B - Q @ (Q.T @ B)
    return (B.T @ B / len(v) * unit ** 2).astype(np.float32)


def landmark_nme(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-image mean landmark error over the outer-eye-corner distance (36-45).

    pred, gt: (B, 68, 2) in the same pixel/normalised frame. Returns (B,).
    """
    pred, gt = np.asarray(pred)[..., :2], np.asarray(gt)[..., :2]
    iod = np.linalg.norm(gt[:, 36] - gt[:, 45], axis=-1)
    return np.linalg.norm(pred - gt, axis=-1).mean(-1) / np.maximum(iod, 1e-8)


def now_errors(pred_verts, pred_lmk68, gt_verts, gt_lmk68, faces, radius: float = 0.095,
               unit: float = 1000.0, icp_iters: int = 3):
    """Scan-to-mesh errors (N_scan,) and vertex errors (V,) in mm for one prediction.

    pred_verts, gt_verts (V, 3) in metres (same topology: vertex error after alignment);
    pred_lmk68, gt_lmk68 (68, 3); faces (F, 3). ``radius``: scan crop around the nose tip (30).
    """
    idx = NOW_LANDMARKS_68
    scan = crop_scan(gt_verts, gt_lmk68[30], radius)
    aligned = now_align(pred_verts, pred_lmk68[idx], faces, scan, gt_lmk68[idx], icp_iters)
    d, _ = scan_to_mesh(scan, aligned, faces)
    vert = np.linalg.norm(aligned - gt_verts, axis=-1)
    return d * unit, vert * unit


@METRICS.register()
class FaceReconstructionMetric:
    """NoW-style scan-to-mesh error, vertex error and landmark NME, for the model and for the
    mean-shape baseline (FLAME template, zero shape) on the same samples.

    Needs from the model's eval outputs: 'verts_neutral' (B, V, 3), 'lmk3d_neutral' (B, 68, 3),
    'faces' (F, 3), 'verts_mean' (V, 3), 'lmk3d_mean' (68, 3), 'landmarks2d' (B, 68, 2); and from
    the batch: 'gt_verts_neutral' (B, V, 3), 'gt_lmk3d_neutral' (B, 68, 3), 'landmark' (B, 68, 3)
    (without 'landmarks2d' or 'landmark', e.g. for a shape-only model, no ``lmk_nme``).
    Results (mm / ratio): s2m_median, s2m_mean, s2m_std, vertex_mean, lmk_nme and the same with
    a ``baseline_`` prefix; ``s2m_median_ratio`` = model / baseline median.
    """

    def __init__(self, radius: float = 0.095, unit: float = 1000.0, icp_iters: int = 3,
                 max_samples: Optional[int] = None):
        self.radius, self.unit, self.icp_iters = float(radius), float(unit), int(icp_iters)
        self.max_samples = max_samples
        self.reset()

    def reset(self):
        self._s2m, self._vert, self._nme = [], [], []
        self._bs2m, self._bvert = [], []
        self._n = 0

    @staticmethod
    def _np(x):
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    def update(self, batch: Dict, outputs: Dict):
        pv = self._np(outputs["verts_neutral"]).reshape([-1] + list(self._np(outputs["verts_neutral"]).shape[-2:]))
        pl = self._np(outputs["lmk3d_neutral"]).reshape(-1, 68, 3)
        faces = self._np(outputs["faces"]).astype(np.int64)
        mv, ml = self._np(outputs["verts_mean"]), self._np(outputs["lmk3d_mean"])
        gv = self._np(batch["gt_verts_neutral"]).reshape(pv.shape)
        gl = self._np(batch["gt_lmk3d_neutral"]).reshape(-1, 68, 3)
        if "landmarks2d" in outputs and "landmark" in batch:  # shape-only models (MICA) have no landmarks
            l2 = self._np(outputs["landmarks2d"]).reshape(-1, 68, 2)
            lt = self._np(batch["landmark"]).reshape(-1, 68, 3)
            self._nme.extend(landmark_nme(l2, lt).tolist())
        for i in range(pv.shape[0]):
            if self.max_samples is not None and self._n >= self.max_samples:
                break
            d, v = now_errors(pv[i], pl[i], gv[i], gl[i], faces, self.radius, self.unit, self.icp_iters)
            self._s2m.append(d)
            self._vert.append(v.mean())
            d, v = now_errors(mv, ml, gv[i], gl[i], faces, self.radius, self.unit, self.icp_iters)
            self._bs2m.append(d)
            self._bvert.append(v.mean())
            self._n += 1

    def compute(self) -> Dict[str, float]:
        if not self._s2m:
            return {}
        s2m, bs2m = np.concatenate(self._s2m), np.concatenate(self._bs2m)
        out = {
            "s2m_median": float(np.median(s2m)), "s2m_mean": float(s2m.mean()), "s2m_std": float(s2m.std()),
            "vertex_mean": float(np.mean(self._vert)),
            "baseline_s2m_median": float(np.median(bs2m)), "baseline_s2m_mean": float(bs2m.mean()),
            "baseline_s2m_std": float(bs2m.std()), "baseline_vertex_mean": float(np.mean(self._bvert)),
        }
        if self._nme:
            out["lmk_nme"] = float(np.mean(self._nme))
        out["s2m_median_ratio"] = out["s2m_median"] / max(out["baseline_s2m_median"], 1e-12)
        out["num_samples"] = float(self._n)
        return out
