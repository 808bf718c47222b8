"""Optimisation-based fitting of FLAME to one photo, without a trained network.

    fitter = FaceFitter(image_size=128)
    codes = fitter.fit(face)          # face: a FaceCrop from FacePreprocessor
    codes["shape"]  # (1, n_shape) ... same keys as the DECA encoder's codes

Stages:
1. rigid: camera (log-scale, shift) and head rotation on the 68 landmarks;
2. landmarks: camera, head pose, jaw, expression and shape on the 68 landmarks (DECA's weighted
   landmark loss, eye and lip closure) plus mediapipe's dense face-mesh points when the crop has
   them (``FaceCrop.dense``; placed on the model by
   :mod:`ppface3d.flame.mediapipe_embedding`), code priors; Adam with a cosine-decayed step;
3. appearance: albedo code and SH light solved in closed form (alternating linear least squares
   on the face region's pixels: the albedo space is linear, the SH shading linear in the light);
4. optionally (``photo_iters`` > 0) a joint refinement with the masked photometric loss through
   the differentiable renderer.

:func:`landmark_objective` (the landmark, dense and prior terms on a batch) is shared with the
video tracker (``ppface3d/apps/track.py``).
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

GEOMETRY_KEYS = ("cam", "pose", "exp", "shape")
_PARAMS = {"cam": ("cam",), "pose": ("glob", "jaw"), "exp": ("exp",), "shape": ("shape",), "tex": ("tex",),
           "light": ("light",)}


def dense_landmark_loss(pred: paddle.Tensor, target: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """Weighted L1 over dense points, as :func:`landmark_loss`: sum_i w_i |pred_i - target_i|_1 /
    (2 sum_i w_i). pred, target (B, L, 2); weight (L,) or (B, L)."""
    w = weight if weight.ndim == 2 else weight.unsqueeze(0).expand([pred.shape[0], weight.shape[0]])
    return ((pred - target).abs().sum(-1) * w).sum() / (w.sum() * 2.0 + 1e-8)


def landmark_objective(face, codes: Dict[str, paddle.Tensor], target68: paddle.Tensor,
                       target_dense: Optional[paddle.Tensor] = None, dense_weight: Optional[paddle.Tensor] = None,
                       w_dense: float = 1.0, w_shape: float = 2e-3, w_exp: float = 1e-3) -> Dict[str, paddle.Tensor]:
    """Landmark fitting terms of a batch of codes (DECA camera), evaluated on the landmark vertices only.

    Args:
        face: :class:`~ppface3d.face_model.FaceModel` (its FLAME carries the dense points when
            ``target_dense`` is given: ``flame.set_dense_landmarks``).
        codes: 'shape', 'exp', 'pose', 'cam' (B, ...).
        target68: (B, 68, 3) screen NDC + confidence.
        target_dense: (B, L, 2) screen NDC dense targets, ``dense_weight`` (L,) or (B, L).
    Returns: 'landmark' (68-point terms), 'dense', 'prior' and their weighted sum 'loss'; plus
    'landmarks2d' (B, 68, 2) and, with dense targets, 'dense2d' (B, L, 2).
    """
    fo = face.flame_forward(codes, landmarks_only=True)
    cam = face.camera(codes["cam"])
    lm = cam.project(fo.landmarks)
    l_lmk = landmark_loss(lm, target68) + eye_closure_loss(lm, target68) + 0.5 * lip_closure_loss(lm, target68)
    jaw = codes["pose"][:, 3:]
    # the jaw opens about x only, never past closed (DECA's euler-jaw priors)
    prior = w_shape * code_l2(codes["shape"]) + w_exp * code_l2(codes["exp"])
    prior = prior + 10.0 * code_l2(jaw[:, 1:]) + 100.0 * code_l2(F.relu(-jaw[:, :1]))
    out = {"landmark": l_lmk, "prior": prior, "landmarks2d": lm}
    loss = l_lmk + prior
    if target_dense is not None and fo.landmarks_dense is not None:
        d2 = cam.project(fo.landmarks_dense)
        out["dense"] = dense_landmark_loss(d2, target_dense, dense_weight)
        out["dense2d"] = d2
        loss = loss + w_dense * out["dense"]
    out["loss"] = loss
    return out


def _cosine(step: int, total: int, lr: float, floor: float = 0.1) -> float:
    return lr * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * min(step, total) / max(total, 1))))


class FaceFitter:
    """Fit FLAME + albedo + light + camera to a face crop.

    Args:
        face: the :class:`~ppface3d.face_model.FaceModel` to fit (rendered at ``image_size``;
            e.g. a DECA model's ``model.face``); None builds one from the arguments below.
        n_shape, n_exp, n_tex: code sizes (when ``face`` is None).
        image_size: render/fit resolution (the crop is resized to it).
        landmark_iters: Adam steps of the landmark stage (plus ``rigid_iters`` before it).
        photo_iters: joint photometric refinement steps after the closed-form albedo and light
            (0: none).
        lr: peak Adam step (cosine-decayed to a tenth).
        w_shape, w_exp, w_tex: code prior weights (sum of squares / 2); w_light: light whiteness.
        w_dense: weight of mediapipe's dense points (0: the 68 landmarks only).
        w_photo: photometric weight in the refinement.
        flame_model_path, flame_landmark_path, albedo_path, uv_size: face model (None = generated).
        progress: show a tqdm bar.
    """

    def __init__(self, face=None, n_shape: int = 100, n_exp: int = 50, n_tex: int = 50, image_size: int = 128,
                 landmark_iters: int = 100, photo_iters: int = 0, lr: float = 0.05, rigid_iters: int = 20,
                 w_shape: float = 2e-4, w_exp: float = 2e-4, w_tex: float = 1e-3, w_light: float = 0.1,
                 w_dense: float = 1.0, w_photo: float = 2.0, flame_model_path: Optional[str] = None,
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
        self.rigid_iters = int(rigid_iters)
        self.lr = float(lr)
        self.w = dict(shape=w_shape, exp=w_exp, tex=w_tex, light=w_light, photo=w_photo, dense=w_dense)
        self.progress = progress
        self._dense = None

    def dense_embedding(self):
        """The model's :class:`~ppface3d.flame.mediapipe_embedding.MediapipeEmbedding`, set on its
        FLAME (computed and cached on first use)."""
        if self._dense is None:
            from ..flame.mediapipe_embedding import mediapipe_embedding

            emb = mediapipe_embedding(self.face)
            self.face.flame.set_dense_landmarks(emb.faces_idx, emb.bary)
            self._dense = emb
        return self._dense

    # ------------------------------------------------------------------ parametrisation
    def _camera(self, p):
        """DECA camera [s, tx, ty] from the fitted log-scale and NDC shift (well-scaled for Adam)."""
        s = self._s0 * paddle.exp(p["cam"][:, 0:1])
        return paddle.concat([s, p["cam"][:, 1:3] / s + self._t0], 1)

    def _set_origin(self):
        cam0 = self.face.framing_camera(self.face.mean_landmarks(static=False))
        self._cam0 = cam0
        self._s0, self._t0 = float(cam0[0]), paddle.to_tensor(cam0[None, 1:])

    def to_fit_camera(self, cam: np.ndarray) -> np.ndarray:
        """DECA camera (B, 3) -> the fitted parametrisation (log-scale, shift)."""
        c = np.asarray(cam, np.float32).reshape(-1, 3)
        return np.concatenate([np.log(c[:, :1] / self._s0), (c[:, 1:] - self._cam0[None, 1:]) * c[:, :1]], 1)

    def _codes(self, p, deca_cam: bool = False):
        """Fitted parameters -> codes (pose = [global, jaw], DECA camera)."""
        c = {k: v for k, v in p.items() if k not in ("glob", "jaw")}
        if "glob" in p:
            c["pose"] = paddle.concat([p["glob"], p["jaw"]], 1)
        c["cam"] = p["cam"] if deca_cam else self._camera(p)
        return c

    def _decode(self, p, render: bool, deca_cam: bool = False):
        out = self.face.decode(self._codes(p, deca_cam))
        if render:
            r = self.face.render(out, light=p["light"], albedo=self.face.albedo_map(p["tex"]))
            out["image"], out["alpha"] = r["images"], r["alpha_images"]
        return out

    @paddle.no_grad()
    def render(self, codes: Dict[str, np.ndarray]) -> Dict[str, paddle.Tensor]:
        """Render fitted codes (DECA camera): 'image' (1, 3, S, S), 'alpha', 'landmarks2d', 'vertices'."""
        p = {k: paddle.to_tensor(np.asarray(codes[k], np.float32)) for k in ("shape", "exp", "pose", "cam", "tex", "light")}
        return self._decode(p, True, deca_cam=True)

    # ------------------------------------------------------------------ targets
    def targets(self, face):
        """(68-point target (1, 68, 3) NDC + confidence, dense target (1, 468, 2) NDC or None,
        image (1, 3, S, S), face mask (1, S, S)) of a FaceCrop or dict."""
        from ..data.preprocess import landmark_face_mask
        from ..render import pixels_to_ndc

        get = (lambda k: getattr(face, k, None)) if not isinstance(face, dict) else face.get
        img, lm_px, dense_px = get("image"), get("landmarks"), get("dense")
        S0 = img.shape[0]
        lm_ndc = pixels_to_ndc(np.asarray(lm_px, np.float32)[:, :2], S0).astype(np.float32)
        t68 = paddle.to_tensor(np.concatenate([lm_ndc, np.ones((68, 1), np.float32)], 1)[None])
        dense = None
        if dense_px is not None and self.w["dense"] > 0:
            self.dense_embedding()
            dense = paddle.to_tensor(pixels_to_ndc(np.asarray(dense_px, np.float32), S0).astype(np.float32)[None])
        image = paddle.to_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))[None].astype(np.float32))
        if S0 != self.S:
            image = F.interpolate(image, size=[self.S, self.S], mode="area")
        mask_px = (np.asarray(lm_px, np.float64)[:, :2] + 0.5) * self.S / S0 - 0.5
        mask = paddle.to_tensor(landmark_face_mask(mask_px, self.S)[None])
        return t68, dense, image, mask

    # ------------------------------------------------------------------ fitting
    def fit(self, face, init: Optional[Dict[str, np.ndarray]] = None, fixed=()) -> Dict[str, np.ndarray]:
        """Fit one :class:`~ppface3d.data.preprocess.FaceCrop` (or a dict with 'image' (S0, S0, 3)
        float [0, 1], 'landmarks' (68, 2) crop pixels and optionally 'dense' (468, 2)). ``init``:
        codes to start from (DECA camera); ``fixed``: names of codes held at their ``init`` value
        (e.g. ('shape', 'tex') for a known identity). Returns codes as numpy arrays with a leading
        batch axis of 1, plus 'loss_landmark' (and 'loss_dense', 'loss_photo') final values."""
        from tqdm import tqdm

        from ..face_model import sh_ambient

        t68, dense, image, mask = self.targets(face)
        dense_w = paddle.to_tensor(self._dense.weight) if dense is not None else None
        self._set_origin()
        init = dict(init or {})
        if "cam" in init:
            init["cam"] = self.to_fit_camera(init["cam"])
        pose = np.asarray(init.get("pose", np.zeros((1, 6), np.float32)), np.float32).reshape(1, 6)
        p = {
            "shape": init.get("shape", np.zeros((1, self.n["shape"]), np.float32)),
            "exp": init.get("exp", np.zeros((1, self.n["exp"]), np.float32)),
            "glob": pose[:, :3], "jaw": pose[:, 3:],
            "cam": init.get("cam", np.zeros((1, 3), np.float32)),
            "tex": init.get("tex", np.zeros((1, self.n["tex"]), np.float32)),
            "light": np.asarray(init.get("light", sh_ambient(1.0)[None]), np.float32).reshape(1, 9, 3),
        }
        p = {k: paddle.create_parameter(list(np.shape(v)), "float32",
                                        default_initializer=paddle.nn.initializer.Assign(np.asarray(v, np.float32)))
             for k, v in p.items()}
        fixed = {n for k in fixed for n in _PARAMS[k]}
        rigid = 0 if "cam" in init else self.rigid_iters
        total = rigid + self.iters[0] + self.iters[1]
        bar = tqdm(total=total, desc="fit", disable=not self.progress, leave=False)
        final = {}

        def lmk_step(opt, step, n):
            opt.set_lr(_cosine(step, n, self.lr))
            o = landmark_objective(self.face, self._codes(p), t68, dense, dense_w, self.w["dense"],
                                   self.w["shape"], self.w["exp"])
            loss = o["loss"]
            loss.backward()
            opt.step()
            opt.clear_grad()
            bar.update(1)
            final["loss_landmark"] = float(o["landmark"])
            if "dense" in o:
                final["loss_dense"] = float(o["dense"])
            return o

        # 1. rigid: camera and head rotation (expression, shape and jaw at their start)
        names = [n for n in ("cam", "glob") if n not in fixed]
        if rigid and names:
            opt = paddle.optimizer.Adam(self.lr, parameters=[p[n] for n in names])
            for it in range(rigid):
                lmk_step(opt, it, rigid)
        # 2. landmarks (+ dense points): every geometry code not held fixed
        names = [n for n in ("cam", "glob", "jaw", "exp", "shape") if n not in fixed]
        if self.iters[0] and names:
            opt = paddle.optimizer.Adam(self.lr, parameters=[p[n] for n in names])
            for it in range(self.iters[0]):
                lmk_step(opt, it, self.iters[0])
                if it % 10 == 0:
                    bar.set_postfix(stage="landmarks", lmk=f"{final['loss_landmark']:.4f}")
        # 3. albedo and light in closed form
        app = [n for n in ("tex", "light") if n not in fixed]
        if app:
            tex, light = self.solve_appearance(p, image, mask, solve_tex="tex" in app, solve_light="light" in app)
            with paddle.no_grad():
                p["tex"].set_value(paddle.to_tensor(tex))
                p["light"].set_value(paddle.to_tensor(light))
        # 4. optional joint photometric refinement
        if self.iters[1]:
            names = [n for n in ("cam", "glob", "jaw", "exp", "shape", "tex", "light") if n not in fixed]
            opt = paddle.optimizer.Adam(self.lr * 0.2, parameters=[p[n] for n in names])
            for it in range(self.iters[1]):
                opt.set_lr(_cosine(it, self.iters[1], self.lr * 0.2))
                out = self._decode(p, render=True)
                lm = out["landmarks2d"]
                l_lmk = landmark_loss(lm, t68) + eye_closure_loss(lm, t68) + 0.5 * lip_closure_loss(lm, t68)
                l_photo = photometric_loss(out["image"], image, mask)
                loss = l_lmk + self.w["photo"] * l_photo + self.w["shape"] * code_l2(p["shape"]) \
                    + self.w["exp"] * code_l2(p["exp"]) + self.w["tex"] * code_l2(p["tex"]) \
                    + self.w["light"] * light_regularizer(p["light"])
                loss.backward()
                opt.step()
                opt.clear_grad()
                bar.update(1)
                final["loss_landmark"], final["loss_photo"] = float(l_lmk), float(l_photo)
        bar.close()
        codes = {k: v.numpy().astype(np.float32) for k, v in self._codes(p).items()}
        codes["light"] = codes["light"].reshape(1, 9, 3)
        codes.update({k: np.float32(v) for k, v in final.items()})
        return codes

    @paddle.no_grad()
    def solve_appearance(self, p, image: paddle.Tensor, mask: paddle.Tensor, rounds: int = 3,
                         solve_tex: bool = True, solve_light: bool = True):
        """Albedo code and SH light for fixed geometry, by alternating linear least squares over
        the face-mask pixels the mesh covers: image = (mean + basis @ tex)(uv) * (SH(normal) @ light).
        Returns (tex (1, n_tex), light (1, 9, 3)) numpy."""
        from ..render.interpolate import sample_texture
        from ..render.shading import SH_CONSTANTS, _raw_basis

        out = self._decode(p, render=False)
        alb = self.face.albedo_map(p["tex"])
        r = self.face.render(out, light=p["light"], albedo=alb)
        m = (mask.unsqueeze(1) * r["alpha_images"]).numpy()[0, 0] > 0.5
        tex = p["tex"].numpy().astype(np.float64)[0]
        light = p["light"].numpy().astype(np.float64).reshape(9, 3)
        if m.sum() < 20:
            return tex[None].astype(np.float32), light[None].astype(np.float32)
        uv = r["uv_images"]
        A = self.face.albedo
        T = A.uv_size
        mean = sample_texture(A.mean.reshape([1, 3, T, T]), uv).numpy()[0][:, m].T.astype(np.float64)  # (P, 3)
        nt = A.n_tex
        basis = sample_texture(A.basis.reshape([1, nt * 3, T, T]), uv).numpy()[0][:, m]
        basis = basis.reshape(nt, 3, -1).transpose(2, 1, 0).astype(np.float64)  # (P, 3, nt)
        Y = (_raw_basis(r["normal_images"]) * paddle.to_tensor(SH_CONSTANTS).reshape([1, 9, 1, 1])).numpy()[0][:, m].T
        I = image.numpy()[0][:, m].T.astype(np.float64)  # (P, 3)
        P = len(I)
        lam_t = self.w["tex"] * P * 0.5 + 1e-6
        for _ in range(rounds):
            a = np.clip(mean + basis @ tex, 0.0, 1.0)
            if solve_light:  # per channel: I_c = a_c * (Y @ l_c), light whiteness as a small ridge
                for c in range(3):
                    X = Y * a[:, c:c + 1]
                    light[:, c] = np.linalg.solve(X.T @ X + 1e-3 * P * np.eye(9) * 0.01, X.T @ I[:, c])
            if solve_tex:  # I = (mean + basis @ tex) * shading
                s = Y @ light  # (P, 3)
                X = (basis * s[:, :, None]).reshape(P * 3, nt)
                y = (I - mean * s).reshape(-1)
                tex = np.linalg.solve(X.T @ X + lam_t * np.eye(nt), X.T @ y)
        return tex[None].astype(np.float32), light[None].astype(np.float32)
