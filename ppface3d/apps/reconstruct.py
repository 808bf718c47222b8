"""Face reconstruction from photos: a trained DECA checkpoint or optimisation-based fitting,
then codes, meshes and renders on the original photo; expression transfer between faces.

    rec = FaceReconstructor()                                   # fitting (no network)
    rec = FaceReconstructor(config="configs/deca.yml", weights="output/deca/best.safetensors")
    for face in FacePreprocessor()("photo.jpg").faces:
        codes = rec.codes(face)
        files = rec.save(face, codes, "out/photo", original)    # .npz, .obj, .glb, PNGs
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import paddle

from ppengine.errors import InputError

from ..data.preprocess import FaceCrop, landmark_face_mask, paste_back
from ..models.deca import draw_landmarks, sh_ambient

CODE_KEYS = ("shape", "tex", "exp", "pose", "cam", "light")


class FaceReconstructor:
    """Codes for a face crop (network or fitting) and everything written from them.

    Args:
        config, weights: a DECA config and trained weights (safetensors); without weights the
            codes come from :class:`~ppface3d.apps.fit.FaceFitter`.
        overrides: ``-o`` style overrides for the config.
        render_size: size of the crop renders (the crops are 224 as DECA's).
        fit_size, fit_iters: fitting resolution and (landmark, photometric) Adam steps.
        uv_size: texture / normal map size written with meshes.
        progress: progress bars.
    """

    def __init__(self, config: Optional[str] = None, weights: Optional[str] = None, overrides=(),
                 render_size: int = 224, fit_size: int = 128, fit_iters=(150, 100), uv_size: int = 256,
                 progress: bool = True):
        from ..render import Renderer

        self.model = None
        self.fitter = None
        if weights:
            if not config:
                raise InputError("--weights needs the config it was trained with (-c configs/deca.yml)")
            if not os.path.isfile(weights):
                raise InputError(f"weights file {weights!r} not found (train with tools/train.py first, or "
                                 f"leave --weights out to fit each face by optimisation)")
            from ppengine.config import load_config
            from ppengine.trainer import build_model

            cfg = load_config(config, list(overrides) + [f"model.weights={weights}"])
            self.model = build_model(cfg)
            self.model.eval()
            flame, albedo = self.model.flame, self.model.albedo
        else:
            from .fit import FaceFitter

            kw = {}
            if config:
                from ppengine.config import load_config

                m = load_config(config, list(overrides)).get("model", {})
                kw = {k: m[k] for k in ("flame_model_path", "flame_landmark_path", "albedo_path") if m.get(k)}
                kw.update({k: m[k] for k in ("n_shape", "n_exp", "n_tex") if k in m})
            self.fitter = FaceFitter(image_size=fit_size, landmark_iters=fit_iters[0], photo_iters=fit_iters[1],
                                     progress=progress, **kw)
            flame, albedo = self.fitter.flame, self.fitter.albedo
        self.flame, self.albedo = flame, albedo
        self.S = int(render_size)
        self.uv_size = int(uv_size)
        self.renderer = Renderer(self.S, flame.faces, flame.uv_coords, flame.uv_faces)

    # ------------------------------------------------------------------ codes
    @paddle.no_grad()
    def _encode(self, face: FaceCrop) -> Dict[str, np.ndarray]:
        import paddle.nn.functional as F

        x = paddle.to_tensor(np.ascontiguousarray(face.image.transpose(2, 0, 1))[None])
        s = self.model.image_size
        if x.shape[-1] != s:
            x = F.interpolate(x, size=[s, s], mode="area")
        codes = self.model.encode_test(x)
        return {k: v.numpy() for k, v in codes.items()}

    def codes(self, face: FaceCrop) -> Dict[str, np.ndarray]:
        """FLAME/albedo/light/camera codes for one face, each (1, ...)."""
        if self.model is not None:
            return self._encode(face)
        c = self.fitter.fit(face)
        return {k: c[k] for k in CODE_KEYS}

    # ------------------------------------------------------------------ geometry and renders
    @paddle.no_grad()
    def decode(self, codes: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Vertices, landmarks and renders (crop frame, ``render_size``) for codes.

        Returns numpy: vertices (V, 3), landmarks2d (68, 2) NDC, textured (S, S, 3), alpha
        (S, S), shape (S, S, 3) grey render, albedo (T, T, 3) UV albedo.
        """
        from ..render import OrthographicCamera

        t = {k: paddle.to_tensor(np.asarray(codes[k], np.float32)) for k in CODE_KEYS}
        light = t["light"].reshape([-1, 9, 3])
        fo = self.flame(shape=t["shape"], expression=t["exp"], global_pose=t["pose"][:, :3], jaw_pose=t["pose"][:, 3:])
        cam = OrthographicCamera(t["cam"])
        alb = self.albedo(t["tex"])
        r = self.renderer(fo.vertices, cam, albedos=alb, lights=light)
        grey = sh_ambient(0.7)
        grey[3] = 0.5
        grey[2] = 0.2
        s = self.renderer(fo.vertices, cam, lights=paddle.to_tensor(grey[None]),
                          vertex_colors=paddle.full([1, fo.vertices.shape[1], 3], 0.85))
        return {
            "vertices": fo.vertices.numpy()[0], "landmarks2d": cam.project(fo.landmarks).numpy()[0],
            "textured": r["images"].numpy()[0].transpose(1, 2, 0), "alpha": r["alpha_images"].numpy()[0, 0],
            "shape": s["images"].numpy()[0].transpose(1, 2, 0), "albedo": alb.numpy()[0].transpose(1, 2, 0),
        }

    def face_region(self, landmarks2d: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """(S, S) soft mask of the reconstructed face (landmark polygon within the render)."""
        from scipy.ndimage import gaussian_filter

        px = (landmarks2d + 1.0) * self.S / 2.0 - 0.5
        m = landmark_face_mask(px, self.S) * (alpha > 0.5)
        return np.clip(gaussian_filter(m.astype(np.float32), sigma=self.S / 112.0), 0, 1)

    def overlay(self, face: FaceCrop, dec: Dict[str, np.ndarray], original: np.ndarray, key: str = "textured"):
        """The render pasted onto the original photo inside the face region, (H, W, 3) float."""
        scale = face.image.shape[0] / self.S
        T = np.diag([1.0 / scale, 1.0 / scale, 1.0]) @ face.tform  # original -> render pixels
        T = np.array([[1, 0, 0.5 * (1 / scale - 1)], [0, 1, 0.5 * (1 / scale - 1)], [0, 0, 1]]) @ T
        mask = self.face_region(dec["landmarks2d"], dec["alpha"])
        return paste_back(dec[key], T, original.shape, background=original, mask=mask)

    def landmarks_on_photo(self, face: FaceCrop, dec: Dict[str, np.ndarray], original: np.ndarray) -> np.ndarray:
        """Detected (green) and reconstructed (red) landmarks drawn on the original photo."""
        S0 = face.image.shape[0]
        pred_crop = (dec["landmarks2d"] + 1.0) * S0 / 2.0 - 0.5
        pred = face.to_original(pred_crop)
        img = original.astype(np.float32) / 255.0 if original.dtype == np.uint8 else original.astype(np.float32)
        H, W = img.shape[:2]
        to_ndc = lambda p: np.stack([(p[:, 0] + 0.5) / W * 2 - 1, (p[:, 1] + 0.5) / H * 2 - 1], 1)  # noqa: E731
        if H != W:  # draw_landmarks works on squares: pad
            side = max(H, W)
            pad = np.zeros((side, side, 3), np.float32)
            pad[:H, :W] = img
            to_ndc = lambda p: (p + 0.5) / side * 2 - 1  # noqa: E731
            out = draw_landmarks(pad, to_ndc(pred), (1, 0.1, 0.1), to_ndc(face.landmarks_original), (0.1, 1, 0.1))
            return out[:H, :W]
        return draw_landmarks(img, to_ndc(pred), (1, 0.1, 0.1), to_ndc(face.landmarks_original), (0.1, 1, 0.1))

    # ------------------------------------------------------------------ files
    def save(self, face: FaceCrop, codes: Dict[str, np.ndarray], folder: str, original: np.ndarray,
             prefix: str = "") -> List[str]:
        """Write codes.npz, mesh.obj (+ texture, normal map, .mtl), mesh.glb and renders."""
        from .export import save_codes, save_glb, save_obj, save_png, uv_normal_map

        os.makedirs(folder, exist_ok=True)
        dec = self.decode(codes)
        p = lambda n: os.path.join(folder, prefix + n)  # noqa: E731
        files = [save_codes(p("codes.npz"), codes, tform=face.tform, landmarks_original=face.landmarks_original,
                            bbox=face.bbox)]
        import paddle.nn.functional as F

        tex = F.interpolate(paddle.to_tensor(dec["albedo"].transpose(2, 0, 1)[None]),
                            size=[self.uv_size, self.uv_size], mode="bilinear").numpy()[0].transpose(1, 2, 0)
        nmap = uv_normal_map(dec["vertices"], self.flame.faces, self.flame.uv_coords, self.flame.uv_faces, self.uv_size)
        files.append(save_obj(p("mesh.obj"), dec["vertices"], self.flame.faces, self.flame.uv_coords,
                              self.flame.uv_faces, texture=tex, normal_map=nmap))
        files += [p("mesh.png"), p("mesh.mtl"), p("mesh_normals.png")]
        files.append(save_glb(p("mesh.glb"), dec["vertices"], self.flame.faces, self.flame.uv_coords,
                              self.flame.uv_faces, tex))
        files.append(save_png(p("shape.png"), dec["shape"]))
        files.append(save_png(p("textured.png"), dec["textured"]))
        files.append(save_png(p("overlay.png"), self.overlay(face, dec, original)))
        files.append(save_png(p("landmarks.png"), self.landmarks_on_photo(face, dec, original)))
        return files

    def transfer(self, source: Dict[str, np.ndarray], target: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Target's identity (shape, albedo, head pose, camera, light) with the source's
        expression and jaw pose (DECA's demo_transfer)."""
        out = {k: np.array(v, copy=True) for k, v in target.items()}
        out["exp"] = np.array(source["exp"], copy=True)
        out["pose"][:, 3:] = source["pose"][:, 3:]
        return out

    def transfer_animation(self, face: FaceCrop, target: Dict[str, np.ndarray], source: Dict[str, np.ndarray],
                           original: np.ndarray, frames: int = 16) -> List[np.ndarray]:
        """Frames going from the target's expression to the source's and back, overlaid on the
        target photo next to the grey shape render."""
        seq = []
        ts = np.concatenate([np.linspace(0, 1, frames // 2 + 1), np.linspace(1, 0, frames // 2 + 1)[1:-1]])
        for a in ts:
            c = {k: np.array(v, copy=True) for k, v in target.items()}
            c["exp"] = (1 - a) * target["exp"] + a * source["exp"]
            c["pose"][:, 3:] = (1 - a) * target["pose"][:, 3:] + a * source["pose"][:, 3:]
            dec = self.decode(c)
            ov = self.overlay(face, dec, original)
            H = ov.shape[0]
            import paddle.nn.functional as F

            shp = F.interpolate(paddle.to_tensor(dec["shape"].transpose(2, 0, 1)[None]), size=[H, H],
                                mode="bilinear").numpy()[0].transpose(1, 2, 0)
            seq.append(np.concatenate([ov, shp], 1))
        return seq
