"""Where mediapipe's 468 face-mesh points lie on a FLAME-topology model: triangles + barycentrics.

    from ppface3d.flame.mediapipe_embedding import mediapipe_embedding
    emb = mediapipe_embedding(face)            # a FaceModel (or a FLAME: rendered with a default albedo)
    emb.faces_idx (468,)  emb.bary (468, 3)  emb.weight (468,)   # weight 0: face-oval points
    pts = emb.points(vertices)                 # (B, 468, 3) differentiable, like FLAME's landmarks
    face.flame.set_dense_landmarks(emb.faces_idx, emb.bary)      # FLAME then returns landmarks_dense

It is computed for the model in use (the generated model, or a real FLAME file given by path)
and cached in ``$PPFACE3D_CACHE/mediapipe_embedding/<hash of the model and landmark files>.npz``:

1. the model is rendered (mean head, then random shapes, albedos, lights, yaw within +-20 and
   pitch within +-10 degrees) and mediapipe's face mesh runs on every render (as on a photo);
2. each detected point is lifted onto the visible triangle under it (barycentrics in screen
   space), which names a point on the template; the median over the renders is kept (the
   renders have the jaw a little open, so a lip point lands on its own lip);
3. the 51 inner points of the 68-point scheme (``MEDIAPIPE_TO_68[17:]``) are set to the model's
   own static landmark embedding, and a smooth thin-plate warp fitted on them moves every other
   point the same way (the dense term and the 68-landmark term then agree where they meet);
4. every point is snapped onto the closest skin triangle (not the eyeballs or mouth bag) on
   its side of the mouth (jaw-skinned or not, as in the renders).

The 36 face-oval points (mediapipe's ``FACEMESH_FACE_OVAL``) lie on the silhouette, which moves
over the surface with the head pose, like FLAME's contour landmarks: their ``weight`` is 0 and
fitting terms should leave them out. Points found in fewer than half the renders also get 0.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ppengine.errors import InputError

EMBEDDING_VERSION = 1
N_POINTS = 468
# mediapipe.solutions.face_mesh_connections.FACEMESH_FACE_OVAL, as vertex indices (the test checks them)
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                      152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109])


@dataclass
class MediapipeEmbedding:
    """468 points on the model's surface, in mediapipe's face-mesh order.

    faces_idx (468,) int64 triangle indices into the model's faces; bary (468, 3) float32
    barycentric weights; weight (468,) float32: 1 for points a fitting term should use, 0 for
    the face oval (pose-dependent silhouette) and unreliable points; source: what it was
    computed for.
    """

    faces_idx: np.ndarray
    bary: np.ndarray
    weight: np.ndarray
    source: str = ""

    def points(self, vertices, faces):
        """Surface points (B, 468, 3) of posed vertices (B, V, 3) (paddle, differentiable);
        ``faces`` (F, 3) the model's triangles."""
        import paddle

        from .lbs import barycentric_points

        idx = paddle.to_tensor(np.asarray(faces, np.int64)[self.faces_idx])
        return barycentric_points(vertices, idx, paddle.to_tensor(self.bary, dtype=vertices.dtype))

    def save(self, path: str) -> str:
        from ppengine.io import atomic_save

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, faces_idx=self.faces_idx, bary=self.bary, weight=self.weight,
                         source=np.array(self.source), version=np.array(EMBEDDING_VERSION))

        return atomic_save(path, write)

    @classmethod
    def load(cls, path: str) -> "MediapipeEmbedding":
        try:
            with np.load(path, allow_pickle=False) as z:
                emb = cls(z["faces_idx"].astype(np.int64), z["bary"].astype(np.float32),
                          z["weight"].astype(np.float32), str(z["source"]))
        except Exception as e:
            raise InputError(f"{path}: not a mediapipe embedding ({type(e).__name__}: {e})") from None
        if emb.faces_idx.shape != (N_POINTS,) or emb.bary.shape != (N_POINTS, 3):
            raise InputError(f"{path}: expected {N_POINTS} points, got faces_idx {emb.faces_idx.shape}")
        return emb


def _file_digest(*paths) -> str:
    h = hashlib.sha1(f"mediapipe-embedding v{EMBEDDING_VERSION}".encode())
    for p in paths:
        if p and os.path.isfile(p):
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def cache_path(flame, anchor: str = "warp") -> str:
    """Cache file of the embedding of a :class:`~ppface3d.flame.FLAME` (keyed on its files)."""
    from .generate import cache_dir

    key = _file_digest(flame.model_path, flame.landmark_path)
    return os.path.join(cache_dir(), "mediapipe_embedding", f"{key}{'' if anchor == 'warp' else '_' + anchor}.npz")


