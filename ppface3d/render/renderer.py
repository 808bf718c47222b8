"""Renderer = rasterizer + SH shader, composed as in pytorch3d's MeshRenderer, for DECA-style use."""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np
import paddle

from ppengine.errors import InputError

from .interpolate import interpolate, sample_texture
from .mesh import vertex_normals
from .raster import Fragments, rasterize
from .shading import sh_shading


class MeshRasterizer(paddle.nn.Layer):
    """Camera transform + :func:`rasterize` with fixed settings.

    Args:
        image_size: ``S`` or ``(H, W)``.
        backend: ``"auto"``, ``"cpp"`` or ``"paddle"``.
        cull_backfaces: drop faces facing away from the camera.
        sigma: SoftRas sharpness; when set, ``Fragments.soft_alpha`` is computed.
        perspective_correct: None = follow ``camera.is_perspective``.
    """

    def __init__(self, image_size, backend="auto", cull_backfaces=False, sigma=None, perspective_correct=None):
        super().__init__()
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.backend = backend
        self.cull_backfaces = cull_backfaces
        self.sigma = sigma
        self.perspective_correct = perspective_correct

    def forward(self, vertices: paddle.Tensor, faces: paddle.Tensor, camera) -> Tuple[Fragments, paddle.Tensor]:
        """(B, V, 3) world vertices -> (fragments, (B, V, 3) screen-NDC vertices)."""
        screen = camera.transform(vertices)
        pc = camera.is_perspective if self.perspective_correct is None else self.perspective_correct
        frags = rasterize(
            screen,
            faces,
            self.image_size,
            perspective_correct=pc,
            cull_backfaces=self.cull_backfaces,
            sigma=self.sigma,
            backend=self.backend,
        )
        return frags, screen


class SHShader(paddle.nn.Layer):
    """Albedo x SH irradiance, composited over a background with the (hard or soft) alpha."""

    def forward(
        self,
        fragments: Fragments,
        albedo_images: paddle.Tensor,
        normal_images: paddle.Tensor,
        lights: Optional[paddle.Tensor] = None,
        background: Optional[paddle.Tensor] = None,
        soft: bool = False,
    ) -> Dict[str, paddle.Tensor]:
        """albedo (B, 3, H, W), normals (B, 3, H, W), lights (B, 9, 3) -> images and alpha (B, 1, H, W)."""
        alpha = fragments.soft_alpha if (soft and fragments.soft_alpha is not None) else fragments.mask
        alpha = alpha.unsqueeze(1)
        if lights is not None:
            shading = sh_shading(normal_images, lights)
            images = albedo_images * shading
        else:
            shading = paddle.ones_like(albedo_images)
            images = albedo_images
        if background is not None:
            images = images * alpha + background * (1.0 - alpha)
        elif soft:
            images = images * alpha
        # hard mask, no background: albedo is already zero off the mesh
        return {"images": images, "alpha_images": alpha, "shading_images": shading}


