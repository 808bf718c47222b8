"""Spherical-harmonics (order 2, 9 x RGB = 27 coefficients) Lambertian shading as in DECA."""
from __future__ import annotations

import math

import paddle

from ppengine.errors import InputError

# Lambertian SH irradiance constants (Ramamoorthi & Hanrahan), in DECA's basis order:
# 1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1.
SH_CONSTANTS = (
    1.0 / math.sqrt(4 * math.pi),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * 3 * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * (3 / 2) * math.sqrt(5 / (12 * math.pi)),
    (math.pi / 4) * (1 / 2) * math.sqrt(5 / (4 * math.pi)),
)


def _raw_basis(normals: paddle.Tensor) -> paddle.Tensor:
    x, y, z = normals[:, 0], normals[:, 1], normals[:, 2]
    return paddle.stack([paddle.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3.0 * (z * z) - 1.0], axis=1)


def sh_basis(normals: paddle.Tensor) -> paddle.Tensor:
    """The 9 scaled SH basis values of unit normals.

    Args:
        normals: (B, 3, H, W) unit normals (channel-first, as images).

    Returns:
        (B, 9, H, W).
    """
    c = paddle.to_tensor(SH_CONSTANTS, dtype=normals.dtype).reshape([1, 9, 1, 1])
    return _raw_basis(normals) * c


def sh_shading(normals: paddle.Tensor, sh_coeffs: paddle.Tensor) -> paddle.Tensor:
    """Irradiance from DECA-style SH lighting.

    Args:
        normals: (B, 3, H, W) normals in the frame the lighting is expressed in (DECA: FLAME
            world frame, y up, z towards the camera), normally unit length.
        sh_coeffs: (B, 9, 3) coefficients (27 numbers per image), or (B, 27).

    Returns:
        (B, 3, H, W) shading (multiply by albedo to get the image).
    """
    if sh_coeffs.ndim == 2 and sh_coeffs.shape[1] == 27:
        sh_coeffs = sh_coeffs.reshape([-1, 9, 3])
    if sh_coeffs.ndim != 3 or tuple(sh_coeffs.shape[1:]) != (9, 3):
        raise InputError(f"sh_shading: lights must be (B, 9, 3) or (B, 27), got {list(sh_coeffs.shape)}")
    basis = _raw_basis(normals)  # (B, 9, H, W); the constants are folded into the coefficients
    B, _, H, W = basis.shape
    c = paddle.to_tensor(SH_CONSTANTS, dtype=basis.dtype).reshape([1, 9, 1])
    out = paddle.matmul(sh_coeffs.astype(basis.dtype) * c, basis.reshape([B, 9, H * W]), transpose_x=True)
    return out.reshape([B, 3, H, W])
