"""Left-right mirror maps of a FLAME model: how a head mirrored in x (FLAME's left-right axis)
is expressed in the same model.

Mirroring a head whose template is symmetric pairs every vertex with its partner across the
x = 0 plane; a shape or expression direction that is mirror-symmetric keeps its coefficient,
an antisymmetric one flips its sign, and one that is neither has no coefficient in the mirrored
head (sign 0). Used for test-time flip averaging (``DECA(test_flip=True)``).
"""
from dataclasses import dataclass

import numpy as np

MIRROR_X = np.array([-1.0, 1.0, 1.0], np.float32)
# iBUG-68 landmark j of a mirrored face is the mirror image of landmark IBUG68_MIRROR[j] of the face
IBUG68_MIRROR = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
                         + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
                         + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


@dataclass
class MirrorMaps:
    """vertex_pair (V,): each vertex's partner; shape_sign (n_shape,), exp_sign (n_exp,): +1 / -1 /
    0 per coefficient; symmetric: the template is symmetric and every coefficient has a sign (a
    mirrored head is then exactly a head of the model)."""
    vertex_pair: np.ndarray
    shape_sign: np.ndarray
    exp_sign: np.ndarray
    symmetric: bool


def _signs(dirs: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """dirs (n, V, 3) -> +1 / -1 / 0 by the cosine of each direction with its mirror image."""
    if len(dirs) == 0:
        return np.zeros(0, np.float32)
    mirrored = dirs[:, pair] * MIRROR_X.astype(np.float64)
    cos = (dirs * mirrored).sum((1, 2)) / np.maximum((dirs * dirs).sum((1, 2)), 1e-30)
    return np.where(cos > 0.9, 1.0, np.where(cos < -0.9, -1.0, 0.0)).astype(np.float32)


def mirror_maps(flame) -> MirrorMaps:
    """The mirror maps of a :class:`~ppface3d.flame.FLAME` instance (its shape and expression
    sizes). Vertices are paired by nearest neighbour of the mirrored template (ties between coincident
    vertices broken by skinning weights); a template whose
    median pairing distance exceeds 0.1% of its extent counts as not symmetric (all signs 0)."""
    from scipy.spatial import cKDTree

    vt = flame.v_template.numpy().astype(np.float64)
    # coincident vertices (the generated model's two lips at the mouth slit) are told apart by
    # their root/neck/jaw skinning weights, which a mirror keeps
    tag = 1e-4 * np.ptp(vt, 0).max() * flame.lbs_weights.numpy().astype(np.float64)[:, :3]
    pts = np.c_[vt, tag]
    _, pair = cKDTree(pts).query(np.c_[vt * MIRROR_X.astype(np.float64), tag])
    dist = np.linalg.norm(vt[pair] - vt * MIRROR_X.astype(np.float64), axis=1)
    ns, ne = flame.n_shape, flame.n_expression
    if np.median(dist) > 1e-3 * np.ptp(vt, 0).max():
        return MirrorMaps(pair, np.zeros(ns, np.float32), np.zeros(ne, np.float32), False)
    dirs = flame.dirs.numpy().astype(np.float64).reshape(ns + ne, -1, 3)
    shape_sign, exp_sign = _signs(dirs[:ns], pair), _signs(dirs[ns:], pair)
    symmetric = bool(np.all(shape_sign != 0) and np.all(exp_sign != 0))
    return MirrorMaps(pair, shape_sign, exp_sign, symmetric)