def mediapipe_embedding(model, cache: bool = True, views: int = 16, seed: int = 0,
                        anchor: str = "warp") -> MediapipeEmbedding:
    """The embedding for ``model`` (a :class:`~ppface3d.face_model.FaceModel` or a
    :class:`~ppface3d.flame.FLAME`), from the cache or computed (a few seconds) and cached."""
    from ..face_model import FaceModel

    flame = model.flame if isinstance(model, FaceModel) else model
    path = cache_path(flame, anchor)
    if cache and os.path.isfile(path):
        return MediapipeEmbedding.load(path)
    face = model if isinstance(model, FaceModel) else FaceModel(
        n_shape=min(flame.n_shape, 100), n_exp=min(flame.n_expression, 10), n_tex=20, image_size=256,
        flame_model_path=flame.model_path, flame_landmark_path=flame.landmark_path)
    emb = compute_embedding(face, views=views, seed=seed, anchor=anchor)
    if cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        emb.save(path)
    return emb


# --------------------------------------------------------------------------- computation
def _skin_faces(flame) -> np.ndarray:
    """Triangles a landmark may lie on: not the eyeballs (skinned to the eye joints) and not the
    generated model's mouth bag (its part label 3)."""
    f = flame.faces
    w = flame.lbs_weights.numpy()
    keep = ~(w[f][:, :, 3:].sum(-1) > 0.5).all(1)
    if flame.model_path.endswith(".pkl"):
        from .safe_pickle import load_pickle

        labels = load_pickle(flame.model_path).get("part_labels")
        if labels is not None and len(labels) == flame.num_vertices:
            keep &= ~(np.asarray(labels)[f] == 3).all(1)
    return np.nonzero(keep)[0]


def _lift(points_px, pix_to_face, screen_xy, faces, size):
    """Detected points (468, 2) pixels -> (face index, barycentrics) of the visible triangle under
    each (screen-space barycentrics, clipped onto the triangle); face -1 off the mesh."""
    from ..render import pixels_to_ndc

    q = pixels_to_ndc(points_px, size)
    ij = np.clip(np.round(points_px).astype(int), 0, size - 1)
    fi = pix_to_face[ij[:, 1], ij[:, 0]].astype(np.int64)
    ok = fi >= 0
    tri = screen_xy[faces[np.where(ok, fi, 0)]]  # (468, 3, 2)
    e1, e2, d = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], q - tri[:, 0]
    den = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    l1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / den
    l2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / den
    b = np.clip(np.stack([1 - l1 - l2, l1, l2], 1), 0, None)
    b /= np.maximum(b.sum(1, keepdims=True), 1e-12)
    return np.where(ok, fi, -1), b


def feature_colors(flame) -> np.ndarray:
    """(V, 3) vertex colours that make a render read as a face to a detector: skin, darker lips
    (inside the template's outer-lip landmark polygon) and brows (along the brow landmarks),
    white eyeballs with iris and pupil, a dark mouth bag. Any FLAME topology with a 68-point
    embedding."""
    import paddle
    from matplotlib.path import Path

    v = flame.v_template.numpy().astype(np.float64)
    w = flame.lbs_weights.numpy()
    col = np.tile([0.80, 0.64, 0.55], (len(v), 1))
    with paddle.no_grad():
        lm = flame.forward(shape=paddle.zeros([1, 1])).landmarks.numpy()[0].astype(np.float64)
    front = v[:, 2] > lm[30, 2] - 0.035
    lips = Path(lm[48:60, :2]).contains_points(v[:, :2]) & front & (v[:, 2] > lm[51, 2] - 0.012)
    col[lips] = [0.62, 0.30, 0.30]
    for a, b in ((17, 22), (22, 27)):  # each brow as a polyline: distance in the frontal plane
        seg0, seg1 = lm[a:b - 1, :2], lm[a + 1:b, :2]
        d = seg1 - seg0
        t = np.clip(((v[:, None, :2] - seg0[None]) * d[None]).sum(-1) / (d * d).sum(-1)[None], 0, 1)
        dist = np.linalg.norm(v[:, None, :2] - (seg0[None] + t[..., None] * d[None]), axis=-1).min(1)
        col[(dist < 0.004) & front & (v[:, 2] > lm[19, 2] - 0.012)] = [0.30, 0.20, 0.15]
    for k in (3, 4):  # eyeballs
        sel = w[:, k] > 0.5
        if sel.any():
            ctr = v[sel].mean(0)
            rel = v[sel] - ctr
            fwd = rel[:, 2] / (np.linalg.norm(rel, axis=1) + 1e-12)
            c = np.tile([0.95, 0.95, 0.93], (sel.sum(), 1))
            c[fwd > 0.80] = [0.30, 0.35, 0.40]
            c[fwd > 0.93] = [0.05, 0.05, 0.05]
            col[sel] = c
    if flame.model_path.endswith(".pkl"):
        from .safe_pickle import load_pickle

        labels = load_pickle(flame.model_path).get("part_labels")
        if labels is not None and len(labels) == len(v):
            col[np.asarray(labels) == 3] = [0.20, 0.05, 0.05]
    return col.astype(np.float32)


