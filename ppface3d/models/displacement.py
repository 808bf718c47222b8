"""UV displacement -> detail normals and the dense displaced mesh (DECA's ``displacement2normal``
and ``upsample_mesh``).

    uvmap = UVMap(flame.uv_coords, flame.uv_faces, flame.faces, size=256)
    uv_verts = uvmap.world2uv(vertices)                  # (N, 3, 256, 256) positions in UV space
    uv_norms = uvmap.world2uv(vertex_normals(vertices, faces))
    uv_detail_normals = displacement2normal(uv_z, uv_verts, uv_norms, mask, fixed_displacement)
    normals_img = face.render(dec, mode="shape", normal_map=uv_detail_normals)   # shades the details
    v, f, colors = uvmap.dense_mesh(vertices[0], normals[0], displacement[0, 0], mask)  # for export

:class:`UVMap` is the texel -> (triangle, barycentric) table of a mesh's UV layout, computed once
in NumPy (the role of DECA's UV rasterizer and of its ``texture_data_256.npy`` template): a texel
is covered when its centre lies in a UV triangle. Texel (row r, column c) of an S x S map has its
centre at u = (c + 0.5) / S, v = 1 - (r + 0.5) / S (row 0 is the top, v = 1, as the renderer's
textures).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import paddle

from ppengine.errors import InputError

from ..render.mesh import vertex_normals


def grid_triangles(h: int, w: int, margin_x: int = 2, margin_y: int = 5) -> np.ndarray:
    """(F, 3) triangles over an h x w texel grid (vertex id = row * w + col), two per grid cell,
    counter-clockwise in (u, v) so their normals point out of the surface; ``margin_*`` cells are
    left out at the borders, as DECA's ``generate_triangles``."""
    xs, ys = np.meshgrid(np.arange(margin_x, w - 1 - margin_x), np.arange(margin_y, h - 1 - margin_y), indexing="ij")
    x, y = xs.reshape(-1), ys.reshape(-1)
    p00, p01, p10, p11 = y * w + x, y * w + x + 1, (y + 1) * w + x, (y + 1) * w + x + 1
    t0 = np.stack([p00, p10, p01], 1)
    t1 = np.stack([p01, p10, p11], 1)
    return np.stack([t0, t1], 1).reshape(-1, 3).astype(np.int64)


def displacement2normal(uv_z: paddle.Tensor, uv_vertices: paddle.Tensor, uv_normals: paddle.Tensor,
                        mask: Optional[paddle.Tensor] = None, fixed_displacement: Optional[paddle.Tensor] = None,
                        faces: Optional[np.ndarray] = None) -> paddle.Tensor:
    """DECA's detail normals: the coarse surface in UV space displaced along its normals, and the
    normals of the displaced surface.

    Args:
        uv_z: (N, 1, S, S) displacement (DECA's decoder output), masked by ``mask``.
        uv_vertices, uv_normals: (N, 3, S, S) coarse positions and (interpolated) normals in UV.
        mask: (S, S) or (N|1, 1, S, S) where details apply (DECA's face + eye mask); None = everywhere.
        fixed_displacement: (S, S) DECA's ``fixed_displacement_256`` added everywhere, or None.
        faces: triangles over the texel grid (default :func:`grid_triangles`).

    Returns:
        (N, 3, S, S) unit detail normals inside the mask, the coarse normals outside.
    """
    if uv_z.ndim != 4 or uv_vertices.ndim != 4 or uv_z.shape[-2:] != uv_vertices.shape[-2:]:
        raise InputError(f"displacement2normal: uv_z (N, 1, S, S) and uv_vertices (N, 3, S, S) must share S; "
                         f"got {list(uv_z.shape)} and {list(uv_vertices.shape)}")
    N, _, H, W = uv_vertices.shape
    m = 1.0 if mask is None else _as_mask(mask, H, W)
    offset = uv_z * m
    if fixed_displacement is not None:
        offset = offset + paddle.to_tensor(fixed_displacement, dtype="float32").reshape([1, 1, H, W])
    offset = offset.expand([N, 3, H, W]) if offset.shape[:2] != [N, 3] else offset  # same-shape ops: faster
    detail = uv_vertices + offset * uv_normals
    if faces is None:
        n = grid_vertex_normals(detail)
    else:
        dense = detail.transpose([0, 2, 3, 1]).reshape([N, H * W, 3])
        n = vertex_normals(dense, paddle.to_tensor(np.asarray(faces, np.int64))).reshape([N, H, W, 3])
        n = n.transpose([0, 3, 1, 2])
    if mask is None:
        return n
    return uv_normals + (n - uv_normals) * m.expand([N, 3, H, W])


