"""Rotations, kinematic chain and linear blend skinning in Paddle ops (differentiable).

Conventions: rotation matrices act on column vectors (x' = R x); axis-angle vectors have
the rotation angle as their norm.
"""
from __future__ import annotations

from typing import Sequence

import paddle


def _skew(v):
    """(N, 3) -> (N, 3, 3) cross-product matrices [v]x."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    o = paddle.zeros_like(x)
    return paddle.stack([o, -z, y, z, o, -x, -y, x, o], axis=-1).reshape([-1, 3, 3])


def axis_angle_to_matrix(rvec):
    """Rodrigues' formula. rvec (N, 3) axis-angle -> (N, 3, 3) rotation matrices.

    R = I + a(t) K + b(t) K^2 with K = [rvec]x, a = sin t / t, b = (1 - cos t) / t^2,
    t = |rvec|; near t = 0 Taylor series are used, so the gradient at zero is exact.
    """
    t2 = (rvec * rvec).sum(axis=-1, keepdim=True)  # (N, 1)
    small = t2 < 1e-8
    t2_safe = paddle.where(small, paddle.ones_like(t2), t2)
    t = paddle.sqrt(t2_safe)
    a = paddle.where(small, 1.0 - t2 / 6.0, paddle.sin(t) / t)
    b = paddle.where(small, 0.5 - t2 / 24.0, (1.0 - paddle.cos(t)) / t2_safe)
    K = _skew(rvec)
    eye = paddle.eye(3, dtype=rvec.dtype).unsqueeze(0)
    return eye + a.unsqueeze(-1) * K + b.unsqueeze(-1) * paddle.matmul(K, K)


def rot6d_to_matrix(x):
    """6D rotation (Zhou et al. 2019) (N, 6) -> (N, 3, 3), pytorch3d's convention.

    The two 3-vectors are Gram-Schmidt orthonormalised to b1, b2; b3 = b1 x b2; they are the
    ROWS of the returned matrix (as pytorch3d.transforms.rotation_6d_to_matrix).
    """
    a1, a2 = x[:, 0:3], x[:, 3:6]
    b1 = a1 / paddle.sqrt((a1 * a1).sum(-1, keepdim=True) + 1e-24)
    a2p = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2p / paddle.sqrt((a2p * a2p).sum(-1, keepdim=True) + 1e-24)
    b3 = paddle.cross(b1, b2, axis=-1)
    return paddle.stack([b1, b2, b3], axis=-2)


def euler_to_matrix(e):
    """Euler angles (N, 3) = (rx, ry, rz) radians -> R = Rz @ Ry @ Rx (N, 3, 3).

    That is: rotate about x first, then y, then z (fixed axes), the 'XYZ' jaw convention.
    """
    cx, cy, cz = paddle.cos(e[:, 0]), paddle.cos(e[:, 1]), paddle.cos(e[:, 2])
    sx, sy, sz = paddle.sin(e[:, 0]), paddle.sin(e[:, 1]), paddle.sin(e[:, 2])
    r = [
        cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
        sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
        -sy, cy * sx, cy * cx,
    ]
    return paddle.stack(r, axis=-1).reshape([-1, 3, 3])


def matrix_yaw(R):
    """Rotation about y of the 'ZYX' decomposition: atan2(-R[2,0], sqrt(R00^2 + R10^2)). (N,3,3) -> (N,)."""
    sy = paddle.sqrt(R[:, 0, 0] * R[:, 0, 0] + R[:, 1, 0] * R[:, 1, 0])
    return paddle.atan2(-R[:, 2, 0], sy)


def rigid_chain(rot, joints, parents: Sequence[int]):
    """Forward kinematics.

    rot (B, J, 3, 3) local rotations, joints (B, J, 3) rest joint positions, parents: J ints
    with parents[0] = -1. Returns posed joints (B, J, 3), and world rotations (B, J, 3, 3) and
    translations (B, J, 3) of the skinning transforms, i.e. x_posed = R_j x_rest + t_j.
    """
    Rw, pos, tw = [], [], []
    for j, p in enumerate(parents):
        if p < 0:
            R, P = rot[:, j], joints[:, j]
        else:
            R = paddle.matmul(Rw[p], rot[:, j])
            P = pos[p] + paddle.matmul(Rw[p], (joints[:, j] - joints[:, p]).unsqueeze(-1)).squeeze(-1)
        Rw.append(R)
        pos.append(P)
        tw.append(P - paddle.matmul(R, joints[:, j].unsqueeze(-1)).squeeze(-1))
    return paddle.stack(pos, axis=1), paddle.stack(Rw, axis=1), paddle.stack(tw, axis=1)


def skin(v_posed, weights, Rw, tw):
    """Linear blend skinning. v_posed (B, V, 3), weights (V, J), Rw (B, J, 3, 3), tw (B, J, 3) -> (B, V, 3).

    Per vertex: x' = (sum_j w_j R_j) x + sum_j w_j t_j. The 12 entries of the blended 3x4
    transform are computed as (12 B, J) @ (J, V) planes and applied with elementwise ops, which
    is several times faster in Paddle (forward and backward) than a batch of 3x3 matmuls.
    """
    B, J = Rw.shape[0], Rw.shape[1]
    V = v_posed.shape[1]
    A = paddle.concat([Rw.reshape([B, J, 9]), tw], axis=-1)  # (B, J, 12)
    T = paddle.matmul(A.transpose([2, 0, 1]).reshape([12 * B, J]), weights, transpose_y=True)
    T = paddle.unbind(T.reshape([12, B, V]), 0)
    x, y, z = paddle.unbind(v_posed.transpose([2, 0, 1]), 0)
    out = [T[3 * c] * x + T[3 * c + 1] * y + T[3 * c + 2] * z + T[9 + c] for c in range(3)]
    return paddle.stack(out, axis=-1)


def barycentric_points(vertices, vert_idx, bary):
    """Points on faces. vertices (B, V, 3); vert_idx (L, 3) or (B, L, 3) int64; bary (L, 3) or (B, L, 3) -> (B, L, 3)."""
    B, V = vertices.shape[0], vertices.shape[1]
    if vert_idx.ndim == 2:
        L = vert_idx.shape[0]
        pts = paddle.gather(vertices, vert_idx.reshape([-1]), axis=1).reshape([B, L, 3, 3])
        return (pts * bary.unsqueeze(-1)).sum(2)
    L = vert_idx.shape[1]
    offs = (paddle.arange(B, dtype="int64") * V).reshape([B, 1, 1])
    flat = (vert_idx + offs).reshape([-1])
    pts = paddle.gather(vertices.reshape([-1, 3]), flat, axis=0).reshape([B, L, 3, 3])
    return (pts * bary.unsqueeze(-1)).sum(2)
