"""ppface3d.render: a differentiable rasterizer (C++ custom operator + pure-Paddle backend),
attribute interpolation, UV texture sampling, spherical-harmonics shading, cameras, and a
``Renderer`` composing them (pytorch3d-style). See docs/render.md."""
from .rasterize import Fragments, available_backends, barycentrics_from_faces, default_backend, rasterize, soft_silhouette

__all__ = [
    "Fragments",
    "rasterize",
    "soft_silhouette",
    "barycentrics_from_faces",
    "available_backends",
    "default_backend",
]
