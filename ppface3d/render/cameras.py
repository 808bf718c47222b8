"""Cameras mapping world points (B, N, 3) to the rasterizer's screen NDC (x right, y down,
z = depth, smaller closer).

* :class:`OrthographicCamera`: DECA's weak-perspective camera ``cam = [s, tx, ty]``.
* :class:`PerspectiveCamera`: a pinhole camera in the OpenCV frame (x right, y down, z forward).
"""
from __future__ import annotations

from typing import Union

import numpy as np
import paddle

from ppengine.errors import InputError


def _as_tensor(x, dtype="float32"):
    if isinstance(x, (paddle.Tensor, paddle.pir.Value)):  # Value: traced for export
        return x.astype(dtype) if x.dtype != getattr(paddle, dtype) else x
    return paddle.to_tensor(np.asarray(x, dtype=dtype))


def _size_hw(image_size):
    return (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)


def ndc_to_pixels(points, image_size):
    """Screen NDC (..., 2+) -> pixel coordinates (..., 2) with (0, 0) the top-left pixel's centre.

    ``image_size``: S or (H, W). Works on paddle Tensors and NumPy arrays (returns the same kind).
    """
    H, W = _size_hw(image_size)
    stack = paddle.stack if isinstance(points, paddle.Tensor) else np.stack
    return stack([(points[..., 0] + 1.0) * (W / 2.0) - 0.5, (points[..., 1] + 1.0) * (H / 2.0) - 0.5], axis=-1)


def pixels_to_ndc(points, image_size):
    """Pixel coordinates (..., 2+) ((0, 0) = top-left pixel's centre) -> screen NDC (..., 2);
    the inverse of :func:`ndc_to_pixels`. Tensors or NumPy arrays."""
    H, W = _size_hw(image_size)
    stack = paddle.stack if isinstance(points, paddle.Tensor) else np.stack
    return stack([(points[..., 0] + 0.5) * (2.0 / W) - 1.0, (points[..., 1] + 0.5) * (2.0 / H) - 1.0], axis=-1)


class OrthographicCamera:
    """DECA's orthographic (weak-perspective) camera.

    ``screen = [s (X + tx), -s (Y + ty), -s Z]``: FLAME's world frame (y up, z towards the
    viewer) becomes screen NDC with y down and smaller depth closer.

    Args:
        cam: (B, 3) ``[scale, tx, ty]`` per image.
    """

    is_perspective = False

    def __init__(self, cam: paddle.Tensor):
        cam = _as_tensor(cam)
        if cam.ndim == 1:
            cam = cam.unsqueeze(0)
        if cam.ndim != 2 or cam.shape[1] != 3:
            raise InputError(f"OrthographicCamera: cam must be (B, 3) = [s, tx, ty], got {list(cam.shape)}")
        self.cam = cam

    def transform(self, points: paddle.Tensor) -> paddle.Tensor:
        """(B, N, 3) world points -> (B, N, 3) screen NDC."""
        cam = self.cam.astype(points.dtype)
        s = cam[:, 0].reshape([-1, 1])
        x = s * (points[..., 0] + cam[:, 1:2])
        y = s * (points[..., 1] + cam[:, 2:3])
        z = s * points[..., 2]
        return paddle.stack([x, -y, -z], axis=-1)

    def project(self, points: paddle.Tensor) -> paddle.Tensor:
        """(B, N, 3) world points -> (B, N, 2) screen NDC x, y (DECA's ``landmarks2d``)."""
        return self.transform(points)[..., :2]


class PerspectiveCamera:
    """Pinhole camera; world -> camera is ``X_cam = X R^T + T`` in the OpenCV frame.

    ``screen = [f X/Z + cx, f Y/Z + cy, Z]`` with ``f`` the focal length in NDC units
    (``f = 1 / tan(fov / 2)``) and ``Z > 0`` in front of the camera.

    Args:
        R: (B, 3, 3) rotations (world -> camera).
        T: (B, 3) translations.
        focal: scalar or (B,) focal length in NDC units.
        principal_point: (2,) or (B, 2) principal point in NDC, default (0, 0).
    """

    is_perspective = True

    def __init__(self, R, T, focal: Union[float, paddle.Tensor] = 2.0, principal_point=None):
        self.R = _as_tensor(R)
        self.T = _as_tensor(T)
        if self.R.ndim == 2:
            self.R = self.R.unsqueeze(0)
        if self.T.ndim == 1:
            self.T = self.T.unsqueeze(0)
        if tuple(self.R.shape[1:]) != (3, 3) or tuple(self.T.shape[1:]) != (3,):
            raise InputError(
                f"PerspectiveCamera: R must be (B, 3, 3) and T (B, 3), got {list(self.R.shape)} and {list(self.T.shape)}"
            )
        self.focal = _as_tensor(focal).reshape([-1, 1])
        pp = principal_point if principal_point is not None else [0.0, 0.0]
        self.principal_point = _as_tensor(pp).reshape([-1, 2])

    @classmethod
    def front(cls, distance: float = 3.0, focal: float = 2.0, batch_size: int = 1) -> "PerspectiveCamera":
        """A camera on the world +z axis looking at the origin, world y up on screen."""
        R = np.tile(np.diag([1.0, -1.0, -1.0]).astype(np.float32), (batch_size, 1, 1))
        T = np.tile(np.array([0.0, 0.0, distance], np.float32), (batch_size, 1))
        return cls(R, T, focal)

    def to_camera(self, points: paddle.Tensor) -> paddle.Tensor:
        """(B, N, 3) world points -> (B, N, 3) camera-frame points."""
        R, T = self.R.astype(points.dtype), self.T.astype(points.dtype)
        return paddle.matmul(points, R, transpose_y=True) + T.unsqueeze(1)

    def transform(self, points: paddle.Tensor) -> paddle.Tensor:
        """(B, N, 3) world points -> (B, N, 3) screen NDC with z = view depth."""
        pc = self.to_camera(points)
        z = pc[..., 2]
        zs = paddle.where(z.abs() < 1e-8, paddle.full_like(z, 1e-8), z)
        f, pp = self.focal.astype(points.dtype), self.principal_point.astype(points.dtype)
        x = f * pc[..., 0] / zs + pp[:, 0:1]
        y = f * pc[..., 1] / zs + pp[:, 1:2]
        return paddle.stack([x, y, z], axis=-1)

    def project(self, points: paddle.Tensor) -> paddle.Tensor:
        """(B, N, 3) world points -> (B, N, 2) screen NDC x, y."""
        return self.transform(points)[..., :2]


def recrop_camera(cam, tform_from, size_from, tform_to, size_to) -> np.ndarray:
    """Orthographic cameras (..., 3) ``[s, tx, ty]`` of one crop re-expressed for another crop of
    the same photo: crops given by their 3x3 matrices (photo pixels -> crop pixels; scale and
    translation, as DECA's crops) and sizes. A point projects to the same photo pixel through both.
    """
    def affine(T, S):
        T = np.asarray(T, np.float64)
        return 2.0 * T[0, 0] / S, 2.0 * (T[:2, 2] + 0.5) / S - 1.0  # NDC = a * photo_px + b

    a0, b0 = affine(tform_from, size_from)
    a1, b1 = affine(tform_to, size_to)
    r = a1 / a0
    c = b1 - r * b0
    cam = np.asarray(cam, np.float64)
    s = cam[..., 0] * r
    return np.stack([s, cam[..., 1] + c[0] / s, cam[..., 2] - c[1] / s], -1).astype(np.float32)