def grid_vertex_normals(points: paddle.Tensor, margin_x: int = 2, margin_y: int = 5, eps: float = 1e-12) -> paddle.Tensor:
    """Area-weighted unit vertex normals of the texel-grid mesh :func:`grid_triangles` spans over
    ``points`` (N, 3, H, W): the same numbers as :func:`~ppface3d.render.mesh.vertex_normals` on
    that mesh (zero where no triangle is), with the edge vectors and the scatter of triangle
    normals to their corners written as 2 x 2 convolutions (several times faster than gathers).
    Returns (N, 3, H, W)."""
    import paddle.nn.functional as F

    N, _, H, W = points.shape
    # edges per grid cell (p10 - p00, p01 - p00, p10 - p01, p11 - p01), laid out (xyz, edge, N, H-1, W-1)
    # so that every component below is one contiguous block
    e = F.conv2d(points.reshape([N * 3, 1, H, W]), paddle.to_tensor(_EDGE_KERNELS))
    e = e.reshape([N, 3, 4, H - 1, W - 1]).transpose([1, 2, 0, 3, 4])
    x, y, z = e[0], e[1], e[2]

    def cross(i, j):  # edge i x edge j
        return [y[i] * z[j] - z[i] * y[j], z[i] * x[j] - x[i] * z[j], x[i] * y[j] - y[i] * x[j]]

    cell = np.zeros((H - 1, W - 1), np.float32)
    cell[margin_y:H - 1 - margin_y, margin_x:W - 1 - margin_x] = 1.0
    # triangle [p00, p10, p01]: (p10 - p00) x (p01 - p00); triangle [p01, p10, p11]: (p10 - p01) x (p11 - p01)
    n = paddle.stack(cross(0, 1) + cross(2, 3), 0) * paddle.to_tensor(cell)  # (3 * 2, N, H-1, W-1)
    n = n.reshape([2, 3, N, H - 1, W - 1]).transpose([2, 1, 0, 3, 4]).reshape([N * 3, 2, H - 1, W - 1])
    acc = F.conv2d_transpose(n, paddle.to_tensor(_SCATTER_KERNELS))
    acc = acc.reshape([N, 3, H, W])
    return acc / paddle.sqrt((acc * acc).sum(1, keepdim=True) + eps)


# 2 x 2 kernels over (row, column) offsets: p10 - p00, p01 - p00, p10 - p01, p11 - p01
_EDGE_KERNELS = np.array([[[[-1, 0], [1, 0]]], [[[-1, 1], [0, 0]]], [[[0, -1], [1, 0]]], [[[0, -1], [0, 1]]]],
                         np.float32)
# each triangle's normal added to its corners: [p00, p10, p01] and [p01, p10, p11]
_SCATTER_KERNELS = np.array([[[[1, 1], [1, 0]]], [[[0, 1], [1, 1]]]], np.float32)


def _as_mask(mask, H: int, W: int) -> paddle.Tensor:
    m = paddle.to_tensor(mask, dtype="float32") if not isinstance(mask, paddle.Tensor) else mask.astype("float32")
    if m.ndim not in (2, 4) or m.shape[-2:] != [H, W]:
        raise InputError(f"displacement mask is {list(m.shape)}; the maps are {[H, W]}: give (S, S) or (N, 1, S, S)")
    return m.reshape([1, 1, H, W]) if m.ndim == 2 else m