class Renderer(paddle.nn.Layer):
    """Render a mesh (shared topology) with albedo (UV texture or vertex colours) and SH light.

    Args:
        image_size: ``S`` or ``(H, W)``.
        faces: (F, 3) int vertex indices.
        uvcoords: (T, 2) UV coordinates in [0, 1] (v up), for UV textures.
        uvfaces: (F, 3) indices into ``uvcoords`` per face corner (default: ``faces``).
        backend, cull_backfaces, sigma, perspective_correct: see :class:`MeshRasterizer`.
        rasterizer, shader: replace the default :class:`MeshRasterizer` / :class:`SHShader`.

    Example (DECA)::

        renderer = Renderer(224, flame.faces, uvcoords, uvfaces)
        out = renderer(verts, OrthographicCamera(cam), albedos=tex, lights=sh, landmarks=lmk3d)
        out["images"]  # (B, 3, 224, 224)
    """

    def __init__(
        self,
        image_size: Union[int, Tuple[int, int]],
        faces,
        uvcoords=None,
        uvfaces=None,
        *,
        backend: str = "auto",
        cull_backfaces: bool = False,
        sigma: Optional[float] = None,
        perspective_correct: Optional[bool] = None,
        rasterizer: Optional[MeshRasterizer] = None,
        shader: Optional[paddle.nn.Layer] = None,
    ):
        super().__init__()
        faces = np.asarray(faces.numpy() if isinstance(faces, paddle.Tensor) else faces, dtype=np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise InputError(f"Renderer: faces must be (F, 3), got {faces.shape}")
        self.register_buffer("faces", paddle.to_tensor(faces), persistable=False)
        if uvcoords is not None:
            uv = np.asarray(uvcoords.numpy() if isinstance(uvcoords, paddle.Tensor) else uvcoords, dtype=np.float32)
            uvf = faces if uvfaces is None else np.asarray(
                uvfaces.numpy() if isinstance(uvfaces, paddle.Tensor) else uvfaces, dtype=np.int64
            )
            if uv.ndim != 2 or uv.shape[1] != 2 or uvf.shape != faces.shape or uvf.max() >= len(uv):
                raise InputError(
                    f"Renderer: uvcoords must be (T, 2) and uvfaces (F, 3) indexing them; got {uv.shape} and {uvf.shape}"
                )
            self.register_buffer("face_uvcoords", paddle.to_tensor(uv[uvf]), persistable=False)  # (F, 3, 2)
        else:
            self.face_uvcoords = None
        self.rasterizer = rasterizer or MeshRasterizer(image_size, backend, cull_backfaces, sigma, perspective_correct)
        self.shader = shader or SHShader()

    def forward(
        self,
        vertices: paddle.Tensor,
        camera,
        albedos: Optional[paddle.Tensor] = None,
        lights: Optional[paddle.Tensor] = None,
        vertex_colors: Optional[paddle.Tensor] = None,
        landmarks: Optional[paddle.Tensor] = None,
        background: Optional[paddle.Tensor] = None,
        soft: bool = False,
        normal_map: Optional[paddle.Tensor] = None,
    ) -> Dict[str, paddle.Tensor]:
        """Render.

        Args:
            vertices: (B, V, 3) world positions (FLAME frame: y up, z towards the camera).
            camera: :class:`OrthographicCamera` or :class:`PerspectiveCamera` (batch B).
            albedos: (B, 3, Ht, Wt) UV albedo texture (needs ``uvcoords``).
            lights: (B, 9, 3) SH coefficients; None renders unlit albedo.
            vertex_colors: (B, V, 3) per-vertex albedo, used when ``albedos`` is None
                (default: uniform grey 0.7).
            landmarks: (B, L, 3) world landmarks to project.
            background: (B, 3, H, W) image behind the mesh (default black).
            soft: composite with the soft silhouette (needs ``sigma``) instead of the hard mask.
            normal_map: (B, 3, Ht, Wt) world-frame normals in UV space (e.g. DECA's detail
                normals; needs ``uvcoords``): shading and ``normal_images`` use it, sampled at each
                pixel's UV, instead of the interpolated vertex normals. (B, 4, Ht, Wt): the 4th
                channel (in [0, 1]) weighs the map against the vertex normals per texel, e.g. the
                face region a detail map covers (0 keeps the eyeballs' and the mouth's own normals).

        Returns:
            dict with ``images`` (B, 3, H, W), ``alpha_images`` (B, 1, H, W), ``albedo_images``
            (B, 3, H, W), ``normal_images`` (B, 3, H, W, interpolated world-frame vertex normals, zero on background),
            ``depth_images`` (B, 1, H, W, screen depth), ``shading_images`` (B, 3, H, W),
            ``uv_images`` (B, H, W, 2) when textured, ``transformed_vertices`` (B, V, 3) screen
            NDC, ``normals`` (B, V, 3), ``fragments``, and ``landmarks2d`` (B, L, 2) screen-NDC
            / ``landmarks3d`` (B, L, 3) when ``landmarks`` is given.
        """
        if vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise InputError(f"Renderer: vertices must be (B, V, 3), got {list(vertices.shape)}")
        if soft and self.rasterizer.sigma is None:
            raise InputError("Renderer: soft=True needs a Renderer built with sigma=... (e.g. 1e-4)")
        frags, screen = self.rasterizer(vertices, self.faces, camera)
        B, H, W = frags.pix_to_face.shape
        normals = vertex_normals(vertices, self.faces)
        be = self.rasterizer.backend
        out: Dict[str, paddle.Tensor] = {}
        uv = None
        if albedos is not None or normal_map is not None:
            if self.face_uvcoords is None:
                raise InputError("Renderer: a UV albedo texture or normal map needs uvcoords (and uvfaces) at construction")
            uv = interpolate(frags, self.face_uvcoords, None, be)
            out["uv_images"] = uv
        if normal_map is None or normal_map.shape[1] == 4:
            # interpolated unit vertex normals, not renormalised per pixel (as DECA)
            normal_images = interpolate(frags, normals, self.faces, be).transpose([0, 3, 1, 2])
        if normal_map is not None:
            mapped = sample_texture(normal_map, uv) * frags.mask.unsqueeze(1)
            if normal_map.shape[1] == 4:  # the 4th channel weighs the map against the vertex normals
                w = mapped[:, 3:]
                normal_images = mapped[:, :3] * w + normal_images * (1.0 - w)
            else:
                normal_images = mapped
        if albedos is not None:
            albedo_images = sample_texture(albedos, uv)
        else:
            if vertex_colors is None:
                vertex_colors = paddle.full([B, vertices.shape[1], 3], 0.7, dtype=vertices.dtype)
            albedo_images = interpolate(frags, vertex_colors, self.faces, be).transpose([0, 3, 1, 2])
        if albedos is not None:  # texture lookups on the background are not zero
            albedo_images = albedo_images * frags.mask.unsqueeze(1)
        shaded = self.shader(frags, albedo_images, normal_images, lights, background, soft)
        out.update(shaded)
        out.update(
            albedo_images=albedo_images,
            normal_images=normal_images,
            depth_images=frags.zbuf.unsqueeze(1),
            transformed_vertices=screen,
            normals=normals,
            fragments=frags,
        )
        if landmarks is not None:
            lm = camera.transform(landmarks)
            out["landmarks3d"] = lm
            out["landmarks2d"] = lm[..., :2]
        return out
