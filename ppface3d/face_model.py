"""FaceModel: FLAME + albedo + renderer + DECA's camera convention, composed once.

    face = FaceModel(n_shape=100, n_exp=50, n_tex=50, image_size=224)   # generated FLAME + albedo
    dec = face.decode(codes)            # codes: shape, exp, pose (global + jaw), cam [s, tx, ty]
    dec["vertices"]                     # (N, V, 3) world;  dec["landmarks2d"] (N, 68, 2) screen NDC
    img = face.render(dec, light=codes["light"], albedo=face.albedo_map(codes["tex"]))["images"]
    grey = face.render(dec, mode="shape")["images"]

Every face module (DECA and the models built on it, the fitter, SyntheticFaces, the
reconstructor, the notebooks) uses this object; none wires FLAME and the renderer itself.
Extension points for the models that plug in: ``render(..., normal_map=...)`` shades with UV
normals (a detail displacement), ``decode`` takes any subset of codes (a shape-only predictor
gives ``shape``; an expression encoder replaces ``exp`` and the jaw), and :meth:`neutral` gives
the zero-expression mesh a shape predictor is trained on.

Codes follow DECA: shape (N, n_shape), exp (N, n_exp), pose (N, 6) = [global axis-angle,
jaw axis-angle], cam (N, 3) = [s, tx, ty] (:class:`~ppface3d.render.OrthographicCamera`),
tex (N, n_tex), light (N, 9, 3) SH.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import paddle
import paddle.nn as nn

from ppengine.errors import InputError

from .flame import FLAME
from .flame.albedo import AlbedoModel
from .render import OrthographicCamera, Renderer
from .render.shading import SH_CONSTANTS

# DECA's crop: landmark box side * 1.1 * 1.25 spans the image (NDC width 2).
CROP_FACTOR = 1.1 * 1.25
# the model-config keys that describe the face model (shared by DECA, the fitter and the data)
FACE_KEYS = ("n_shape", "n_exp", "n_tex", "uv_size", "flame_model_path", "flame_landmark_path", "albedo_path",
             "albedo_seed", "render_backend")
RENDER_MODES = ("textured", "shape", "normals")


def framing_camera(landmarks3d) -> np.ndarray:
    """Orthographic camera [s, tx, ty] framing 3D landmarks (..., 68, 3) as DECA's crop does.

    The projected landmark box's mean side times 1.1 * 1.25 spans the image, centred.
    Returns (..., 3) float32.
    """
    lm = np.asarray(landmarks3d, np.float64)
    lo, hi = lm[..., :2].min(-2), lm[..., :2].max(-2)
    side = ((hi - lo).sum(-1)) / 2.0
    s = 2.0 / (side * CROP_FACTOR)
    c = (lo + hi) / 2.0
    return np.stack([s, -c[..., 0], -c[..., 1]], -1).astype(np.float32)


def sh_ambient(level: float = 1.0) -> np.ndarray:
    """(9, 3) SH coefficients of a uniform white light giving shading ``level``."""
    sh = np.zeros((9, 3), np.float32)
    sh[0] = level / SH_CONSTANTS[0]
    return sh


def shape_light() -> np.ndarray:
    """(9, 3) the grey 'shape' render's light: ambient 0.7, frontal 0.5, from above 0.2."""
    light = sh_ambient(0.7)
    light[3] = 0.5  # frontal (z)
    light[2] = 0.2  # from above (y)
    return light


SHAPE_GREY = 0.85  # albedo of the grey shape render


