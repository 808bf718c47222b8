"""Interpolating vertex / face-vertex attributes over fragments, and UV texture sampling."""
from __future__ import annotations

from typing import Optional

import paddle
import paddle.nn.functional as F

from ppengine.errors import InputError

from . import _build
from .raster import Fragments, _num_threads, _resolve


def interpolate(
    fragments: Fragments,
    attributes: paddle.Tensor,
    faces: Optional[paddle.Tensor] = None,
    backend: str = "auto",
) -> paddle.Tensor:
    """Barycentric interpolation of mesh attributes at every pixel.

    Args:
        fragments: output of :func:`rasterize` (B images of H x W).
        attributes: either per-vertex values (B, V, C) together with ``faces`` (F, 3), or
            per-face-corner values (B, F, 3, C) / (F, 3, C) with ``faces=None`` (e.g. UV
            coordinates that are split along seams).
        faces: (F, 3) int vertex indices, for per-vertex attributes.
        backend: ``"cpp"`` (compiled operator with analytic backward, CPU tensors),
            ``"paddle"`` or ``"auto"`` (as :func:`rasterize`).

    Returns:
        (B, H, W, C); zero on background pixels. Differentiable w.r.t. ``attributes`` and,
        through ``fragments.bary_coords``, w.r.t. vertex positions.
    """
    p2f = fragments.pix_to_face
    B, H, W = p2f.shape
    if _resolve(backend) == "cpp" and attributes.place.is_cpu_place():
        return _interpolate_cpp(fragments, attributes, faces)
    f = paddle.clip(p2f.astype("int64"), min=0).reshape([B, H * W])
    if faces is not None:
        if attributes.ndim != 3:
            raise InputError(f"interpolate: per-vertex attributes must be (B, V, C), got {list(attributes.shape)}")
        Bv, V, C = attributes.shape
        if Bv == 1 and B > 1:
            attributes = attributes.expand([B, V, C])
        elif Bv != B:
            raise InputError(f"interpolate: attributes have batch {Bv}, fragments have {B}")
        vid = paddle.gather(faces.astype("int64"), f.reshape([-1])).reshape([B, H * W * 3])
        vid = vid + (paddle.arange(B, dtype="int64") * V).unsqueeze(-1)
        vals = paddle.gather(attributes.reshape([B * V, C]), vid.reshape([-1]))
    else:
        if attributes.ndim == 3:
            attributes = attributes.unsqueeze(0)
        if attributes.ndim != 4 or attributes.shape[2] != 3:
            raise InputError(
                f"interpolate: face-corner attributes must be (B, F, 3, C) or (F, 3, C), got {list(attributes.shape)}"
            )
        Bf, Fn, _, C = attributes.shape
        if Bf == 1 and B > 1:
            attributes = attributes.expand([B, Fn, 3, C])
        elif Bf != B:
            raise InputError(f"interpolate: attributes have batch {Bf}, fragments have {B}")
        rows = f + (paddle.arange(B, dtype="int64") * Fn).unsqueeze(-1)
        vals = paddle.gather(attributes.reshape([B * Fn, 3 * C]), rows.reshape([-1]))
    vals = vals.reshape([B, H, W, 3, C])
    out = (fragments.bary_coords.unsqueeze(-1) * vals).sum(axis=3)
    return out * fragments.mask.unsqueeze(-1)


def _interpolate_cpp(fragments, attributes, faces):
    B = fragments.pix_to_face.shape[0]
    if faces is None:  # face-corner values: treat every corner as its own vertex
        if attributes.ndim == 3:
            attributes = attributes.unsqueeze(0)
        if attributes.ndim != 4 or attributes.shape[2] != 3:
            raise InputError(
                f"interpolate: face-corner attributes must be (B, F, 3, C) or (F, 3, C), got {list(attributes.shape)}"
            )
        Fn, C = attributes.shape[1], attributes.shape[3]
        attributes = attributes.reshape([attributes.shape[0], Fn * 3, C])
        faces = paddle.arange(Fn * 3, dtype="int32").reshape([Fn, 3])
    elif attributes.ndim != 3:
        raise InputError(f"interpolate: per-vertex attributes must be (B, V, C), got {list(attributes.shape)}")
    if attributes.shape[0] != B:
        if attributes.shape[0] != 1:
            raise InputError(f"interpolate: attributes have batch {attributes.shape[0]}, fragments have {B}")
        attributes = attributes.expand([B] + list(attributes.shape[1:]))
    if attributes.dtype != paddle.float32:
        attributes = attributes.astype("float32")
    op = _build.load_op()
    return op.ppf3d_interpolate(
        attributes, faces.astype("int32"), fragments.pix_to_face, fragments.bary_coords, _num_threads()
    )


def sample_texture(texture: paddle.Tensor, uv: paddle.Tensor, mode: str = "bilinear") -> paddle.Tensor:
    """Bilinearly sample a UV texture map (``paddle.nn.functional.grid_sample``).

    Args:
        texture: (B, C, Ht, Wt) texture image (row 0 is the top of the image file).
        uv: (B, H, W, 2) texture coordinates in [0, 1], OBJ convention: ``v`` points up, so
            ``v = 1`` is the top row of the texture image.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        (B, C, H, W) sampled values (border-clamped outside [0, 1]).
    """
    if texture.ndim != 4 or uv.ndim != 4 or uv.shape[-1] != 2:
        raise InputError(
            f"sample_texture: expected texture (B, C, Ht, Wt) and uv (B, H, W, 2), got {list(texture.shape)} and {list(uv.shape)}"
        )
    if texture.shape[0] == 1 and uv.shape[0] > 1:
        texture = texture.expand([uv.shape[0]] + list(texture.shape[1:]))
    grid = paddle.stack([uv[..., 0] * 2.0 - 1.0, 1.0 - uv[..., 1] * 2.0], axis=-1)
    return F.grid_sample(texture, grid, mode=mode, padding_mode="border", align_corners=False)
