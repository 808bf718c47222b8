"""Optimisation-based fitting of FLAME to one photo, without a trained network.

    fitter = FaceFitter(image_size=128)
    codes = fitter.fit(face)          # face: a FaceCrop from FacePreprocessor
    codes["shape"]  # (1, n_shape) ... same keys as the DECA encoder's codes

Two stages through the differentiable renderer:
1. landmarks: camera, head pose, jaw, expression and shape fitted to the 68 landmarks
   (DECA's weighted landmark loss, eye and lip closure, code priors);
2. photometric: albedo code and SH light join, the masked photometric loss (face region from
   the landmarks) is added to the landmark terms.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import paddle
import paddle.nn.functional as F

from ..losses.deca_losses import (
    code_l2,
    eye_closure_loss,
    landmark_loss,
    light_regularizer,
    lip_closure_loss,
    photometric_loss,
)


class FaceFitter:
    """Fit FLAME + albedo + light + camera to a face crop.

    Args:
        face: the :class:`~ppface3d.face_model.FaceModel` to fit (rendered at ``image_size``;
            e.g. a DECA model's ``model.face``); None builds one from the arguments below.
        n_shape, n_exp, n_tex: code sizes (when ``face`` is None).
        image_size: render/fit resolution (the crop is resized to it).
        landmark_iters, photo_iters: Adam steps per stage.
        lr: Adam learning rate.
        w_shape, w_exp, w_tex: code prior weights (sum of squares); w_light: light whiteness.
        w_photo: photometric weight in stage 2.
        flame_model_path, flame_landmark_path, albedo_path, uv_size: face model (None = generated).
        progress: show a tqdm bar.
    """

    def __init__(self, face=None, n_shape: int = 100, n_exp: int = 50, n_tex: int = 50, image_size: int = 128,
                 landmark_iters: int = 150, photo_iters: int = 100, lr: float = 0.02,
                 w_shape: float = 2e-3, w_exp: float = 1e-3, w_tex: float = 1e-3, w_light: float = 0.1,
                 w_photo: float = 2.0, flame_model_path: Optional[str] = None,
                 flame_landmark_path: Optional[str] = None, albedo_path: Optional[str] = None,
                 uv_size: int = 64, progress: bool = True):
        from ..face_model import FaceModel

        self.S = int(image_size)
        if face is None:
            face = FaceModel(n_shape=n_shape, n_exp=n_exp, n_tex=n_tex, image_size=self.S, uv_size=uv_size,
                             flame_model_path=flame_model_path, flame_landmark_path=flame_landmark_path,
                             albedo_path=albedo_path)
        self.face = face.at_size(self.S)
        self.n = dict(self.face.code_sizes)
        self.iters = (int(landmark_iters), int(photo_iters))
        self.lr = float(lr)
        self.w = dict(shape=w_shape, exp=w_exp, tex=w_tex, light=w_light, photo=w_photo)
        self.progress = progress

    def _camera(self, p):
        """DECA camera [s, tx, ty] from the fitted log-scale and NDC shift (well-scaled for Adam)."""
        s = self._s0 * paddle.exp(p["cam"][:, 0:1])
        return paddle.concat([s, p["cam"][:, 1:3] / s + self._t0], 1)

    def _decode(self, p, render: bool, deca_cam: bool = False):
        codes = dict(p, cam=p["cam"] if deca_cam else self._camera(p))
        out = self.face.decode(codes)
        if render:
            r = self.face.render(out, light=p["light"], albedo=self.face.albedo_map(p["tex"]))
            out["image"], out["alpha"] = r["images"], r["alpha_images"]
        return out

    @paddle.no_grad()
    def render(self, codes: Dict[str, np.ndarray]) -> Dict[str, paddle.Tensor]:
        """Render fitted codes (DECA camera): 'image' (1, 3, S, S), 'alpha', 'landmarks2d', 'vertices'."""
        p = {k: paddle.to_tensor(np.asarray(codes[k], np.float32)) for k in ("shape", "exp", "pose", "cam", "tex", "light")}
        return self._decode(p, True, deca_cam=True)

    def fit(self, face, init: Optional[Dict[str, np.ndarray]] = None, fixed=()) -> Dict[str, np.ndarray]:
        """Fit one :class:`~ppface3d.data.preprocess.FaceCrop` (or a dict with 'image' (S0, S0, 3)
        float [0, 1] and 'landmarks' (68, 2) crop pixels). Returns codes as numpy arrays with a
        leading batch axis of 1, plus 'loss_landmark' / 'loss_photo' (final values). Codes named in
        ``fixed`` keep their ``init`` values (e.g. ``fixed=("shape",)`` with MICA's shape)."""
        from tqdm import tqdm

        from ..data.preprocess import landmark_face_mask
        from ..face_model import sh_ambient
        from ..render import pixels_to_ndc

        img = face.image if hasattr(face, "image") else face["image"]
        lm_px = face.landmarks if hasattr(face, "landmarks") else face["landmarks"]
        S0 = img.shape[0]
        lm_ndc = pixels_to_ndc(np.asarray(lm_px, np.float32), S0).astype(np.float32)
        target_lm = paddle.to_tensor(np.concatenate([lm_ndc, np.ones((68, 1), np.float32)], 1)[None])
        image = paddle.to_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))[None].astype(np.float32))
        if S0 != self.S:
            image = F.interpolate(image, size=[self.S, self.S], mode="area")
        mask_px = (np.asarray(lm_px, np.float64) + 0.5) * self.S / S0 - 0.5
        mask = paddle.to_tensor(landmark_face_mask(mask_px, self.S)[None])

        cam0 = self.face.framing_camera(self.face.mean_landmarks(static=False))
        self._s0, self._t0 = float(cam0[0]), paddle.to_tensor(cam0[None, 1:])
        init = dict(init or {})
        if "cam" in init:  # back to the fitted parametrisation
            c = np.asarray(init["cam"], np.float32).reshape(1, 3)
            init["cam"] = np.concatenate([np.log(c[:, :1] / self._s0), (c[:, 1:] - cam0[None, 1:]) * c[:, :1]], 1)
        p = {
            "shape": init.get("shape", np.zeros((1, self.n["shape"]), np.float32)),
            "exp": init.get("exp", np.zeros((1, self.n["exp"]), np.float32)),
            "pose": init.get("pose", np.zeros((1, 6), np.float32)),
            "cam": init.get("cam", np.zeros((1, 3), np.float32)),
            "tex": init.get("tex", np.zeros((1, self.n["tex"]), np.float32)),
            "light": init.get("light", sh_ambient(1.0)[None]),
        }
        p = {k: paddle.create_parameter(list(np.shape(v)), "float32",
                                        default_initializer=paddle.nn.initializer.Assign(np.asarray(v, np.float32)))
             for k, v in p.items()}
        total = sum(self.iters)
        bar = tqdm(total=total, desc="fit", disable=not self.progress, leave=False)
        final = {}
        for stage, iters in enumerate(self.iters):
            names = [n for n in ["cam", "pose", "exp", "shape"] + (["tex", "light"] if stage == 1 else []) if n not in fixed]
            # camera scale needs a larger step than the codes
            opt = paddle.optimizer.Adam(self.lr, parameters=[p[n] for n in names])
            for it in range(iters):
                out = self._decode(p, render=stage == 1)
                lm = out["landmarks2d"]
                l_lmk = landmark_loss(lm, target_lm) + eye_closure_loss(lm, target_lm) + 0.5 * lip_closure_loss(lm, target_lm)
                loss = l_lmk + self.w["shape"] * code_l2(p["shape"]) + self.w["exp"] * code_l2(p["exp"])
                jaw = p["pose"][:, 3:]
                # the jaw opens about x only, never past closed (DECA's euler-jaw priors)
                loss = loss + 10.0 * code_l2(jaw[:, 1:]) + 100.0 * code_l2(F.relu(-jaw[:, :1]))
                l_photo = None
                if stage == 1:
                    l_photo = photometric_loss(out["image"], image, mask)
                    loss = loss + self.w["photo"] * l_photo + self.w["tex"] * code_l2(p["tex"])
                    loss = loss + self.w["light"] * light_regularizer(p["light"])
                loss.backward()
                opt.step()
                opt.clear_grad()
                bar.update(1)
                if it % 10 == 0:
                    bar.set_postfix(stage=("landmarks", "photometric")[stage], lmk=f"{float(l_lmk):.4f}")
                final["loss_landmark"] = float(l_lmk)
                if l_photo is not None:
                    final["loss_photo"] = float(l_photo)
        bar.close()
        codes = {k: v.numpy().astype(np.float32) for k, v in p.items()}
        codes["cam"] = self._camera(p).numpy().astype(np.float32)
        codes["light"] = codes["light"].reshape(1, 9, 3)
        codes.update({k: np.float32(v) for k, v in final.items()})
        return codes