def _views(face, views: int, seed: int):
    """Yield (image uint8 (S, S, 3), pix_to_face (S, S), screen xy (V, 2)) of random renders."""
    import paddle
    from scipy.spatial.transform import Rotation

    from ..face_model import sh_ambient

    S = face.image_size
    rng = np.random.default_rng(seed)
    t = paddle.to_tensor
    ns = face.code_sizes["shape"]
    paint = feature_colors(face.flame)
    for k in range(views):
        first = k == 0  # the mean head, frontal
        shape = np.zeros((1, ns), np.float32) if first else rng.normal(size=(1, ns)).astype(np.float32)
        yaw, pitch = (0.0, 0.0) if first else (rng.uniform(-20, 20), rng.uniform(-10, 10))
        pose = np.zeros((1, 6), np.float32)
        pose[0, :3] = Rotation.from_euler("YX", [yaw, pitch], degrees=True).as_rotvec()
        pose[0, 3] = 0.12 if first else rng.uniform(0.06, 0.2)  # lips apart: each lip point lands on its lip
        with paddle.no_grad():
            dec = face.decode({"shape": t(shape), "pose": t(pose)})
            cam = face.framing_camera(dec["landmarks3d"].numpy()[0])
            dec = face.place(dec, t(cam[None]))
            light = sh_ambient(0.75)
            light[3], light[2], light[1] = 0.35, 0.15, rng.uniform(-0.1, 0.1)
            tone = 1.0 if first else rng.uniform(0.75, 1.1)
            colors = t(np.clip(paint * tone, 0, 1)[None])
            r = face.renderer(dec["vertices"], face.camera(dec["cam"]), lights=t(light[None]), vertex_colors=colors,
                              background=paddle.full([1, 3, S, S], float(rng.uniform(0.2, 0.5))))
        img = (np.clip(r["images"].numpy()[0].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
        yield img, r["fragments"].pix_to_face.numpy()[0], r["transformed_vertices"].numpy()[0][:, :2]


def compute_embedding(face, views: int = 16, seed: int = 0, detector=None, anchor: str = "warp") -> MediapipeEmbedding:
    """Compute the embedding of a :class:`~ppface3d.face_model.FaceModel`'s FLAME (see the module
    docstring). ``detector``: a :class:`~ppface3d.data.preprocess.FacePreprocessor` (made here
    when None). Needs the model's static landmark embedding (the 51 inner anchors)."""
    from scipy.interpolate import RBFInterpolator

    from ..data.preprocess import MEDIAPIPE_TO_68, FacePreprocessor

    flame = face.flame
    if not flame.has_landmarks:
        raise InputError(f"{flame.model_path}: the mediapipe embedding needs the model's 68-landmark embedding "
                         "(give flame_landmark_path: DECA's landmark_embedding.npy)")
    if face.image_size < 192:
        face = face.at_size(256)
    S = face.image_size
    F = flame.faces
    vt = flame.v_template.numpy().astype(np.float64)
    det = detector or FacePreprocessor()
    lifted, jaws = [], []
    jaw_w = flame.lbs_weights.numpy()[:, 2].astype(np.float64)
    from ppengine.quiet import native_stderr_filtered

    with native_stderr_filtered():
        for img, p2f, sxy in _views(face, views, seed):
            boxes = det.detect_boxes(img)
            pts = det.mesh_landmarks(img, boxes[0][0]) if boxes else None
            if pts is None:
                continue
            fi, b = _lift(pts, p2f, sxy, F, S)
            p = (vt[F[np.maximum(fi, 0)]] * b[:, :, None]).sum(1)
            p[fi < 0] = np.nan
            lifted.append(p)
            jaws.append(np.where(fi >= 0, (jaw_w[F[np.maximum(fi, 0)]] * b).sum(1), np.nan))
    if len(lifted) < max(2, views // 4):
        raise InputError(f"{flame.model_path}: mediapipe found a face in only {len(lifted)} of {views} renders "
                         "of the model; cannot place its 468 points")
    P = np.stack(lifted)                                     # (n_views, 468, 3) template points
    found = np.isfinite(P[..., 0]).mean(0)
    med = np.nanmedian(P, 0)
    med = np.where(np.isfinite(med), med, np.nanmean(med, 0))
    on_jaw = np.nanmedian(np.stack(jaws), 0) > 0.5
    # anchors: the 51 inner points of the 68 scheme, at the model's own static landmarks where
    # those sit on the same side of the mouth as mediapipe's point (the generated model's lower
    # inner-lip landmarks 65-67 lie on the upper lip: they are left out)
    anchor_mp = MEDIAPIPE_TO_68[17:]
    st_idx = flame.lmk_static_idx.numpy()  # (51, 3) vertex ids of each landmark's triangle
    st_bary = flame.lmk_static_bary.numpy().astype(np.float64)
    target = (vt[st_idx] * st_bary[:, :, None]).sum(1)
    consistent = ((jaw_w[st_idx] * st_bary).sum(1) > 0.5) == on_jaw[anchor_mp]
    warped = med.copy()
    if anchor == "warp":
        a_mp, a_t = anchor_mp[consistent], target[consistent]
        warp = RBFInterpolator(med[a_mp], a_t - med[a_mp], kernel="thin_plate_spline", smoothing=1e-6)
        warped = med + warp(med)
    elif anchor != "none":
        raise InputError(f"compute_embedding: anchor={anchor!r}, expected 'warp' or 'none'")
    # onto the skin, on the point's side of the mouth
    import trimesh

    skin = _skin_faces(flame)
    face_jaw = jaw_w[F[skin]].mean(1) > 0.5
    faces_idx = np.zeros(N_POINTS, np.int64)
    closest = np.zeros((N_POINTS, 3))
    for side in (False, True):
        sel, fs = on_jaw == side, skin[face_jaw == side]
        if sel.any():
            mesh = trimesh.Trimesh(vertices=vt, faces=F[fs], process=False)
            closest[sel], _, tri = trimesh.proximity.closest_point(mesh, warped[sel])
            faces_idx[sel] = fs[tri]
    bary = trimesh.triangles.points_to_barycentric(vt[F[faces_idx]], closest)
    bary = np.clip(bary, 0, None)
    bary /= bary.sum(1, keepdims=True)
    if anchor == "warp":  # the consistent anchors exactly as the landmark embedding has them
        lookup = {tuple(r): i for i, r in enumerate(F.tolist())}
        a_mp = anchor_mp[consistent]
        faces_idx[a_mp] = [lookup[tuple(r)] for r in st_idx[consistent].tolist()]
        bary[a_mp] = st_bary[consistent]
    weight = np.ones(N_POINTS, np.float32)
    weight[FACE_OVAL] = 0.0
    weight[found < 0.5] = 0.0
    src = f"{os.path.basename(flame.model_path)}: {len(lifted)}/{views} renders, v{EMBEDDING_VERSION}"
    return MediapipeEmbedding(faces_idx.astype(np.int64), bary.astype(np.float32), weight, src)


def spread_mm(face, emb: Optional[MediapipeEmbedding] = None, views: int = 8, seed: int = 1) -> np.ndarray:
    """Diagnostic: per point, the distance (mm, on the template) between the embedding and where
    mediapipe puts the point on further renders (median over ``views``)."""
    from ..data.preprocess import FacePreprocessor

    emb = emb or mediapipe_embedding(face)
    if face.image_size < 192:
        face = face.at_size(256)
    F = face.flame.faces
    vt = face.flame.v_template.numpy().astype(np.float64)
    ref = (vt[F[emb.faces_idx]] * emb.bary[:, :, None]).sum(1)
    det = FacePreprocessor()
    d = []
    for img, p2f, sxy in _views(face, views, seed):
        boxes = det.detect_boxes(img)
        pts = det.mesh_landmarks(img, boxes[0][0]) if boxes else None
        if pts is None:
            continue
        fi, b = _lift(pts, p2f, sxy, F, face.image_size)
        p = (vt[F[np.maximum(fi, 0)]] * b[:, :, None]).sum(1)
        p[fi < 0] = np.nan
        d.append(np.linalg.norm(p - ref, axis=1) * 1000.0)
    return np.nanmedian(np.stack(d), 0)
