"""The tracker's per-window solve: a window of frames fitted together with one fixed identity,
landmark (68 + mediapipe dense) terms per frame and frame-to-frame smoothness terms, warm-started
from the frames before it; and a one-euro filter for causal (real-time) smoothing.

    solver = WindowSolver(face, shape, settings)       # settings: TrackSettings (configs/track.yml)
    out = solver.solve(targets, times, init, context)  # numpy per-frame codes of the window

Parameters per frame: expression, jaw, global rotation (axis-angle), camera log-scale and shift
(times the clip's reference scale: screen units) in the clip's fixed crop frame, so they are
continuous across frames. Smoothness (Pixel3DMM's
tracker uses first differences; second differences let a smooth motion through unpenalised):
``w1[g] * mean |dx/dt|^2 + w2[g] * mean |d2x/dt2|^2`` for each group g of expression, jaw, rotation,
translation and log-scale, with time in units of the clip's median frame interval (a
variable-frame-rate clip is handled), continued across the window boundary through the last two
solved frames. Frames without a face have no data term: the smoothness fills them in.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import paddle

from ..losses.deca_losses import EYE_DOWN, EYE_UP, LIP_DOWN, LIP_UP, _pair_dist, code_l2, landmark_loss  # noqa: I001
from .fit import _cosine, dense_landmark_loss

GROUPS = ("exp", "jaw", "rot", "trans", "scale")


def _closure(lm, target, found, up, down):
    """Eye / lip closure term over the frames with a face: (B, 68, 2) predictions and targets."""
    d = (_pair_dist(lm, up, down) - _pair_dist(target[..., :2], up, down)).abs().mean(-1)
    return (d * found).sum() / (found.sum() + 1e-8)


def _smooth(x, t, w1, w2):
    """First- and second-difference penalties of a sequence x (T, D) at times t (T,) (frame units)."""
    loss = 0.0
    if x.shape[0] < 2:
        return loss
    h = (t[1:] - t[:-1]).clip(min=1e-3).unsqueeze(-1)
    v = (x[1:] - x[:-1]) / h
    if w1:
        loss = loss + w1 * (v ** 2).sum(-1).mean()
    if w2 and x.shape[0] >= 3:
        a = (v[1:] - v[:-1]) / (0.5 * (h[1:] + h[:-1]))
        loss = loss + w2 * (a ** 2).sum(-1).mean()
    return loss


class WindowSolver:
    """Fits windows of frames of one tracked face (see the module docstring).

    Args:
        face: the :class:`~ppface3d.face_model.FaceModel` (its FLAME carries the dense points).
        shape: (1, n_shape) the clip's identity, held fixed.
        settings: :class:`~ppface3d.apps.track.TrackSettings`.
        dense_weight: (468,) per-point weights of the dense term (the embedding's).
        s0: reference camera scale of the clip frame (the log-scale is relative to it).
    """

    def __init__(self, face, shape: np.ndarray, settings, dense_weight: Optional[np.ndarray], s0: float):
        self.face = face
        self.shape = paddle.to_tensor(np.asarray(shape, np.float32).reshape(1, -1))
        self.s = settings
        self.dense_w = None if dense_weight is None else paddle.to_tensor(np.asarray(dense_weight, np.float32))
        self.s0 = float(s0)

    # ------------------------------------------------------------------ parametrisation
    def to_params(self, codes: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        cam = np.asarray(codes["cam"], np.float32).reshape(-1, 3)
        return {"exp": np.asarray(codes["exp"], np.float32), "jaw": np.asarray(codes["pose"], np.float32)[:, 3:],
                "rot": np.asarray(codes["pose"], np.float32)[:, :3],
                "trans": cam[:, 1:] * self.s0, "scale": np.log(cam[:, :1] / self.s0)}

    def to_codes(self, p) -> Dict[str, paddle.Tensor]:
        # the shift is fitted in screen units (shift * s0: about NDC), well scaled for Adam
        cam = paddle.concat([self.s0 * paddle.exp(p["scale"]), p["trans"] / self.s0], 1)
        return {"shape": self.shape, "exp": p["exp"], "pose": paddle.concat([p["rot"], p["jaw"]], 1), "cam": cam}

    # ------------------------------------------------------------------ solve
    def solve(self, t68: np.ndarray, dense: Optional[np.ndarray], found: np.ndarray, times: np.ndarray,
              init: Dict[str, np.ndarray], context: Optional[Dict[str, np.ndarray]] = None,
              context_times: Optional[np.ndarray] = None, smooth: bool = True) -> Dict[str, np.ndarray]:
        """Fit one window.

        Args:
            t68: (B, 68, 2) targets in the clip frame's screen NDC; dense: (B, 468, 2) or None.
            found: (B,) 1 where the frame has a face.
            times: (B,) frame times in frame units; init: codes (B, ...) to start from.
            context: codes of the (up to 2) frames before the window (held fixed), and their times.
            smooth: False fits every frame on its own (no smoothness terms).
        Returns codes (B, ...) numpy: exp, pose, cam (and the fixed shape, broadcast).
        """
        s = self.s
        B = len(found)
        fnd = paddle.to_tensor(np.asarray(found, np.float32))
        tgt = paddle.to_tensor(np.concatenate([np.asarray(t68, np.float32), np.asarray(found, np.float32)[:, None, None]
                                               * np.ones((B, 68, 1), np.float32)], -1))
        dn = dw = None
        if dense is not None and self.dense_w is not None and s.w_dense > 0:
            dn = paddle.to_tensor(np.asarray(dense, np.float32))
            dw = self.dense_w.unsqueeze(0) * fnd.unsqueeze(1)
        p = {k: paddle.create_parameter(list(v.shape), "float32", default_initializer=paddle.nn.initializer.Assign(v))
             for k, v in self.to_params(init).items()}
        ctx = None
        if smooth and context is not None:
            ctx = {k: paddle.to_tensor(v) for k, v in self.to_params(context).items()}
            t_all = paddle.to_tensor(np.concatenate([context_times, times]).astype(np.float32))
        else:
            t_all = paddle.to_tensor(np.asarray(times, np.float32))
        w1 = {g: float(s.smooth1.get(g, 0.0)) for g in GROUPS}
        w2 = {g: float(s.smooth2.get(g, 0.0)) for g in GROUPS}

        def loss_fn(with_smooth):
            codes = self.to_codes(p)
            fo = self.face.flame_forward(codes, landmarks_only=True)
            cam = self.face.camera(codes["cam"])
            lm = cam.project(fo.landmarks)
            loss = landmark_loss(lm, tgt) + _closure(lm, tgt, fnd, EYE_UP, EYE_DOWN) \
                + 0.5 * _closure(lm, tgt, fnd, LIP_UP, LIP_DOWN)
            if dn is not None:
                loss = loss + s.w_dense * dense_landmark_loss(cam.project(fo.landmarks_dense), dn, dw)
            jaw = p["jaw"]
            loss = loss + (s.w_exp * code_l2(p["exp"]) + 10.0 * code_l2(jaw[:, 1:])
                           + 100.0 * code_l2(paddle.nn.functional.relu(-jaw[:, :1]))) / B
            if with_smooth:
                for g in GROUPS:
                    if not (w1[g] or w2[g]):
                        continue
                    x = p[g] if ctx is None else paddle.concat([ctx[g], p[g]], 0)
                    loss = loss + _smooth(x, t_all, w1[g], w2[g])
            return loss

        def run(names, n, lr, with_smooth):
            if not n:
                return
            opt = paddle.optimizer.Adam(lr, parameters=[p[k] for k in names])
            for it in range(n):
                opt.set_lr(_cosine(it, n, lr))
                loss = loss_fn(with_smooth)
                loss.backward()
                opt.step()
                opt.clear_grad()

        every = ["scale", "trans", "rot", "jaw", "exp"]
        run(["scale", "trans", "rot"], s.rigid_iters, s.rigid_lr, False)  # each frame's head placed
        run(every, s.iters, s.lr, False)                                  # each frame fitted on its own
        ok = np.asarray(found) > 0
        if ok.any() and not ok.all():  # frames without a face start between their neighbours
            with paddle.no_grad():
                filled = fill_gaps({k: v.numpy() for k, v in p.items()}, ok, np.asarray(times, np.float64))
                for k, v in filled.items():
                    p[k].set_value(paddle.to_tensor(v))
        if smooth:                                                         # then the window together
            run(every, s.smooth_iters, s.smooth_lr, True)
        with paddle.no_grad():
            c = self.to_codes(p)
        return {"exp": c["exp"].numpy(), "pose": c["pose"].numpy(), "cam": c["cam"].numpy()}


    def track(self, t68: np.ndarray, dense: Optional[np.ndarray], found: np.ndarray, times: np.ndarray,
              init: Dict[str, np.ndarray], window: int, smooth: bool = True, load=None, save=None,
              progress=None) -> Dict[str, np.ndarray]:
        """Solve a whole sequence window by window: each window warm-started from the last frame
        with a face before it, continued from the two frames before it when those had a face
        (after a gap the re-found face is fitted afresh), then every run of frames without a
        face interpolated between the frames around it (held at the ends).

        Args: as :meth:`solve` for the whole sequence (T, ...); init (1, ...) codes of the start;
            load(a) / save(a, codes): per-window state (resuming); progress(done).
        Returns codes (T, ...): exp, pose, cam.
        """
        n = len(found)
        found = np.asarray(found, bool)
        out = {k: np.zeros((n,) + np.shape(init[k])[1:], np.float32) for k in ("exp", "pose", "cam")}
        last = {k: np.asarray(init[k], np.float32)[-1:] for k in out}
        for a in range(0, n, window):
            b = min(a + window, n)
            res = load(a) if load is not None else None
            if res is None:
                c0 = max(0, a - 2)
                ctx = {k: out[k][c0:a] for k in out} if a > 0 and found[c0:a].all() else None
                res = self.solve(t68[a:b], None if dense is None else dense[a:b], found[a:b].astype(np.float32),
                                 times[a:b], {k: np.repeat(v, b - a, 0) for k, v in last.items()}, ctx,
                                 times[c0:a] if ctx is not None else None, smooth=smooth)
                if save is not None:
                    save(a, res)
            for k in out:
                out[k][a:b] = res[k]
            fnd = np.nonzero(found[a:b])[0]
            if len(fnd):
                last = {k: out[k][a + fnd[-1]][None] for k in out}
            if progress is not None:
                progress(b)
        return fill_gaps(out, found, times)


def fill_gaps(codes: Dict[str, np.ndarray], found: np.ndarray, times: np.ndarray) -> Dict[str, np.ndarray]:
    """Codes of frames without a face: linear in time between the frames with a face around them,
    held before the first and after the last."""
    idx = np.nonzero(found)[0]
    if len(idx) == 0 or len(idx) == len(found):
        return codes
    out = {}
    for k, v in codes.items():
        flat = v.reshape(len(v), -1)
        filled = np.stack([np.interp(times, times[idx], flat[idx, j]) for j in range(flat.shape[1])], 1)
        out[k] = np.where(np.asarray(found)[:, None], flat, filled).reshape(v.shape).astype(np.float32)
    return out


class OneEuroFilter:
    """The one-euro filter (Casiez et al., CHI 2012) on vectors, for causal smoothing of
    per-frame parameters: a low-pass whose cut-off rises with the signal's speed.

    Args:
        min_cutoff: cut-off (Hz) at rest (lower: smoother, more lag when slow).
        beta: speed coefficient (higher: less lag when fast).
        d_cutoff: cut-off (Hz) of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.x = self.dx = self.t = None

    @staticmethod
    def _alpha(cutoff, dt):
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / max(dt, 1e-6))

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None:
            self.x, self.dx, self.t = x, np.zeros_like(x), t
            return x
        dt = t - self.t
        dx = (x - self.x) / max(dt, 1e-6)
        self.dx = self.dx + self._alpha(self.d_cutoff, dt) * (dx - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        self.x = self.x + self._alpha(cutoff, dt) * (x - self.x)
        self.t = t
        return self.x


def one_euro(seq: np.ndarray, times: np.ndarray, **kw) -> np.ndarray:
    """Filter a sequence (T, D) at times (T,) in seconds with :class:`OneEuroFilter`."""
    f = OneEuroFilter(**kw)
    return np.stack([f(x, t) for x, t in zip(seq, times)]).astype(np.float32)