class FaceModel(nn.Layer):
    """FLAME + albedo space + renderer + DECA's orthographic camera.

    Args:
        n_shape, n_exp, n_tex: code sizes kept (FLAME shape / expression, albedo).
        image_size: render size S (square).
        uv_size: albedo texture size.
        flame_model_path, flame_landmark_path: licensed FLAME files; None = generated default.
        albedo_path: DECA/FLAME albedo .npz; None = generated albedo space (``albedo_seed``).
        render_backend: rasterizer backend ('auto', 'cpp', 'paddle').
        sigma: SoftRas sharpness for soft silhouettes (None = hard only).
        parts: share the FLAME layer and albedo space of another FaceModel (:meth:`at_size`).
    """

    def __init__(self, n_shape: int = 100, n_exp: int = 50, n_tex: int = 50, image_size: int = 224,
                 uv_size: int = 64, flame_model_path: Optional[str] = None,
                 flame_landmark_path: Optional[str] = None, albedo_path: Optional[str] = None,
                 albedo_seed: int = 0, render_backend: str = "auto", sigma: Optional[float] = None,
                 parts: Optional["FaceModel"] = None):
        super().__init__()
        self.image_size = int(image_size)
        if parts is not None:
            self.flame, self.albedo = parts.flame, parts.albedo
            self._cache = parts._cache
        else:
            self.flame = FLAME(flame_model_path, flame_landmark_path, n_shape=n_shape, n_expression=n_exp)
            self.albedo = AlbedoModel(n_tex, uv_size, albedo_path, flame=self.flame, seed=albedo_seed)
            self._cache = {}
        self.renderer = Renderer(self.image_size, self.flame.faces, self.flame.uv_coords, self.flame.uv_faces,
                                 backend=render_backend, sigma=sigma)
        self.code_sizes = {"shape": self.flame.n_shape, "exp": self.flame.n_expression, "tex": self.albedo.n_tex}

    @classmethod
    def from_config(cls, model_cfg: Dict, image_size: Optional[int] = None, **kw) -> "FaceModel":
        """The face model described by a model config's :data:`FACE_KEYS` (and its ``image_size``)."""
        args = {k: model_cfg[k] for k in FACE_KEYS if model_cfg.get(k) is not None}
        size = image_size if image_size is not None else model_cfg.get("image_size", 224)
        return cls(image_size=size, **args, **kw)

    def at_size(self, image_size: int, sigma: Optional[float] = None) -> "FaceModel":
        """The same FLAME and albedo space rendered at another size (nothing is rebuilt)."""
        if int(image_size) == self.image_size and sigma == self.renderer.rasterizer.sigma:
            return self
        return FaceModel(image_size=image_size, render_backend=self.renderer.rasterizer.backend, sigma=sigma,
                         parts=self)

    # ------------------------------------------------------------------ topology
    @property
    def faces(self) -> np.ndarray:
        """(F, 3) int triangle indices."""
        return self.flame.faces

    @property
    def uv_coords(self) -> np.ndarray:
        return self.flame.uv_coords

    @property
    def uv_faces(self) -> np.ndarray:
        return self.flame.uv_faces

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def landmarks68(flame_out) -> paddle.Tensor:
        """(N, 68, 3) the static 68-point landmarks of a FLAME output (the contour fixed, as on
        a scan), or the dynamic-contour ones when the embedding has no static set."""
        full = flame_out.landmarks_full68
        return full if full is not None else flame_out.landmarks

    def flame_forward(self, codes: Dict[str, paddle.Tensor], landmarks_only: bool = False):
        """FLAME output (:class:`~ppface3d.flame.FLAMEOutput`) of codes (missing ones are zero)."""
        pose = codes.get("pose")
        return self.flame(shape=codes.get("shape"), expression=codes.get("exp"),
                          global_pose=None if pose is None else pose[:, :3],
                          jaw_pose=None if pose is None else pose[:, 3:6], landmarks_only=landmarks_only)

    def decode(self, codes: Dict[str, paddle.Tensor], vertices: bool = True) -> Dict[str, paddle.Tensor]:
        """Codes -> geometry in the world and on the screen.

        Returns 'landmarks3d' (N, 68, 3) world (contour by head yaw), 'landmarks2d' (N, 68, 2)
        screen NDC (x right, y down, [-1, 1]) when ``cam`` is given, 'cam' (N, 3); with
        ``vertices`` also 'vertices' (N, V, 3) world and 'transformed_vertices' (N, V, 3) screen
        NDC. ``vertices=False`` evaluates FLAME at the landmark vertices only (cheaper).
        """
        fo = self.flame_forward(codes, landmarks_only=not vertices)
        out = {"landmarks3d": fo.landmarks}
        if fo.vertices is not None:
            out["vertices"] = fo.vertices
        return self.place(out, codes["cam"]) if "cam" in codes else out

    def place(self, decoded: Dict[str, paddle.Tensor], cam: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Decoded world geometry seen by camera ``cam`` (N, 3): adds 'cam', 'landmarks2d' and
        (with vertices) 'transformed_vertices' to a copy of ``decoded``."""
        camera = self.camera(cam)
        out = dict(decoded, cam=camera.cam, landmarks2d=camera.project(decoded["landmarks3d"]))
        if "vertices" in decoded:
            out["transformed_vertices"] = camera.transform(decoded["vertices"])
        return out

    def neutral(self, shape: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Zero expression and pose: 'vertices' (N, V, 3) and 'landmarks68' (N, 68, 3) static
        landmarks: the 'scan' of NoW-style metrics and the target of a shape predictor."""
        fo = self.flame(shape=shape)
        return {"vertices": fo.vertices, "landmarks68": self.landmarks68(fo)}

    def mean_landmarks(self, static: bool = True) -> np.ndarray:
        """(68, 3) landmarks of the mean (zero-code) head: static, or contour by yaw (0)."""
        key = ("mean_lmk", static)
        if key not in self._cache:
            with paddle.no_grad():
                fo = self.flame(shape=paddle.zeros([1, self.code_sizes["shape"]]))
            self._cache[key] = (self.landmarks68(fo) if static else fo.landmarks).numpy()[0]
        return self._cache[key]

    @staticmethod
    def camera(cam) -> OrthographicCamera:
        """DECA's orthographic camera of codes ``cam`` (N, 3) = [s, tx, ty]."""
        return OrthographicCamera(cam)

    framing_camera = staticmethod(framing_camera)

    def mirror(self):
        """The FLAME model's left-right :class:`~ppface3d.flame.mirror.MirrorMaps` (computed once)."""
        if "mirror" not in self._cache:
            from .flame.mirror import mirror_maps

            self._cache["mirror"] = mirror_maps(self.flame)
        return self._cache["mirror"]

    # ------------------------------------------------------------------ UV space (details)
    def uv_map(self, size: int):
        """The :class:`~ppface3d.models.displacement.UVMap` (texel -> triangle table) of this
        model's UV layout at ``size`` x ``size`` (computed once per size)."""
        key = ("uvmap", int(size))
        if key not in self._cache:
            from .models.displacement import UVMap

            if self.uv_coords is None:
                raise InputError("FaceModel: this FLAME model has no UV layout (put head_template.obj beside it)")
            self._cache[key] = UVMap(self.uv_coords, self.uv_faces, self.faces, int(size))
        return self._cache[key]

    def uv_face_mask(self, size: int) -> np.ndarray:
        """(size, size) float32 face region in UV (:func:`~ppface3d.flame.uv_regions.uv_face_mask`):
        where detail displacements apply (DECA's ``uv_face_eye_mask``)."""
        key = ("uv_face_mask", int(size))
        if key not in self._cache:
            from .flame.uv_regions import uv_face_mask

            self._cache[key] = uv_face_mask(self.flame, int(size)) * self.uv_map(size).covered
        return self._cache[key]

    def detail_normal_map(self, displacement: paddle.Tensor, vertices: paddle.Tensor, mask=None,
                          fixed_displacement=None, weighted: bool = False) -> paddle.Tensor:
        """UV displacement (N, 1, S, S) on the mesh ``vertices`` (N, V, 3) -> (N, 3, S, S) detail
        normals for ``render(normal_map=...)`` (DECA's ``displacement2normal``; the coarse surface
        is detached, as in DECA). ``mask`` (S, S): where the displacement applies (default
        :meth:`uv_face_mask`); ``fixed_displacement`` (S, S): DECA's fixed map, or None.
        ``weighted``: (N, 4, S, S) with the mask as 4th channel, so that the render keeps the
        vertex normals outside it (eyeballs and mouth, whose UV islands overlap)."""
        from .models.displacement import displacement2normal
        from .render.mesh import vertex_normals

        S = displacement.shape[-1]
        uvmap = self.uv_map(S)
        normals = vertex_normals(vertices, paddle.to_tensor(np.asarray(self.faces, np.int64)))
        mask = self.uv_face_mask(S) if mask is None else mask
        n = displacement2normal(displacement, uvmap.world2uv(vertices).detach(), uvmap.world2uv(normals).detach(),
                                mask, fixed_displacement)
        if not weighted:
            return n
        m = paddle.to_tensor(np.asarray(mask, np.float32)).reshape([1, 1, S, S]).expand([n.shape[0], 1, S, S])
        return paddle.concat([n, m], 1)

    # ------------------------------------------------------------------ appearance
    def albedo_map(self, tex: paddle.Tensor) -> paddle.Tensor:
        """Albedo code (N, n_tex) -> UV albedo (N, 3, T, T) in [0, 1]."""
        return self.albedo(tex)

    def render(self, decoded: Dict[str, paddle.Tensor], light: Optional[paddle.Tensor] = None,
               mode: str = "textured", albedo: Optional[paddle.Tensor] = None,
               background: Optional[paddle.Tensor] = None, normal_map: Optional[paddle.Tensor] = None,
               soft: bool = False) -> Dict[str, paddle.Tensor]:
        """Render decoded geometry (:meth:`decode` output with 'vertices' and 'cam').

        mode 'textured': ``albedo`` (N, 3, T, T) UV texture shaded by ``light`` (N, 9, 3) (unlit
        when None); 'shape': grey geometry under :func:`shape_light` (``light`` overrides it);
        'normals': the world normals mapped to [0, 1] as the image. ``normal_map`` (N, 3, T, T)
        UV normals replace the vertex normals in shading (a detail displacement's). Returns the
        renderer's dict: 'images' (N, 3, S, S), 'alpha_images', 'normal_images', 'depth_images', ...
        """
        if mode not in RENDER_MODES:
            raise InputError(f"FaceModel.render: mode {mode!r} is not one of {list(RENDER_MODES)}")
        if "vertices" not in decoded or "cam" not in decoded:
            raise InputError("FaceModel.render: needs decode(codes) of codes with 'cam' and vertices=True")
        verts, cam = decoded["vertices"], self.camera(decoded["cam"])
        N = verts.shape[0]
        if mode == "shape":
            if light is None:
                light = paddle.to_tensor(np.tile(shape_light()[None], (N, 1, 1)))
            return self.renderer(verts, cam, lights=light, vertex_colors=paddle.full([N, verts.shape[1], 3], SHAPE_GREY),
                                 background=background, normal_map=normal_map, soft=soft)
        if mode == "textured" and albedo is None:
            raise InputError("FaceModel.render(mode='textured') needs albedo=face.albedo_map(codes['tex'])")
        r = self.renderer(verts, cam, albedos=albedo, lights=light if mode == "textured" else None,
                          background=background, normal_map=normal_map, soft=soft)
        if mode == "normals":
            a = r["alpha_images"]
            r["images"] = (r["normal_images"] * 0.5 + 0.5) * a + (0.0 if background is None else background * (1 - a))
        return r
