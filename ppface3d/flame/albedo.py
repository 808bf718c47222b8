"""Linear UV albedo model (DECA's FLAMETex): ``albedo = mean + sum_i code_i * basis_i``.

    tex = AlbedoModel(n_tex=50, uv_size=64)                  # generated albedo space
    tex = AlbedoModel(n_tex=50, path="FLAME_albedo_from_BFM.npz")   # DECA's real one
    albedo = tex(code)       # code (B, n_tex) -> (B, 3, uv_size, uv_size) RGB in [0, 1]

The generated space (offline default): a skin-tone mean with darker brows, pinker lips and
dark eyes painted at the UV positions of the FLAME landmarks (so it lines up with the head's
UV layout), and ``n_tex`` smooth basis maps (global tone directions first, then random
low-frequency colour fields), deterministic by ``seed``. Codes ~ N(0, 1) give plausible
variety. Real files: DECA's ``FLAME_albedo_from_BFM.npz`` (keys ``MU``, ``PC``, 512x512,
BGR 0..1) or FLAME's ``FLAME_texture.npz`` (``mean``, ``tex_dir``, BGR 0..255); both
are turned to RGB, as DECA does.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppengine.errors import InputError

# landmark groups (iBUG 68) painted into the generated mean albedo: (indices, RGB, radius scale)
_FEATURES = [
    (list(range(17, 27)), (0.25, 0.17, 0.12), 0.020),   # brows
    (list(range(36, 48)), (0.12, 0.10, 0.10), 0.016),   # eyes
    (list(range(48, 60)), (0.62, 0.30, 0.30), 0.018),   # outer lips
    (list(range(60, 68)), (0.45, 0.15, 0.15), 0.012),   # inner mouth
]


def landmark_uvs(flame) -> Optional[np.ndarray]:
    """(68, 2) UV coordinates of FLAME's static 68-point landmarks, or None if unavailable."""
    try:
        idx = getattr(flame, "lmk_full_idx", None)
        bary = getattr(flame, "lmk_full_bary", None)
        if idx is None:
            idx, bary = flame.lmk_static_idx, flame.lmk_static_bary
            pad = 17
        else:
            pad = 0
        idx = np.asarray(idx.numpy() if hasattr(idx, "numpy") else idx).astype(np.int64)
        bary = np.asarray(bary.numpy() if hasattr(bary, "numpy") else bary).astype(np.float64)
        vt, ft = np.asarray(flame.uv_coords), np.asarray(flame.uv_faces)
        uv = (vt[ft[idx]] * bary[..., None]).sum(1)
        if pad:
            uv = np.concatenate([np.full((pad, 2), np.nan), uv], 0)
        return uv
    except Exception:
        return None


def generate_albedo_space(n_tex: int, uv_size: int, lmk_uv: Optional[np.ndarray] = None, seed: int = 0):
    """A generated albedo space: mean (3, S, S) and basis (n_tex, 3, S, S), float32."""
    rng = np.random.default_rng(seed)
    S = int(uv_size)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64) / max(S - 1, 1)
    skin = np.array([0.78, 0.58, 0.47])
    mean = np.ones((3, S, S)) * skin[:, None, None]
    # gentle shading-free variation so the mean is not flat
    mean *= (1.0 + 0.04 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy))[None]
    if lmk_uv is not None:
        for idxs, color, r in _FEATURES:
            pts = lmk_uv[idxs]
            pts = pts[np.all(np.isfinite(pts), 1)]
            for u, v in pts:
                # UV v points up; image rows go down
                d2 = (xx - u) ** 2 + (yy - (1.0 - v)) ** 2
                w = np.exp(-d2 / (2 * r * r))
                mean = mean * (1 - w[None]) + np.asarray(color)[:, None, None] * w[None]
    basis = np.zeros((n_tex, 3, S, S))
    tones = [np.array([1.0, 0.85, 0.75]), np.array([0.3, 0.05, -0.1]), np.array([-0.05, 0.05, 0.15])]
    for i in range(n_tex):
        if i < len(tones):
            field = np.ones((S, S))
            color = tones[i]
            amp = [0.08, 0.05, 0.03][i]
        else:
            k = rng.integers(1, 5, size=2)
            ph = rng.uniform(0, 2 * np.pi, size=2)
            field = np.cos(np.pi * k[0] * xx + ph[0]) * np.cos(np.pi * k[1] * yy + ph[1])
            color = rng.normal(size=3) * 0.3 + np.array([1.0, 0.8, 0.7])
            amp = 0.02 / np.sqrt(1 + (i - len(tones)) / 10.0)
        basis[i] = amp * color[:, None, None] * field[None]
    return mean.astype(np.float32), basis.astype(np.float32)


