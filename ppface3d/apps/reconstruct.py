"""Face reconstruction from photos: a trained DECA checkpoint or optimisation-based fitting,
then codes, meshes and renders on the original photo; expression transfer between faces.

    rec = FaceReconstructor()                                   # fitting (no network)
    rec = FaceReconstructor(weights="output/deca")              # a trained run folder (its config.yml)
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
from ..render import ndc_to_pixels, pixels_to_ndc
from ..render.draw import draw_landmarks
from .fit import DEFAULT_ITERS

CODE_KEYS = ("shape", "tex", "exp", "pose", "cam", "light")
EXTRA_CODE_KEYS = ("detail",)  # written to codes.npz when the model gives them (DECA's 128-d detail code)


class FaceReconstructor:
    """Codes for a face crop (network or fitting) and everything written from them.

    Args:
        config, weights: a trained model: ``weights`` a run folder or weights file with the
            ``config.yml`` the trainer wrote beside it (:func:`ppengine.load_for_inference`), or
            a weights file with the ``config`` it was trained with; without weights the codes
            come from :class:`~ppface3d.apps.fit.FaceFitter` (``config`` then only names the
            FLAME / albedo files and code sizes).
        overrides: ``-o`` style overrides for the config.
        render_size: size of the crop renders (the crops are 224 as DECA's).
        fit_size, fit_iters: fitting resolution and (landmark, photometric) Adam steps.
        uv_size: texture / normal map size written with meshes.
        progress: progress bars.
    """

    def __init__(self, config: Optional[str] = None, weights: Optional[str] = None, overrides=(),
                 render_size: int = 224, fit_size: int = 128, fit_iters=DEFAULT_ITERS, uv_size: int = 256,
                 progress: bool = True):
        from ..face_model import FaceModel
        from .fit import FaceFitter

        self.model = None
        self.fitter = None
        cfg = None
        if config:
            from ppengine.config import load_config

            cfg = load_config(config, list(overrides) + ([f"model.weights={weights}"] if weights else []))
        m = (cfg.get("model") or {}) if cfg is not None else {}
        configured = bool(m.get("weights") or m.get("checkpoint"))  # -o model.weights=... / DECA's deca_model.tar
        if weights or configured:
            if weights and not os.path.exists(weights):
                raise InputError(f"weights {weights!r} not found (train with tools/train.py first, or "
                                 f"leave --weights out to fit each face by optimisation)")
            if cfg is not None:
                from ppengine.trainer import build_model

                if weights and not os.path.isfile(weights):
                    raise InputError(f"--weights {weights!r}: with -c give a weights file; a run folder "
                                     "carries its own config.yml (leave -c out)")
                self.model = build_model(cfg)
            else:
                from ppengine import load_for_inference

                self.model, _ = load_for_inference(weights, overrides)
            if not hasattr(self.model, "face") or not hasattr(self.model, "encode_crops"):
                raise InputError(f"{weights}: a {type(self.model).__name__} is not a face reconstruction model")
            self.model.eval()
            face = self.model.face
        else:
            face = FaceModel.from_config(m, image_size=fit_size)
            self.fitter = FaceFitter(face, image_size=fit_size, landmark_iters=fit_iters[0],
                                     photo_iters=fit_iters[1], progress=progress)
        self.S = int(render_size)
        self.face = face.at_size(self.S)
        self.uv_size = int(uv_size)

    # ------------------------------------------------------------------ codes
    @paddle.no_grad()
    def _encode(self, face: FaceCrop) -> Dict[str, np.ndarray]:
        x = paddle.to_tensor(np.ascontiguousarray(face.image.transpose(2, 0, 1))[None])
        codes = self.model.encode_crops(x)  # codes only: the renders are made here, at render_size
        return {k: v.numpy() for k, v in codes.items() if k in CODE_KEYS or k in EXTRA_CODE_KEYS}

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
        t = {k: paddle.to_tensor(np.asarray(codes[k], np.float32)) for k in CODE_KEYS}
        light = t["light"].reshape([-1, 9, 3])
        dec = self.face.decode(t)
        alb = self.face.albedo_map(t["tex"])
        r = self.face.render(dec, light=light, albedo=alb)
        s = self.face.render(dec, mode="shape")
        out = {
            "vertices": dec["vertices"].numpy()[0], "landmarks2d": dec["landmarks2d"].numpy()[0],
            "textured": r["images"].numpy()[0].transpose(1, 2, 0), "alpha": r["alpha_images"].numpy()[0, 0],
            "shape": s["images"].numpy()[0].transpose(1, 2, 0), "albedo": alb.numpy()[0].transpose(1, 2, 0),
        }
        if self.has_detail(codes):
            out.update(self._detail(t, codes, dec))
        return out

    def has_detail(self, codes: Dict[str, np.ndarray]) -> bool:
        """Whether the model has a detail branch (DECA's released model, DECADetail) and the codes a detail code."""
        return self.model is not None and hasattr(self.model, "dense_mesh") and "detail" in codes

    def _detail(self, t: Dict[str, paddle.Tensor], codes: Dict[str, np.ndarray], dec) -> Dict[str, object]:
        """The model's detail outputs for one face: 'shape_detail' (S, S, 3) grey render with the
        detail normals, 'detail_normals' (T, T, 3) UV normal map in [0, 1] and 'weight' (T, T), the
        dense displaced mesh 'dense' (vertices, faces)."""
        d = self.model.decode(dict(t, detail=paddle.to_tensor(np.asarray(codes["detail"], np.float32))), render=False)
        nmap = d["uv_detail_normals"]
        shade = self.face.render(dec, mode="shape", normal_map=nmap)["images"].numpy()[0].transpose(1, 2, 0)
        n = nmap.numpy()[0].transpose(1, 2, 0)
        weight = n[..., 3] if n.shape[-1] == 4 else np.asarray(self.model.face_eye_mask, np.float32)
        return {"shape_detail": shade, "detail_normals": (n[..., :3] + 1) / 2, "detail_weight": weight,
                "dense": self.model.dense_mesh(d, 0)[:2]}

    def face_region(self, landmarks2d: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """(S, S) soft mask of the reconstructed face (landmark polygon within the render)."""
        from scipy.ndimage import gaussian_filter

        m = landmark_face_mask(ndc_to_pixels(landmarks2d, self.S), self.S) * (alpha > 0.5)
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
        pred = face.to_original(ndc_to_pixels(dec["landmarks2d"], face.image.shape[0]))
        img = original.astype(np.float32) / 255.0 if original.dtype == np.uint8 else original.astype(np.float32)
        H, W = img.shape[:2]
        return draw_landmarks(img, pixels_to_ndc(pred, (H, W)), (1, 0.1, 0.1),
                              pixels_to_ndc(face.landmarks_original, (H, W)), (0.1, 1, 0.1))

    # ------------------------------------------------------------------ files
    def save(self, face: FaceCrop, codes: Dict[str, np.ndarray], folder: str, original: np.ndarray,
             prefix: str = "") -> List[str]:
        """Write codes.npz, mesh.obj (+ texture, normal map, .mtl), mesh.glb and renders."""
        from .export import blend_normal_map, save_codes, save_glb, save_obj, save_png, uv_normal_map

        os.makedirs(folder, exist_ok=True)
        dec = self.decode(codes)
        p = lambda n: os.path.join(folder, prefix + n)  # noqa: E731
        files = [save_codes(p("codes.npz"), codes, tform=face.tform, landmarks_original=face.landmarks_original,
                            bbox=face.bbox)]
        import paddle.nn.functional as F

        tex = F.interpolate(paddle.to_tensor(dec["albedo"].transpose(2, 0, 1)[None]),
                            size=[self.uv_size, self.uv_size], mode="bilinear").numpy()[0].transpose(1, 2, 0)
        f = self.face
        nmap = uv_normal_map(dec["vertices"], f.faces, f.uv_coords, f.uv_faces, self.uv_size)
        if "detail_normals" in dec:  # the detail normal map inside the face region, the coarse one around it
            nmap = blend_normal_map(nmap, dec["detail_normals"], dec["detail_weight"])
        files.append(save_obj(p("mesh.obj"), dec["vertices"], f.faces, f.uv_coords, f.uv_faces, texture=tex,
                              normal_map=nmap))
        files += [p("mesh.png"), p("mesh.mtl"), p("mesh_normals.png")]
        files.append(save_glb(p("mesh.glb"), dec["vertices"], f.faces, f.uv_coords, f.uv_faces, tex))
        files.append(save_png(p("shape.png"), dec["shape"]))
        if "dense" in dec:  # a detail branch: its shading, and the dense displaced mesh (DECA's _detail.obj)
            files.append(save_png(p("shape_detail.png"), dec["shape_detail"]))
            files.append(save_obj(p("mesh_detail.obj"), *dec["dense"]))
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
