"""Where the face is in a FLAME model's UV layout: the 68 landmarks in UV and a face mask.

    uv = landmark_uv(flame)                 # (68, 2) u, v in [0, 1] (v up) of the iBUG-68 points
    mask = uv_face_mask(flame, 256)         # (256, 256) float32: forehead, brows, eyes, cheeks, nose,
                                            # mouth and chin (the region DECA's detail branch acts on)

The landmarks are barycentric points on mesh triangles (the landmark embedding), so their UV
position is the same barycentric point on the triangle's UV corners: this works for the
generated model and for FLAME 2020 with DECA's embedding alike. The mask stands in for DECA's
``uv_face_eye_mask.png`` (which ships with DECA's data and is used instead when given): the
polygon of the jaw contour (points 0-16) closed over the forehead by the brows (17-26) raised
by ``forehead`` times the brow-to-eye distance.
"""
from __future__ import annotations

import numpy as np

from ppengine.errors import InputError


def _embedding_faces(flame, vertex_ids: np.ndarray) -> np.ndarray:
    """Triangle index of each landmark from its three vertex ids (the buffers keep vertex ids)."""
    faces = np.asarray(flame.faces, np.int64)
    lookup = {tuple(f): i for i, f in enumerate(faces)}
    out = []
    for row in np.asarray(vertex_ids, np.int64):
        i = lookup.get(tuple(row))
        if i is None:
            raise InputError("landmark embedding: a landmark triangle is not a triangle of the mesh")
        out.append(i)
    return np.asarray(out, np.int64)


def landmark_uv(flame) -> np.ndarray:
    """(68, 2) UV coordinates (u, v; v up) of the iBUG-68 landmarks of ``flame``.

    Uses the static 68-point embedding when the model has one; otherwise the 51 inner points
    and the zero-yaw row of the dynamic contour.
    """
    if flame.uv_coords is None:
        raise InputError("landmark_uv: this FLAME model has no UV layout (vt / ft)")
    if getattr(flame, "has_full68", False):
        ids, bary = flame.lmk_full_idx.numpy(), flame.lmk_full_bary.numpy()
    elif getattr(flame, "has_contour", False):
        ids = np.concatenate([flame.lmk_dynamic_idx.numpy()[0], flame.lmk_static_idx.numpy()])
        bary = np.concatenate([flame.lmk_dynamic_bary.numpy()[0], flame.lmk_static_bary.numpy()])
    else:
        raise InputError("landmark_uv: the landmark embedding has no jaw contour (needs the 68-point or "
                         "dynamic contour embedding)")
    fid = _embedding_faces(flame, ids)
    uv = np.asarray(flame.uv_coords, np.float64)[np.asarray(flame.uv_faces, np.int64)[fid]]  # (68, 3, 2)
    return (uv * np.asarray(bary, np.float64)[..., None]).sum(1).astype(np.float32)


def uv_to_texel(uv: np.ndarray, size: int) -> np.ndarray:
    """UV (..., 2) -> texel coordinates (..., 2) = (column, row) of a ``size`` map, row 0 at the
    top (v = 1), texel centres at integers (as :class:`~ppface3d.models.displacement.UVMap`)."""
    uv = np.asarray(uv, np.float64)
    return np.stack([uv[..., 0] * size - 0.5, (1.0 - uv[..., 1]) * size - 0.5], -1)


def uv_face_mask(flame, size: int, forehead: float = 2.2) -> np.ndarray:
    """(size, size) float32 0/1 face region in UV (see the module docstring)."""
    from skimage.draw import polygon

    t = uv_to_texel(landmark_uv(flame), size)  # (68, 2) col, row
    eyes = t[36:48].mean(0)
    brows = t[17:27]
    lift = forehead * max(eyes[1] - brows[:, 1].mean(), 1.0)
    top = brows[::-1].copy()  # 26 -> 17, closing the contour 0 -> 16
    top[:, 1] -= lift
    top[:, 0] = eyes[0] + (top[:, 0] - eyes[0]) * 1.1  # the forehead is a little wider than the brows
    ring = np.concatenate([t[:17], top], 0)
    rr, cc = polygon(ring[:, 1], ring[:, 0], shape=(size, size))
    mask = np.zeros((size, size), np.float32)
    mask[rr, cc] = 1.0
    return mask