def load_albedo_file(path: str, n_tex: int, uv_size: int):
    """Read DECA's BFM albedo (.npz MU/PC) or FLAME texture (.npz mean/tex_dir) -> mean, basis."""
    if not os.path.isfile(path):
        raise InputError(f"albedo model {path!r} not found. Give DECA's FLAME_albedo_from_BFM.npz or "
                         f"FLAME_texture.npz, or leave model.albedo_path empty for the generated space.")
    try:
        d = np.load(path, allow_pickle=False)
        if "MU" in d and "PC" in d:  # DECA's BFM-derived albedo: flat (H*W*3) mean and PCs, BGR 0..1
            mu = np.asarray(d["MU"], np.float64).reshape(-1)
            side = int(round(np.sqrt(mu.size / 3)))
            mean = mu.reshape(side, side, 3)[..., ::-1]
            pc = np.asarray(d["PC"], np.float64).reshape(side, side, 3, -1)[:, :, ::-1, :]
        elif "mean" in d and "tex_dir" in d:  # FLAME texture space, BGR 0..255
            mean = np.asarray(d["mean"], np.float64)[..., ::-1] / 255.0
            pc = np.asarray(d["tex_dir"], np.float64)[:, :, ::-1, :] / 255.0
        else:
            raise InputError(f"{path}: expected keys MU/PC (BFM albedo) or mean/tex_dir (FLAME texture), "
                             f"found {list(d.keys())}")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read albedo model ({type(e).__name__}: {e})") from None
    if pc.shape[-1] < n_tex:
        raise InputError(f"{path}: has {pc.shape[-1]} albedo components, model.n_tex asks for {n_tex}")
    mean_t = paddle.to_tensor(np.ascontiguousarray(mean.transpose(2, 0, 1)[None]), dtype="float32")
    pc_t = paddle.to_tensor(np.ascontiguousarray(pc[..., :n_tex].transpose(3, 2, 0, 1)), dtype="float32")
    mean_t = F.interpolate(mean_t, size=[uv_size, uv_size], mode="bilinear")[0]
    pc_t = F.interpolate(pc_t, size=[uv_size, uv_size], mode="bilinear")
    return mean_t.numpy(), pc_t.numpy()


class AlbedoModel(nn.Layer):
    """Linear albedo space in UV. codes (B, n_tex) -> albedo (B, 3, S, S), clipped to [0, 1].

    Args:
        n_tex: number of components.
        uv_size: texture side S.
        path: real albedo model file (see module doc); None generates one.
        flame: a FLAME layer whose landmark UVs place the generated facial features.
        seed: seed of the generated space.
    """

    def __init__(self, n_tex: int = 50, uv_size: int = 64, path: Optional[str] = None, flame=None, seed: int = 0):
        super().__init__()
        self.n_tex, self.uv_size = int(n_tex), int(uv_size)
        if path:
            mean, basis = load_albedo_file(path, self.n_tex, self.uv_size)
        else:
            lmk_uv = landmark_uvs(flame) if flame is not None else None
            mean, basis = generate_albedo_space(self.n_tex, self.uv_size, lmk_uv, seed)
        self.register_buffer("mean", paddle.to_tensor(mean), persistable=False)
        self.register_buffer("basis", paddle.to_tensor(basis.reshape(self.n_tex, -1)), persistable=False)

    def forward(self, code: paddle.Tensor) -> paddle.Tensor:
        """code (B, <=n_tex) -> (B, 3, S, S)."""
        n = code.shape[1]
        if n > self.n_tex:
            raise InputError(f"AlbedoModel: code has {n} components, the model has {self.n_tex}")
        flat = paddle.matmul(code, self.basis[:n]).reshape([-1, 3, self.uv_size, self.uv_size])
        return paddle.clip(self.mean.unsqueeze(0) + flat, 0.0, 1.0)