class UVMap:
    """Texel -> (triangle, barycentric) table of a mesh's UV layout at ``size`` x ``size``.

    Args:
        uv_coords: (T, 2) UV coordinates in [0, 1] (v up).
        uv_faces: (F, 3) indices into ``uv_coords``.
        faces: (F, 3) the matching mesh triangles (indices into the vertices).
        size: map side S.
    """

    def __init__(self, uv_coords, uv_faces, faces, size: int = 256):
        self.size = S = int(size)
        uv = np.asarray(uv_coords, np.float64)
        uvf, f = np.asarray(uv_faces, np.int64), np.asarray(faces, np.int64)
        if uvf.shape != f.shape or uvf.ndim != 2 or uvf.shape[1] != 3:
            raise InputError(f"UVMap: uv_faces {uvf.shape} and faces {f.shape} must both be (F, 3)")
        face_id = np.full(S * S, -1, np.int64)
        bary = np.zeros((S * S, 3), np.float64)
        pix = uv[uvf] * S  # (F, 3, 2) in texel units: x = u * S, y_up = v * S
        pix[..., 1] = S - pix[..., 1]  # rows grow downwards
        lo = np.clip(np.floor(pix.min(1) - 0.5).astype(int), 0, S - 1)
        hi = np.clip(np.ceil(pix.max(1) - 0.5).astype(int), 0, S - 1)
        size = hi - lo + 1  # (F, 2) candidate box per triangle, vectorised over padded boxes
        kx, ky = int(size[:, 0].max()), int(size[:, 1].max())
        ox, oy = np.meshgrid(np.arange(kx), np.arange(ky))
        for s0 in range(0, len(uvf), 2048):
            sl = slice(s0, s0 + 2048)
            cx = lo[sl, 0, None, None] + ox  # (f, ky, kx) texel columns / rows
            cy = lo[sl, 1, None, None] + oy
            ok = (ox < size[sl, 0, None, None]) & (oy < size[sl, 1, None, None])
            a, b, c = (pix[sl, j, :, None, None] for j in range(3))  # (f, 2, 1, 1)
            d = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
            d = np.where(np.abs(d) < 1e-12, np.nan, d)
            px, py = cx + 0.5, cy + 0.5
            w1 = ((px - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (py - a[:, 1])) / d
            w2 = ((b[:, 0] - a[:, 0]) * (py - a[:, 1]) - (px - a[:, 0]) * (b[:, 1] - a[:, 1])) / d
            w0 = 1.0 - w1 - w2
            inside = ok & (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
            fi, yi, xi = np.nonzero(inside)
            ids = cy[fi, yi, xi] * S + cx[fi, yi, xi]
            face_id[ids] = fi + s0
            bary[ids] = np.stack([w0[fi, yi, xi], w1[fi, yi, xi], w2[fi, yi, xi]], 1)
        self.covered = (face_id >= 0).reshape(S, S)
        self.face_id = face_id
        self.bary = bary.astype(np.float32)
        self._corner = f[np.maximum(face_id, 0)]  # (S*S, 3) vertex ids per texel
        self._corner_t = paddle.to_tensor(self._corner.reshape(-1))
        self._w = paddle.to_tensor((self.bary * self.covered.reshape(-1, 1)).reshape(S * S, 3, 1))

    def world2uv(self, values: paddle.Tensor) -> paddle.Tensor:
        """Per-vertex values (N, V, C) -> (N, C, S, S) interpolated over the UV layout (zero on
        uncovered texels): DECA's ``world2uv``. Differentiable in ``values``."""
        N, V, C = values.shape
        S = self.size
        rows = values.transpose([1, 0, 2]).reshape([V, N * C])  # whole rows per gathered vertex: cache friendly
        g = paddle.gather(rows, self._corner_t, axis=0).reshape([S * S, 3, N * C])
        return (g * self._w).sum(1).reshape([S, S, N, C]).transpose([2, 3, 0, 1])

    def dense_mesh(self, vertices, normals, displacement, mask=None,
                   texture: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """DECA's ``upsample_mesh``: one vertex per covered texel inside ``mask``, at the coarse
        surface point of that texel moved by the displacement along the (renormalised)
        interpolated vertex normal; faces from :func:`grid_triangles` with all corners kept.

        Args:
            vertices, normals: (V, 3) coarse mesh vertices and vertex normals (NumPy or tensors).
            displacement: (S, S) displacement map (DECA's ``uv_z + fixed_displacement``).
            mask: (S, S) where to keep texels (DECA's face mask); None = every covered texel.
            texture: optional (S, S, C) map sampled as per-vertex colours.

        Returns:
            dense vertices (M, 3), faces (K, 3) into them, colours (M, C) or None.
        """
        S = self.size
        v = _np(vertices).astype(np.float64)
        nrm = _np(normals).astype(np.float64)
        disp = _np(displacement).reshape(S, S)
        keep = self.covered.copy()
        if mask is not None:
            keep &= _np(mask).reshape(S, S) > 0.5
        ids = np.flatnonzero(keep.reshape(-1))
        w = self.bary[ids].astype(np.float64)[..., None]
        corner = self._corner[ids]
        p = (v[corner] * w).sum(1)
        n = (nrm[corner] * w).sum(1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        dense = p + disp.reshape(-1)[ids, None] * n
        remap = np.full(S * S, -1, np.int64)
        remap[ids] = np.arange(len(ids))
        tri = remap[grid_triangles(S, S)]
        tri = tri[(tri >= 0).all(1)]
        colors = None
        if texture is not None:
            colors = np.asarray(texture).reshape(S * S, -1)[ids]
        return dense.astype(np.float32), tri, colors


def _np(x) -> np.ndarray:
    return x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x)
