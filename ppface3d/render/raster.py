"""Differentiable triangle rasterization: a C++ custom operator and a pure-Paddle backend.

Screen convention ("screen NDC", the frame DECA's transformed vertices use):

* ``x`` points right and ``y`` points **down**; ``[-1, 1]`` spans the full image width/height;
  pixel ``(i, j)`` (row, column) has its centre at ``x = (2j+1)/W - 1``, ``y = (2i+1)/H - 1``.
* ``z`` is depth, **smaller is closer**. With ``perspective_correct=True`` it must be the
  positive view-space depth (faces with a vertex at ``z <= 0`` are dropped).
* A face is front-facing when its vertices run counter-clockwise as seen by the viewer (the
  OBJ/FLAME convention for outward normals); ``cull_backfaces=True`` drops the others.

Gradients (as in nvdiffrast): the face index of each pixel is a discrete choice and carries no
gradient; barycentric coordinates and depth are differentiable functions of the screen-space
positions of the covering face's vertices, so any attribute interpolated with them passes
gradients to vertex positions. Edges and occlusion boundaries get gradients only from the
optional soft silhouette (``sigma``, SoftRas-style), which is smooth everywhere.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import paddle

from ppengine.errors import InputError

from . import _build

__all__ = ["Fragments", "rasterize", "soft_silhouette", "available_backends", "default_backend"]

_BACKENDS = ("auto", "cpp", "paddle")
_warned_fallback = False


class Fragments(NamedTuple):
    """Per-pixel rasterization output (one face per pixel).

    Attributes:
        pix_to_face: (B, H, W) int32, index into ``faces`` of the visible face, -1 for background.
        bary_coords: (B, H, W, 3) float32 barycentric weights of that face's three vertices
            (perspective-corrected when requested); 0 for background.
        zbuf: (B, H, W) float32 interpolated depth of the visible surface; 0 for background.
        mask: (B, H, W) float32 hard coverage, 1 where a face is visible.
        soft_alpha: (B, H, W) float32 SoftRas silhouette when ``sigma`` was given, else None.
    """

    pix_to_face: paddle.Tensor
    bary_coords: paddle.Tensor
    zbuf: paddle.Tensor
    mask: paddle.Tensor
    soft_alpha: Optional[paddle.Tensor] = None


def _num_threads() -> int:
    env = os.environ.get("PPFACE3D_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    try:
        n = int(env) if env else (os.cpu_count() or 1)
    except ValueError:
        n = os.cpu_count() or 1
    return max(1, n)


def available_backends() -> Tuple[str, ...]:
    """Backends that work here: ``("cpp", "paddle")`` or just ``("paddle",)``."""
    try:
        _build.load_op()
        return ("cpp", "paddle")
    except _build.OpUnavailable:
        return ("paddle",)


def default_backend() -> str:
    """The backend ``backend="auto"`` resolves to (``$PPFACE3D_RASTER_BACKEND`` overrides)."""
    return _resolve("auto")


def _resolve(backend: str) -> str:
    global _warned_fallback
    if backend not in _BACKENDS:
        raise InputError(f"rasterize: unknown backend {backend!r}; use one of {', '.join(_BACKENDS)}")
    if backend == "auto":
        env = os.environ.get("PPFACE3D_RASTER_BACKEND", "auto")
        backend = env if env in ("cpp", "paddle") else "auto"
    if backend == "paddle":
        return "paddle"
    try:
        _build.load_op()
        return "cpp"
    except _build.OpUnavailable as e:
        if backend == "cpp":
            raise InputError(
                f"rasterize: the C++ backend is unavailable ({e}); install a C++ compiler (g++) "
                "or pass backend='paddle'"
            ) from e
        if not _warned_fallback:
            warnings.warn(f"ppface3d.render: {e}; using the slower pure-Paddle rasterizer", stacklevel=3)
            _warned_fallback = True
        return "paddle"


def _check_inputs(vertices, faces, image_size):
    if not isinstance(vertices, paddle.Tensor):
        vertices = paddle.to_tensor(np.asarray(vertices, dtype=np.float32))
    if not isinstance(faces, paddle.Tensor):
        faces = paddle.to_tensor(np.asarray(faces, dtype=np.int64))
    if vertices.ndim == 2:
        vertices = vertices.unsqueeze(0)
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise InputError(f"rasterize: vertices must have shape (B, V, 3), got {list(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise InputError(f"rasterize: faces must have shape (F, 3), got {list(faces.shape)}")
    if faces.dtype not in (paddle.int32, paddle.int64):
        raise InputError(f"rasterize: faces must be an integer tensor, got {faces.dtype}")
    if isinstance(image_size, int):
        H = W = int(image_size)
    else:
        try:
            H, W = (int(s) for s in image_size)
        except (TypeError, ValueError):
            raise InputError(f"rasterize: image_size must be an int or (H, W), got {image_size!r}") from None
    if H <= 0 or W <= 0:
        raise InputError(f"rasterize: image_size must be positive, got {(H, W)}")
    V = vertices.shape[1]
    if faces.shape[0] > 0:
        fmin, fmax = int(faces.min()), int(faces.max())
        if fmin < 0 or fmax >= V:
            raise InputError(
                f"rasterize: faces index vertices {fmin}..{fmax} but there are only {V} vertices"
            )
    if vertices.dtype != paddle.float32:
        vertices = vertices.astype("float32")
    return vertices, faces, H, W


def rasterize(
    vertices: paddle.Tensor,
    faces: Union[paddle.Tensor, np.ndarray],
    image_size: Union[int, Tuple[int, int]],
    *,
    perspective_correct: bool = False,
    cull_backfaces: bool = False,
    sigma: Optional[float] = None,
    backend: str = "auto",
) -> Fragments:
    """Rasterize a batch of meshes that share one face list.

    Args:
        vertices: (B, V, 3) float32 screen-NDC positions (see module docstring); (V, 3) is
            treated as B = 1.
        faces: (F, 3) int32/int64 vertex indices, shared by the batch.
        image_size: ``S`` or ``(H, W)``.
        perspective_correct: interpolate with perspective-correct barycentrics, treating ``z``
            as positive view depth (use with :class:`PerspectiveCamera`).
        cull_backfaces: drop faces whose screen winding is clockwise (facing away).
        sigma: if given, also compute a SoftRas silhouette ``soft_alpha`` with this sharpness
            (in squared NDC units; 1e-4 is about 1.1 pixel of blur at 224x224).
        backend: ``"cpp"`` (compiled operator, multi-threaded; CUDA when Paddle has CUDA),
            ``"paddle"`` (pure Paddle ops) or ``"auto"`` (cpp if it builds, else paddle with a
            one-line warning).

    Returns:
        :class:`Fragments` with ``pix_to_face`` (B, H, W), ``bary_coords`` (B, H, W, 3),
        ``zbuf`` (B, H, W), ``mask`` (B, H, W) and ``soft_alpha`` (B, H, W) or None.
    """
    vertices, faces, H, W = _check_inputs(vertices, faces, image_size)
    which = _resolve(backend)
    faces32 = faces.astype("int32")
    if faces32.shape[0] == 0:  # nothing to draw
        B = vertices.shape[0]
        zero = paddle.zeros([B, H, W], dtype="float32")
        soft = zero if sigma else None
        return Fragments(paddle.full([B, H, W], -1, dtype="int32"), paddle.zeros([B, H, W, 3]), zero, zero, soft)
    if which == "cpp":
        op = _build.load_op()
        pix_to_face, bary, zbuf = op.ppf3d_rasterize(
            vertices, faces32, H, W, bool(perspective_correct), bool(cull_backfaces), _num_threads()
        )
        # The face index carries no gradient; leaving it attached makes Paddle's engine wait for
        # one when another custom op (interpolate) consumes it, and the vertex gradient is lost.
        pix_to_face = pix_to_face.detach()
    else:
        pix_to_face = _raster_paddle(vertices, faces32, H, W, perspective_correct, cull_backfaces)
        bary, zbuf = barycentrics_from_faces(vertices, faces32, pix_to_face, perspective_correct)
    mask = (pix_to_face >= 0).astype("float32")
    soft = soft_silhouette(vertices, faces32, (H, W), sigma, cull_backfaces, backend=which) if sigma else None
    return Fragments(pix_to_face, bary, zbuf, mask, soft)


# ----------------------------------------------------------------------------------------------
# pure-Paddle backend
# ----------------------------------------------------------------------------------------------


def _to_pixels(xy: paddle.Tensor, H: int, W: int) -> Tuple[paddle.Tensor, paddle.Tensor]:
    return (xy[..., 0] + 1.0) * (0.5 * W) - 0.5, (xy[..., 1] + 1.0) * (0.5 * H) - 0.5


def _edge(ax, ay, bx, by, px, py):
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _face_vertices(vertices: paddle.Tensor, faces: paddle.Tensor) -> paddle.Tensor:
    """(B, V, C) per-vertex values, (F, 3) faces -> (B, F, 3, C)."""
    B, C = vertices.shape[0], vertices.shape[-1]
    out = paddle.gather(vertices, faces.reshape([-1]).astype("int64"), axis=1)
    return out.reshape([B, faces.shape[0], 3, C])


def _expand_boxes(x0, x1, y0, y1, valid):
    """Enumerate the pixels of per-face boxes. All inputs (N,) int64; returns (face, row, col)."""
    nx = paddle.clip(x1 - x0 + 1, min=0)
    ny = paddle.clip(y1 - y0 + 1, min=0)
    n = nx * ny * valid.astype("int64")
    total = int(n.sum())
    if total == 0:
        empty = paddle.zeros([0], dtype="int64")
        return empty, empty, empty
    owner = paddle.repeat_interleave(paddle.arange(n.shape[0], dtype="int64"), n)
    start = paddle.cumsum(n) - n
    local = paddle.arange(total, dtype="int64") - paddle.gather(start, owner)
    w = paddle.gather(nx, owner)
    col = paddle.gather(x0, owner) + local % w
    row = paddle.gather(y0, owner) + local // w
    return owner, row, col


@paddle.no_grad()
def _raster_paddle(vertices, faces, H, W, perspective_correct, cull_backfaces) -> paddle.Tensor:
    """Visible face per pixel with Paddle ops only: (B, H, W) int32, -1 for background."""
    B, F = vertices.shape[0], faces.shape[0]
    if F == 0:
        return paddle.full([B, H, W], -1, dtype="int32")
    fv = _face_vertices(vertices, faces).reshape([B * F, 3, 3])
    x, y = _to_pixels(fv[..., :2], H, W)  # (N, 3)
    z = fv[..., 2]
    area = _edge(x[:, 0], y[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2])
    finite = paddle.isfinite(fv).all(axis=[1, 2])
    valid = finite & (area.abs() >= 1e-12)
    if perspective_correct:
        valid = valid & (z > 1e-8).all(axis=1)
    if cull_backfaces:
        valid = valid & (area < 0)
    safe = lambda t: paddle.where(paddle.isfinite(t), t, paddle.zeros_like(t))  # noqa: E731
    x, y = safe(x), safe(y)
    x0 = paddle.clip(paddle.ceil(x.min(axis=1)), 0, W).astype("int64")
    x1 = paddle.clip(paddle.floor(x.max(axis=1)), -1, W - 1).astype("int64")
    y0 = paddle.clip(paddle.ceil(y.min(axis=1)), 0, H).astype("int64")
    y1 = paddle.clip(paddle.floor(y.max(axis=1)), -1, H - 1).astype("int64")
    # faces entirely left of / above the image clip to an empty box
    x1 = paddle.where(x.max(axis=1) < 0, paddle.full_like(x1, -1), x1)
    y1 = paddle.where(y.max(axis=1) < 0, paddle.full_like(y1, -1), y1)
    owner, row, col = _expand_boxes(x0, x1, y0, y1, valid)
    if owner.shape[0] == 0:
        return paddle.full([B, H, W], -1, dtype="int32")
    px, py = col.astype("float32"), row.astype("float32")
    cx, cy, cz = paddle.gather(x, owner), paddle.gather(y, owner), paddle.gather(z, owner)
    a = paddle.gather(area, owner)
    w0 = _edge(cx[:, 1], cy[:, 1], cx[:, 2], cy[:, 2], px, py) / a
    w1 = _edge(cx[:, 2], cy[:, 2], cx[:, 0], cy[:, 0], px, py) / a
    w2 = _edge(cx[:, 0], cy[:, 0], cx[:, 1], cy[:, 1], px, py) / a
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    if perspective_correct:
        depth = 1.0 / (w0 / cz[:, 0] + w1 / cz[:, 1] + w2 / cz[:, 2])
    else:
        depth = w0 * cz[:, 0] + w1 * cz[:, 1] + w2 * cz[:, 2]
    keep = paddle.nonzero(inside).reshape([-1])
    if keep.shape[0] == 0:
        return paddle.full([B, H, W], -1, dtype="int32")
    owner, row, col, depth = (paddle.gather(t, keep) for t in (owner, row, col, depth))
    b = owner // F
    face = owner % F
    pix = (b * H + row) * W + col
    zmin = paddle.full([B * H * W], float("inf"), dtype="float32")
    zmin = zmin.put_along_axis(pix, depth, 0, reduce="amin")
    win = paddle.nonzero(depth == paddle.gather(zmin, pix)).reshape([-1])
    best = paddle.full([B * H * W], F, dtype="int64")  # ties in depth -> smaller face index
    best = best.put_along_axis(paddle.gather(pix, win), paddle.gather(face, win), 0, reduce="amin")
    best = paddle.where(best == F, paddle.full_like(best, -1), best)
    return best.reshape([B, H, W]).astype("int32")


def barycentrics_from_faces(
    vertices: paddle.Tensor,
    faces: paddle.Tensor,
    pix_to_face: paddle.Tensor,
    perspective_correct: bool = False,
) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """Differentiable barycentrics and depth of given per-pixel faces, in Paddle ops.

    Args:
        vertices: (B, V, 3) screen-NDC positions.
        faces: (F, 3) int vertex indices.
        pix_to_face: (B, H, W) int face per pixel, -1 for background.
        perspective_correct: as in :func:`rasterize`.

    Returns:
        bary (B, H, W, 3) and zbuf (B, H, W), both 0 on background; autodiff gives the same
        vertex gradients the C++ operator computes analytically.
    """
    B, V = vertices.shape[0], vertices.shape[1]
    H, W = pix_to_face.shape[1], pix_to_face.shape[2]
    covered = (pix_to_face >= 0).astype(vertices.dtype).unsqueeze(-1)
    f = paddle.clip(pix_to_face.astype("int64"), min=0)
    vid = paddle.gather(faces.astype("int64"), f.reshape([-1])).reshape([B, H * W * 3])
    vid = vid + (paddle.arange(B, dtype="int64") * V).unsqueeze(-1)
    pv = paddle.gather(vertices.reshape([B * V, 3]), vid.reshape([-1])).reshape([B, H, W, 3, 3])
    x, y = _to_pixels(pv[..., :2], H, W)
    z = pv[..., 2]
    jj = paddle.arange(W, dtype=vertices.dtype).reshape([1, 1, W])
    ii = paddle.arange(H, dtype=vertices.dtype).reshape([1, H, 1])
    e0 = _edge(x[..., 1], y[..., 1], x[..., 2], y[..., 2], jj, ii)
    e1 = _edge(x[..., 2], y[..., 2], x[..., 0], y[..., 0], jj, ii)
    e2 = _edge(x[..., 0], y[..., 0], x[..., 1], y[..., 1], jj, ii)
    e = paddle.stack([e0, e1, e2], axis=-1)
    area = e.sum(axis=-1, keepdim=True)
    area = paddle.where(covered > 0, area, paddle.ones_like(area))
    w = e / area
    if perspective_correct:
        zs = paddle.where(covered > 0, z, paddle.ones_like(z))
        u = w / zs
        s = u.sum(axis=-1, keepdim=True)
        bary = u / s
        zbuf = 1.0 / s
    else:
        bary = w
        zbuf = (w * z).sum(axis=-1, keepdim=True)
    return bary * covered, (zbuf * covered).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# soft silhouette (SoftRas)
# ----------------------------------------------------------------------------------------------


def _seg_dist2(px, py, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    t = ((px - ax) * dx + (py - ay) * dy) / paddle.clip(dx * dx + dy * dy, min=1e-20)
    t = paddle.clip(t, 0.0, 1.0)
    qx, qy = ax + t * dx - px, ay + t * dy - py
    return qx * qx + qy * qy


def soft_silhouette(
    vertices: paddle.Tensor,
    faces: paddle.Tensor,
    image_size: Union[int, Tuple[int, int]],
    sigma: float = 1e-4,
    cull_backfaces: bool = False,
    eps: float = 1e-4,
    backend: str = "auto",
) -> paddle.Tensor:
    """SoftRas silhouette: ``alpha = 1 - prod_f (1 - sigmoid(+-d_f(p)^2 / sigma))``.

    ``d_f(p)`` is the NDC distance from the pixel centre to face ``f``'s boundary, positive
    sign inside the face. Each face only touches pixels within the distance where its
    probability drops below ``eps`` (its log-miss term is shifted to reach 0 exactly there,
    so the result is continuous). Written in Paddle ops (autodiff gives the gradients), so it
    is smooth in the vertex positions everywhere, including at silhouette edges.

    Args:
        vertices: (B, V, 3) screen-NDC positions (only x, y are used).
        faces: (F, 3) int vertex indices.
        image_size: ``S`` or ``(H, W)``.
        sigma: sharpness in squared NDC units.
        cull_backfaces: ignore faces facing away.
        eps: probability below which a face's contribution is dropped.
        backend: ``"cpp"`` (compiled operator with analytic backward; float32 CPU tensors),
            ``"paddle"`` (Paddle ops + autodiff, any float dtype) or ``"auto"``.

    Returns:
        (B, H, W) in [0, 1], the dtype of ``vertices``.
    """
    if sigma is None or not sigma > 0:
        raise InputError(f"soft_silhouette: sigma must be a positive number, got {sigma!r}")
    if not 0 < eps < 0.5:
        raise InputError(f"soft_silhouette: eps must be in (0, 0.5), got {eps!r}")
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    B, F = vertices.shape[0], faces.shape[0]
    if (
        _resolve(backend) == "cpp"
        and vertices.dtype == paddle.float32
        and vertices.place.is_cpu_place()
    ):
        op = _build.load_op()
        return op.ppf3d_soft_silhouette(
            vertices, faces.astype("int32"), int(H), int(W), float(sigma), float(eps), bool(cull_backfaces), _num_threads()
        )
    fxy = _face_vertices(vertices[..., :2], faces).reshape([B * F, 3, 2])
    reach = math.sqrt(sigma * math.log((1.0 - eps) / eps))  # NDC distance where prob = eps
    with paddle.no_grad():
        x, y = _to_pixels(fxy, H, W)
        area = _edge(x[:, 0], y[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2])
        valid = paddle.isfinite(fxy).all(axis=[1, 2]) & (area.abs() >= 1e-12)
        if cull_backfaces:
            valid = valid & (area < 0)
        rx, ry = reach * 0.5 * W, reach * 0.5 * H
        x, y = paddle.nan_to_num(x), paddle.nan_to_num(y)
        x0 = paddle.clip(paddle.ceil(x.min(axis=1) - rx), 0, W).astype("int64")
        x1 = paddle.clip(paddle.floor(x.max(axis=1) + rx), -1, W - 1).astype("int64")
        y0 = paddle.clip(paddle.ceil(y.min(axis=1) - ry), 0, H).astype("int64")
        y1 = paddle.clip(paddle.floor(y.max(axis=1) + ry), -1, H - 1).astype("int64")
        owner, row, col = _expand_boxes(x0, x1, y0, y1, valid)
    if owner.shape[0] == 0:
        return paddle.zeros([B, H, W], dtype=fxy.dtype)
    c = paddle.gather(fxy, owner)  # (N, 3, 2), differentiable
    px = (2.0 * col.astype(fxy.dtype) + 1.0) / W - 1.0
    py = (2.0 * row.astype(fxy.dtype) + 1.0) / H - 1.0
    ax, ay = c[:, :, 0], c[:, :, 1]
    d2 = paddle.minimum(
        paddle.minimum(
            _seg_dist2(px, py, ax[:, 0], ay[:, 0], ax[:, 1], ay[:, 1]),
            _seg_dist2(px, py, ax[:, 1], ay[:, 1], ax[:, 2], ay[:, 2]),
        ),
        _seg_dist2(px, py, ax[:, 2], ay[:, 2], ax[:, 0], ay[:, 0]),
    )
    with paddle.no_grad():
        a = _edge(ax[:, 0], ay[:, 0], ax[:, 1], ay[:, 1], ax[:, 2], ay[:, 2])
        s0 = _edge(ax[:, 1], ay[:, 1], ax[:, 2], ay[:, 2], px, py) * a
        s1 = _edge(ax[:, 2], ay[:, 2], ax[:, 0], ay[:, 0], px, py) * a
        s2 = _edge(ax[:, 0], ay[:, 0], ax[:, 1], ay[:, 1], px, py) * a
        sign = paddle.where((s0 >= 0) & (s1 >= 0) & (s2 >= 0), paddle.ones_like(a), -paddle.ones_like(a))
    # log(1 - sigmoid(t)) = -softplus(t) (stable for sharp sigma), shifted by its value at the
    # cut-off distance and clamped, so a pixel entering or leaving a face's reach changes
    # nothing discontinuously (finite differences then match the gradient).
    cut = -math.log1p(-eps)  # = softplus(-reach^2 / sigma)
    log_miss = paddle.clip(-paddle.nn.functional.softplus(sign * d2 / sigma) + cut, max=0.0)
    pix = ((owner // F) * H + row) * W + col
    acc = paddle.zeros([B * H * W], dtype=fxy.dtype).put_along_axis(pix, log_miss, 0, reduce="add")
    return (1.0 - paddle.exp(acc)).reshape([B, H, W])
