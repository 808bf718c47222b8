"""ppface3d.render: a differentiable rasterizer (C++ custom operator + pure-Paddle backend),
attribute interpolation, UV texture sampling, spherical-harmonics shading, cameras, and a
``Renderer`` composing them (pytorch3d-style). See docs/render.md."""
from .cameras import OrthographicCamera, PerspectiveCamera, ndc_to_pixels, pixels_to_ndc
from .interpolate import interpolate, sample_texture
from .mesh import face_vertices, vertex_normals
from .raster import Fragments, available_backends, barycentrics_from_faces, default_backend, rasterize, soft_silhouette
from .renderer import MeshRasterizer, Renderer, SHShader
from .shading import SH_CONSTANTS, sh_basis, sh_shading

__all__ = [
    "Fragments",
    "rasterize",
    "soft_silhouette",
    "barycentrics_from_faces",
    "available_backends",
    "default_backend",
    "interpolate",
    "sample_texture",
    "face_vertices",
    "vertex_normals",
    "sh_basis",
    "sh_shading",
    "SH_CONSTANTS",
    "OrthographicCamera",
    "PerspectiveCamera",
    "ndc_to_pixels",
    "pixels_to_ndc",
    "MeshRasterizer",
    "SHShader",
    "Renderer",
]
