"""Mesh helpers in Paddle ops: per-face gathers and vertex normals."""
from __future__ import annotations

import paddle


def face_vertices(values: paddle.Tensor, faces: paddle.Tensor) -> paddle.Tensor:
    """Gather per-vertex values for every face corner.

    Args:
        values: (B, V, C) per-vertex values.
        faces: (F, 3) int vertex indices.

    Returns:
        (B, F, 3, C).
    """
    B, C = values.shape[0], values.shape[-1]
    out = paddle.gather(values, faces.reshape([-1]).astype("int64"), axis=1)
    return out.reshape([B, faces.shape[0], 3, C])


def vertex_normals(vertices: paddle.Tensor, faces: paddle.Tensor, eps: float = 1e-12) -> paddle.Tensor:
    """Area-weighted unit vertex normals (counter-clockwise faces point outward).

    Args:
        vertices: (B, V, 3).
        faces: (F, 3) int vertex indices.

    Returns:
        (B, V, 3) unit normals (zero for vertices used by no face).
    """
    fv = face_vertices(vertices, faces)  # (B, F, 3, 3)
    n = paddle.cross(fv[:, :, 1] - fv[:, :, 0], fv[:, :, 2] - fv[:, :, 0], axis=-1)  # (B, F, 3)
    B, F = n.shape[0], n.shape[1]
    per_corner = n.unsqueeze(2).expand([B, F, 3, 3]).reshape([B, F * 3, 3])
    acc = paddle.index_add(paddle.zeros_like(vertices), faces.reshape([-1]).astype("int64"), 1, per_corner)
    norm = paddle.sqrt((acc * acc).sum(axis=-1, keepdim=True) + eps)
    return acc / norm
