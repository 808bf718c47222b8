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
# (landmark, photometric) Adam steps of the default fit: the photometric refinement is off
# (the closed-form albedo and light take its place; docs/deca.md measures both)
DEFAULT_ITERS = (100, 0)
_PARAMS = {"cam": ("cam",), "pose": ("glob", "jaw"), "exp": ("exp",), "shape": ("shape",), "tex": ("tex",),
           "light": ("light",)}


def dense_landmark_loss(pred: paddle.Tensor, target: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """Weighted L1 over dense points, as :func:`landmark_loss`: sum_i w_i |pred_i - target_i|_1 /
    (2 sum_i w_i). pred, target (B, L, 2); weight (L,) or (B, L)."""
    w = weight if weight.ndim == 2 else weight.unsqueeze(0).expand([pred.shape[0], weight.shape[0]])
    return ((pred - target).abs().sum(-1) * w).sum() / (w.sum() * 2.0 + 1e-8)


def landmark_objective(face, codes: Dict[str, paddle.Tensor], target68: paddle.Tensor,
                       target_dense: Optional[paddle.Tensor] = None, dense_weight: Optional[paddle.Tensor] = None,
                       w_dense: float = 1.0, w_shape: float = 2e-3, w_exp: float = 1e-3,
                       data_scale: float = 1.0) -> Dict[str, paddle.Tensor]:
    """Landmark fitting terms of a batch of codes (DECA camera), evaluated on the landmark vertices only.

    Args:
        face: :class:`~ppface3d.face_model.FaceModel` (its FLAME carries the dense points when
            ``target_dense`` is given: ``flame.set_dense_landmarks``).
        codes: 'shape', 'exp', 'pose', 'cam' (B, ...).
        target68: (B, 68, 3) screen NDC + confidence.
        target_dense: (B, L, 2) screen NDC dense targets, ``dense_weight`` (L,) or (B, L).
        data_scale: factor on the landmark and dense terms (K views of one shape: K).
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
    loss = data_scale * l_lmk + prior
    if target_dense is not None and fo.landmarks_dense is not None:
        d2 = cam.project(fo.landmarks_dense)
        out["dense"] = dense_landmark_loss(d2, target_dense, dense_weight)
        out["dense2d"] = d2
        loss = loss + data_scale * w_dense * out["dense"]
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
        c = self._codes(p, deca_cam)
        K = c["exp"].shape[0]
        for k in ("shape", "tex"):  # one identity shared by K views
            if c[k].shape[0] != K:
                c[k] = c[k].expand([K, c[k].shape[1]])
        out = self.face.decode(c)
        if render:
            r = self.face.render(out, light=c["light"], albedo=self.face.albedo_map(c["tex"]))
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
        return self.fit_views([face], init, fixed)

    def fit_views(self, faces, init: Optional[Dict[str, np.ndarray]] = None, fixed=()) -> Dict[str, np.ndarray]:
        """Fit K crops of one person together: one shape and albedo code (1, n), per view
        expression, pose, camera and light (K, ...). The views' landmark terms add up (K views
        weigh K times one against the shape prior). Same arguments and outputs as :meth:`fit`;
        ``init`` per-view codes may have a batch of 1 (broadcast) or K."""
        from tqdm import tqdm

        from ..face_model import sh_ambient

        K = len(faces)
        tg = [self.targets(f) for f in faces]
        t68 = paddle.concat([t[0] for t in tg])
        image = paddle.concat([t[2] for t in tg])
        mask = paddle.concat([t[3] for t in tg])
        dense = dense_w = None
        if any(t[1] is not None for t in tg):
            w = self._dense.weight
            dense = paddle.concat([t[1] if t[1] is not None else paddle.zeros([1, len(w), 2]) for t in tg])
            dense_w = paddle.to_tensor(np.stack([w if t[1] is not None else np.zeros_like(w) for t in tg]))
        self._set_origin()
        init = dict(init or {})
        if "cam" in init:
            init["cam"] = self.to_fit_camera(init["cam"])

        def per_view(key, default):
            v = np.asarray(init.get(key, default), np.float32)
            return np.ascontiguousarray(np.broadcast_to(v, (K,) + v.shape[1:])) if v.shape[0] == 1 else v

        pose = per_view("pose", np.zeros((1, 6), np.float32)).reshape(K, 6)
        p = {
            "shape": np.asarray(init.get("shape", np.zeros((1, self.n["shape"]), np.float32)))[:1],
            "exp": per_view("exp", np.zeros((1, self.n["exp"]), np.float32)),
            "glob": pose[:, :3], "jaw": pose[:, 3:],
            "cam": per_view("cam", np.zeros((1, 3), np.float32)),
            "tex": np.asarray(init.get("tex", np.zeros((1, self.n["tex"]), np.float32)))[:1],
            "light": per_view("light", sh_ambient(1.0)[None]).reshape(K, 9, 3),
        }
        p = {k: paddle.create_parameter(list(np.shape(v)), "float32",
                                        default_initializer=paddle.nn.initializer.Assign(np.asarray(v, np.float32)))
             for k, v in p.items()}
        fixed = {n for k in fixed for n in _PARAMS[k]}
        rigid = 0 if "cam" in init else self.rigid_iters
        total = rigid + self.iters[0] + self.iters[1]
        bar = tqdm(total=total, desc="fit", disable=not self.progress, leave=False)
        final = {}

        def run(names, n, lr):
            if not names or not n:
                return
            opt = paddle.optimizer.Adam(lr, parameters=[p[k] for k in names])
            for it in range(n):
                opt.set_lr(_cosine(it, n, lr))
                o = landmark_objective(self.face, self._codes(p), t68, dense, dense_w, self.w["dense"],
                                       self.w["shape"], self.w["exp"], data_scale=K)
                o["loss"].backward()
                opt.step()
                opt.clear_grad()
                bar.update(1)
                final["loss_landmark"] = float(o["landmark"])
                if "dense" in o:
                    final["loss_dense"] = float(o["dense"])
                if it % 10 == 0:
                    bar.set_postfix(lmk=f"{final['loss_landmark']:.4f}")

        # 1. rigid: camera and head rotation; 2. landmarks (+ dense points): every geometry code not held fixed
        run([n for n in ("cam", "glob") if n not in fixed], rigid, self.lr)
        run([n for n in ("cam", "glob", "jaw", "exp", "shape") if n not in fixed], self.iters[0], self.lr)
        # 3. albedo and light in closed form
        if "tex" not in fixed or "light" not in fixed:
            tex, light = self.solve_appearance(p, image, mask, solve_tex="tex" not in fixed,
                                               solve_light="light" not in fixed)
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
                loss = K * (l_lmk + self.w["photo"] * l_photo) + self.w["shape"] * code_l2(p["shape"]) \
                    + self.w["exp"] * code_l2(p["exp"]) + self.w["tex"] * code_l2(p["tex"]) \
                    + self.w["light"] * light_regularizer(p["light"])
                loss.backward()
                opt.step()
                opt.clear_grad()
                bar.update(1)
                final["loss_landmark"], final["loss_photo"] = float(l_lmk), float(l_photo)
        bar.close()
        codes = {k: v.numpy().astype(np.float32) for k, v in self._codes(p).items()}
        codes["light"] = codes["light"].reshape(K, 9, 3)
        codes.update({k: np.float32(v) for k, v in final.items()})
        return codes

    @paddle.no_grad()
    def solve_appearance(self, p, image: paddle.Tensor, mask: paddle.Tensor, rounds: int = 3,
                         solve_tex: bool = True, solve_light: bool = True):
        """Albedo code (one, shared by the views) and SH light (per view) for fixed geometry, by
        alternating linear least squares over the face-mask pixels the mesh covers:
        image = (mean + basis @ tex)(uv) * (SH(normal) @ light). image (K, 3, S, S), mask (K, S, S).
        Returns (tex (1, n_tex), light (K, 9, 3)) numpy."""
        from ..render.interpolate import sample_texture
        from ..render.shading import SH_CONSTANTS, _raw_basis

        K = image.shape[0]
        r = self._decode(p, render=False)
        r = self.face.render(r, light=p["light"], albedo=self.face.albedo_map(p["tex"]).expand([K, 3, -1, -1]))
        ms = (mask.unsqueeze(1) * r["alpha_images"]).numpy()[:, 0] > 0.5
        tex = p["tex"].numpy().astype(np.float64)[0]
        light = p["light"].numpy().astype(np.float64).reshape(K, 9, 3)
        A = self.face.albedo
        T, nt = A.uv_size, A.n_tex
        mean_img = sample_texture(A.mean.reshape([1, 3, T, T]).expand([K, 3, T, T]), r["uv_images"]).numpy()
        basis_img = sample_texture(A.basis.reshape([1, nt * 3, T, T]).expand([K, nt * 3, T, T]), r["uv_images"]).numpy()
        Y_img = (_raw_basis(r["normal_images"]) * paddle.to_tensor(SH_CONSTANTS).reshape([1, 9, 1, 1])).numpy()
        img = image.numpy()
        views = []
        for k in range(K):
            m = ms[k]
            if m.sum() < 20:
                continue
            views.append(dict(k=k, mean=mean_img[k][:, m].T.astype(np.float64),
                              basis=basis_img[k][:, m].reshape(nt, 3, -1).transpose(2, 1, 0).astype(np.float64),
                              Y=Y_img[k][:, m].T.astype(np.float64), I=img[k][:, m].T.astype(np.float64)))
        if not views:
            return tex[None].astype(np.float32), light.astype(np.float32)
        P = sum(len(v["I"]) for v in views)
        lam_t = self.w["tex"] * P * 0.5 / max(len(views), 1) + 1e-6
        for _ in range(rounds):
            if solve_light:  # per view and channel: I_c = a_c * (Y @ l_c), a small ridge
                for v in views:
                    a = np.clip(v["mean"] + v["basis"] @ tex, 0.0, 1.0)
                    n = len(v["I"])
                    for ch in range(3):
                        X = v["Y"] * a[:, ch:ch + 1]
                        light[v["k"], :, ch] = np.linalg.solve(X.T @ X + 1e-5 * n * np.eye(9), X.T @ v["I"][:, ch])
            if solve_tex:  # I = (mean + basis @ tex) * shading, every view's pixels together
                XtX, Xty = lam_t * np.eye(nt), np.zeros(nt)
                for v in views:
                    sh = v["Y"] @ light[v["k"]]  # (P, 3)
                    X = (v["basis"] * sh[:, :, None]).reshape(-1, nt)
                    y = (v["I"] - v["mean"] * sh).reshape(-1)
                    XtX += X.T @ X
                    Xty += X.T @ y
                tex = np.linalg.solve(XtX, Xty)
        return tex[None].astype(np.float32), light.astype(np.float32)
