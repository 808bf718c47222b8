"""Procedural, expression-driven wrinkles: a detail ground truth for synthetic faces.

    wr = Wrinkles(face)                                     # a FaceModel; maps at 256 x 256
    wr.calibrate(exp_samples)                               # what a "strong" expression is
    params = wr.subject_params(rng)                         # per subject: age, resting folds, bumps
    act = wr.activations(shape, exp, jaw)                   # (N, 6) per expression, in [0, 1.5]
    disp = wr.displacement(act, [params] * N)               # (N, S, S) metres along the normal

The displacement lives in the model's UV layout (as DECA's detail map) and is a sum of fixed
patterns placed from the landmarks' UV positions (:func:`~ppface3d.flame.uv_regions.landmark_uv`),
each weighted by an expression activation and by the subject:

* forehead lines (4 arched grooves above the brows), deepened by raised brows;
* nasolabial folds (nose wing to beyond the mouth corner), deepened by a smile on that side;
* crow's feet (3 short rays from each outer eye corner), deepened by a smile or a squint;
* per-subject bumps: a combination of ``n_bumps`` fixed smooth random fields.

Activations are read from the expression's geometry, not from coefficient indices, so they work
for any FLAME model: the 68 landmarks of the head with the expression and jaw (no head pose)
against the same head's neutral ones, in units of the eye-corner distance: brow height above the
eye (per side), mouth-corner width and lift (per side), eye opening (per side, closing = squint).
:meth:`calibrate` maps each feature to [0, 1] between the median (at least the neutral face's
value) and the 97th percentile of a sample of expressions, so about half the faces show a fold of each kind and a strong expression
shows it fully (up to 1.5 for the strongest). The subject scales everything by an age factor,
adds resting forehead lines and folds, and its bumps; all of it is drawn per subject.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import paddle

from ppengine.errors import ConfigError

from ..flame.uv_regions import landmark_uv, uv_to_texel

PATTERNS = ("forehead_a", "forehead_b", "nasolabial_a", "nasolabial_b", "crows_a", "crows_b")
# landmark sides: "a" = iBUG points 17-21 / 31 / 36 / 48, "b" = 22-26 / 35 / 45 / 54
_SIDES = dict(a=dict(brow=list(range(17, 22)), wing=31, corner=48, eye_out=36, eye=[36, 37, 38, 39, 40, 41],
                     lid=[(37, 41), (38, 40)]),
              b=dict(brow=list(range(22, 27)), wing=35, corner=54, eye_out=45, eye=[42, 43, 44, 45, 46, 47],
                     lid=[(43, 47), (44, 46)]))


def _segment_distance(C, R, p0, p1):
    """Distance of texel centres (C, R) to the segment p0-p1 and the position along it in [0, 1]."""
    d = np.asarray(p1, np.float64) - p0
    t = np.clip(((C - p0[0]) * d[0] + (R - p0[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return np.hypot(C - (p0[0] + t * d[0]), R - (p0[1] + t * d[1])), t


class Wrinkles:
    """Detail displacement maps of a :class:`~ppface3d.face_model.FaceModel`'s UV layout.

    Args:
        face: the face model (its FLAME layout, landmark embedding and UV face mask).
        size: map side S (DECA: 256).
        depth: groove depth in metres at activation 1 and age 1.
        width: groove width (Gaussian sigma) in texels of a 256 map (scaled with ``size``).
        bumps: standard deviation of the per-subject bump field in metres (0 = none).
        n_bumps: number of fixed random fields the bumps combine.
        seed: seed of the bump fields (part of the model, not of a subject).
    """

    def __init__(self, face, size: int = 256, depth: float = 0.0035, width: float = 3.5, bumps: float = 0.0001,
                 n_bumps: int = 8, seed: int = 0):
        if int(size) < 64 or depth < 0 or width <= 0 or bumps < 0:
            raise ConfigError(f"wrinkles: size >= 64, depth >= 0, width > 0, bumps >= 0; got size={size}, "
                              f"depth={depth}, width={width}, bumps={bumps}")
        self.face, self.size = face, int(size)
        self.depth, self.bump_std, self.n_bumps = float(depth), float(bumps), int(n_bumps)
        S = self.size
        k = S / 256.0
        self.sigma = float(width) * k
        from scipy.ndimage import gaussian_filter

        self.mask = gaussian_filter(face.uv_face_mask(S), 1.5 * k).astype(np.float32)  # soft edge: no step
        lm = uv_to_texel(landmark_uv(face.flame), S)  # (68, 2) col, row
        C, R = np.meshgrid(np.arange(S, dtype=np.float64), np.arange(S, dtype=np.float64))
        self.patterns = np.stack([self._forehead(lm, C, R, s) for s in "ab"]
                                 + [self._nasolabial(lm, C, R, s) for s in "ab"]
                                 + [self._crows_feet(lm, C, R, s) for s in "ab"]).astype(np.float32) * self.mask
        rng = np.random.default_rng([int(seed), 20250101])
        fields = gaussian_filter(rng.standard_normal((self.n_bumps, S, S)), (0, 4.0 * k, 4.0 * k))
        inside = self.mask > 0.5
        fields /= fields[:, inside].std(1)[:, None, None] + 1e-12
        self.bump_fields = (fields * self.mask).astype(np.float32)
        self.calibration = None  # (2, 6) low / high feature values (see calibrate)

    # ------------------------------------------------------------------ fixed patterns (grooves = +1)
    def _groove(self, d):
        return np.exp(-0.5 * (d / self.sigma) ** 2)

    def _forehead(self, lm, C, R, side):
        brow = lm[_SIDES[side]["brow"]]
        eye = lm[_SIDES[side]["eye"]].mean(0)
        h = max(eye[1] - brow[:, 1].mean(), 1.0)  # brow-to-eye distance (texels)
        mid = lm[[21, 22]].mean(0)  # between the inner brow ends
        top = brow[:, 1].min()
        half = np.abs(lm[17, 0] - lm[26, 0]) / 2
        out = np.zeros_like(C)
        for k in range(4):  # arched lines, the upper ones fainter
            row = top - h * (0.55 + 0.45 * k) + 0.9 * h * ((C - mid[0]) / half) ** 2
            out += (1.0 - 0.15 * k) * self._groove(R - row)
        # this side of the midline (smooth hand-over), fading out beyond the brow's outer end
        sgn = np.sign(brow[:, 0].mean() - mid[0])
        hand = 1.0 / (1.0 + np.exp(-sgn * (C - mid[0]) / (0.1 * half)))
        fade = np.exp(-0.5 * np.clip(np.abs(C - mid[0]) - 0.9 * half, 0, None) ** 2 / (0.12 * half) ** 2)
        return out * hand * fade

    def _nasolabial(self, lm, C, R, side):
        s = _SIDES[side]
        wing, corner, mid = lm[s["wing"]], lm[s["corner"]], lm[[31, 35]].mean(0)
        out_dir = np.array([np.sign(wing[0] - mid[0]), 0.0])
        iod = np.abs(lm[36, 0] - lm[45, 0])
        p0 = wing + out_dir * 0.08 * iod - [0, 0.10 * iod]
        p2 = corner + out_dir * 0.12 * iod + [0, 0.30 * iod]
        p1 = (p0 + p2) / 2 + out_dir * 0.14 * iod
        ts = np.linspace(0, 1, 24)
        curve = ((1 - ts) ** 2)[:, None] * p0 + (2 * (1 - ts) * ts)[:, None] * p1 + (ts ** 2)[:, None] * p2
        best, along = np.full_like(C, np.inf), np.zeros_like(C)
        for i in range(len(curve) - 1):
            d, t = _segment_distance(C, R, curve[i], curve[i + 1])
            closer = d < best
            best = np.where(closer, d, best)
            along = np.where(closer, (i + t) / (len(curve) - 1), along)
        return self._groove(best) * np.sin(np.pi * np.clip(along, 0, 1)) ** 0.5 * 1.2

    def _crows_feet(self, lm, C, R, side):
        s = _SIDES[side]
        corner = lm[s["eye_out"]]
        iod = np.abs(lm[36, 0] - lm[45, 0])
        out = np.sign(corner[0] - lm[27:31, 0].mean())
        origin = corner + [out * 0.07 * iod, 0.0]
        total = np.zeros_like(C)
        for ang in (-35.0, -5.0, 25.0):
            a = np.radians(ang)
            end = origin + 0.32 * iod * np.array([out * np.cos(a), np.sin(a)])
            d, t = _segment_distance(C, R, origin, end)
            total = np.maximum(total, np.exp(-0.5 * (d / (0.75 * self.sigma)) ** 2) * (1.0 - t) ** 0.7)
        return total

    # ------------------------------------------------------------------ expression activations
    @paddle.no_grad()
    def features(self, shape: np.ndarray, exp: np.ndarray, jaw: np.ndarray) -> np.ndarray:
        """(N, 6) expression features: per side (a, b) brow lift, smile, squint, in eye-corner
        distances relative to the neutral head of the same shape. shape (N, n_shape), exp
        (N, n_exp), jaw (N, 3) axis-angle."""
        t = lambda x: paddle.to_tensor(np.asarray(x, np.float32))  # noqa: E731
        flame = self.face.flame
        lm = self.face.landmarks68(flame(shape=t(shape), expression=t(exp), jaw_pose=t(jaw),
                                         landmarks_only=True)).numpy().astype(np.float64)
        ln = self.face.landmarks68(flame(shape=t(shape), landmarks_only=True)).numpy().astype(np.float64)

        def per_side(L):
            iod = np.linalg.norm(L[:, 36] - L[:, 45], axis=-1)
            out = []
            for s in "ab":
                d = _SIDES[s]
                brow = L[:, d["brow"], 1].mean(1) - L[:, d["eye"], 1].mean(1)
                lip_mid = L[:, [51, 57, 62, 66], 1].mean(1)
                smile = np.abs(L[:, d["corner"], 0] - L[:, [51, 57], 0].mean(1)) + (L[:, d["corner"], 1] - lip_mid)
                opening = np.mean([np.abs(L[:, u, 1] - L[:, w, 1]) for u, w in d["lid"]], 0)
                out.append(np.stack([brow, smile, -opening], 1) / iod[:, None])
            return np.concatenate(out, 1)[:, [0, 3, 1, 4, 2, 5]]  # forehead a b, smile a b, squint a b

        return (per_side(lm) - per_side(ln)).astype(np.float32)

    def calibrate(self, shape: np.ndarray, exp: np.ndarray, jaw: np.ndarray) -> None:
        """Set the activation scale from a sample of expressions (N >= 32): a feature at the
        sample's median (or at the neutral face's 0, if higher) is 0, at its 97th percentile 1."""
        f = self.features(shape, exp, jaw)
        if len(f) < 32:
            raise ConfigError(f"wrinkles: calibration needs at least 32 expressions, got {len(f)}")
        lo = np.maximum(np.percentile(f, 50, axis=0), 0.0)  # the neutral face (features 0) never wrinkles
        hi = np.percentile(f, 97, axis=0)
        self.calibration = np.stack([lo, np.maximum(hi, lo + 1e-6)]).astype(np.float32)

    def activations(self, shape, exp, jaw) -> np.ndarray:
        """(N, 6) activations in [0, 1.5] of patterns :data:`PATTERNS` (forehead, nasolabial and
        crow's feet, sides a and b); crow's feet follow the stronger of the smile and the squint."""
        if self.calibration is None:
            raise ConfigError("wrinkles: call calibrate(...) with a sample of expressions first")
        f = self.features(shape, exp, jaw)
        lo, hi = self.calibration
        a = np.clip((f - lo) / (hi - lo), 0.0, 1.5)
        crows = np.maximum(a[:, 2:4], a[:, 4:6])
        return np.concatenate([a[:, 0:4], crows], 1).astype(np.float32)

    # ------------------------------------------------------------------ subjects and maps
    def subject_params(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        """Per-subject detail: ``age`` (scales every groove), ``rest`` (6,) resting depth of each
        pattern (forehead lines and folds show a little without an expression), ``bumps``
        (n_bumps,) coefficients of the bump fields."""
        age = rng.uniform(0.6, 1.4)
        rest = np.repeat(rng.uniform(0.0, 0.4, 3), 2) * rng.uniform(0.8, 1.2, 6)
        bumps = rng.standard_normal(self.n_bumps) * rng.uniform(0.4, 1.0) / np.sqrt(self.n_bumps)
        return {"age": np.float32(age), "rest": rest.astype(np.float32), "bumps": bumps.astype(np.float32)}

    def displacement(self, act: np.ndarray, params: List[Dict[str, np.ndarray]]) -> np.ndarray:
        """(N, S, S) float32 displacement in metres along the surface normal (grooves negative)
        for activations ``act`` (N, 6) and one parameter dict per map."""
        act = np.asarray(act, np.float32)
        if act.ndim != 2 or act.shape[1] != len(PATTERNS) or len(params) != len(act):
            raise ConfigError(f"wrinkles: activations must be (N, {len(PATTERNS)}) with N parameter sets; got "
                              f"{act.shape} and {len(params)}")
        w = np.stack([(p["rest"] + a) * p["age"] for a, p in zip(act, params)]) * self.depth  # (N, 6)
        b = np.stack([p["bumps"] for p in params]) * self.bump_std  # (N, n_bumps)
        P, F = self.patterns.reshape(len(PATTERNS), -1), self.bump_fields.reshape(self.n_bumps, -1)
        S = self.size
        return (b @ F - w @ P).reshape(-1, S, S).astype(np.float32)


class SyntheticDetail:
    """The wrinkle ground truth of a :class:`~ppface3d.data.synthetic.SyntheticFaces` set.

    The :class:`Wrinkles` are calibrated on a fixed sample of the set's own expression
    distribution (the same for every split); each subject's detail parameters come from a random
    stream of their own, so the set's other ground truth is what it is without wrinkles.
    """

    def __init__(self, dataset, **wrinkle_args):
        import zlib

        self.data = dataset
        self.wrinkles = wr = Wrinkles(dataset.face, **wrinkle_args)
        K = dataset.K
        cs = [dataset.sample_codes(j, np.random.default_rng([dataset.seed, 99, j, zlib.crc32(b"wrinkles")]))
              for j in range(max(1, 256 // K))]
        wr.calibrate(np.repeat(np.stack([c["shape"] for c in cs]), K, 0), np.concatenate([c["exp"] for c in cs]),
                     np.concatenate([c["pose"][:, 3:] for c in cs]))
        self._tag, self._split = zlib.crc32(b"SyntheticFaces.detail"), zlib.crc32(dataset.split.encode())

    def subject_params(self, i: int) -> Dict[str, np.ndarray]:
        """Subject ``i``'s detail parameters (age, resting folds, bumps)."""
        d = self.data
        return self.wrinkles.subject_params(np.random.default_rng([d.seed, self._split, int(i), self._tag]))

    def displacements(self, indices, cs) -> np.ndarray:
        """(len(indices) * K, S, S) displacement maps of subjects ``indices`` with codes ``cs``
        (from ``sample_codes``), K images each in order."""
        K = self.data.K
        shape = np.repeat(np.stack([c["shape"] for c in cs]), K, 0)
        act = self.wrinkles.activations(shape, np.concatenate([c["exp"] for c in cs]),
                                        np.concatenate([c["pose"][:, 3:] for c in cs]))
        return self.wrinkles.displacement(act, [p for i in indices for p in [self.subject_params(i)] * K])

    def normal_maps(self, displacements: np.ndarray, vertices: paddle.Tensor) -> paddle.Tensor:
        """(N, 4, S, S) weighted detail normal maps (for ``render(normal_map=...)``) of
        ``displacements`` (N, S, S) on the posed ``vertices`` (N, V, 3)."""
        disp = paddle.to_tensor(np.asarray(displacements, np.float32)[:, None])
        return self.data.face.detail_normal_map(disp, vertices, self.wrinkles.mask > 0.5, weighted=True)

    @staticmethod
    def region(r: Dict[str, paddle.Tensor], normal_map: paddle.Tensor) -> np.ndarray:
        """(N, H, W) uint8: pixels of the rendered head (renderer outputs ``r``) inside the detail
        map's face region."""
        from ..render.interpolate import sample_texture

        w = sample_texture(normal_map[:, 3:], r["uv_images"])[:, 0] * r["alpha_images"][:, 0]
        return (w.numpy() > 0.5).astype(np.uint8)
