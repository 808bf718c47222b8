"""The latent scale factor: latents are multiplied by it before diffusion, divided after."""
from __future__ import annotations

import paddle
import paddle.nn as nn

from ppengine.errors import ConfigError


class LatentScale(nn.Layer):
    """Fixed (SD: 0.18215) or scale-by-std latent scaling.

    With ``scale_by_std=True`` the factor is set once, from the first batch given to
    :meth:`fit`, to 1 / std(z) (latent-diffusion's ``scale_by_std``), and kept in the buffers
    ``scale_factor`` and ``fitted`` so a checkpoint restores it.

    Shapes: z (B, C, h, w) -> same.
    """

    def __init__(self, scale_factor: float = 0.18215, scale_by_std: bool = False):
        super().__init__()
        if not scale_by_std and not scale_factor > 0:
            raise ConfigError(f"scale_factor must be > 0, got {scale_factor}")
        self.scale_by_std = scale_by_std
        self.register_buffer("scale_factor", paddle.to_tensor([float(scale_factor)], dtype="float32"))
        self.register_buffer("fitted", paddle.to_tensor([0.0 if scale_by_std else 1.0], dtype="float32"))

    @paddle.no_grad()
    def fit(self, z: paddle.Tensor) -> float:
        """Set the factor to 1/std(z) if scale-by-std and not yet fitted; returns the factor.

        Under data-parallel training the std is that of every rank's first batch together, so
        all ranks get the same factor.
        """
        if self.scale_by_std and float(self.fitted) == 0.0:
            zf = z.astype("float64").flatten()
            stats = paddle.stack([zf.sum(), (zf * zf).sum(), paddle.full([], zf.shape[0], "float64")])
            if paddle.distributed.is_initialized() and paddle.distributed.get_world_size() > 1:
                paddle.distributed.all_reduce(stats)
            total, squares, n = (float(v) for v in stats.numpy())
            std = max((squares - total * total / n) / max(n - 1.0, 1.0), 0.0) ** 0.5  # unbiased, as Tensor.std
            self.scale_factor.set_value(paddle.to_tensor([1.0 / max(std, 1e-8)], dtype="float32"))
            self.fitted.set_value(paddle.to_tensor([1.0], dtype="float32"))
        return float(self.scale_factor)

    def scale(self, z):
        return z * self.scale_factor.astype(z.dtype)

    def unscale(self, z):
        return z / self.scale_factor.astype(z.dtype)
