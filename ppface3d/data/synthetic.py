"""SyntheticFaces: faces rendered by the project's renderer from random FLAME parameters.

    data:
      train: {type: SyntheticFaces, split: train, num_subjects: 2000, K: 4, image_size: 112}
      test:  {type: SyntheticFaces, split: test, num_subjects: 64, K: 1, image_size: 112}

Each subject has a FLAME shape and an albedo (from the generated UV albedo space); each of its
K images has its own expression, jaw and head pose, SH lighting, background (solid, gradient,
smooth noise or a crop of a scikit-image photo) and camera framing (DECA's crop, jittered).
Everything is deterministic by (seed, split, index): the held-out test split is the same set
of faces on every machine. Ground truth comes with each sample.

Sample (K leading axis):
    image (K, 3, S, S) float32 [0, 1]; landmark (K, 68, 3) screen NDC [-1, 1] + confidence 1;
    mask (K, S, S) rendered head silhouette; shape (n_shape,), tex (n_tex,) per subject;
    exp (K, n_exp), pose (K, 6) [global, jaw axis-angle], cam (K, 3), light (K, 9, 3);
    vertices (K, V, 3) posed world vertices; gt_verts_neutral (K, V, 3) and
    gt_lmk3d_neutral (K, 68, 3) (zero expression and pose: the 'scan' for NoW-style metrics);
    subject (int64).
"""
from __future__ import annotations

import zlib
from typing import Dict, Optional

import numpy as np
import paddle

from ppengine.errors import ConfigError
from ppengine.registry import DATASETS

_SPLITS = {"train": 0, "val": 1, "test": 2}
_DEFAULT_SUBJECTS = {"train": 2000, "val": 32, "test": 64}
# SH basis 1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1 (DECA's order): the x-odd ones flip in a mirror
_SH_MIRROR = np.array([1, -1, 1, 1, -1, -1, 1, 1, 1], np.float32)
_PHOTOS = ("coffee", "chelsea", "rocket", "brick", "grass", "gravel", "coins", "moon", "page", "text", "camera")


def _photo_pool():
    """Background photos shipped inside scikit-image (no download); those that fail are skipped."""
    import warnings

    import skimage.data as skd

    pool = []
    for name in _PHOTOS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = getattr(skd, name)()
            img = np.asarray(img)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, 2)
            pool.append(img[..., :3].astype(np.float32) / 255.0)
        except Exception:
            continue
    return pool


def make_background(rng: np.random.Generator, S: int, photos=None) -> np.ndarray:
    """(3, S, S) float32 background: solid, gradient, smooth noise or a photo crop."""
    kind = rng.integers(0, 4 if photos else 3)
    if kind == 0:
        bg = np.ones((3, S, S)) * rng.uniform(0.05, 0.95, size=(3, 1, 1))
    elif kind == 1:
        t = np.linspace(0, 1, S)
        ang = rng.uniform(0, 2 * np.pi)
        g = np.cos(ang) * t[None, :] + np.sin(ang) * t[:, None]
        g = (g - g.min()) / max(np.ptp(g), 1e-6)
        a, b = rng.uniform(0, 1, (3, 1, 1)), rng.uniform(0, 1, (3, 1, 1))
        bg = a + (b - a) * g[None]
    elif kind == 2:
        n = max(2, S // 16)
        coarse = rng.uniform(0, 1, (3, n, n)).astype(np.float32)
        bg = paddle.nn.functional.interpolate(paddle.to_tensor(coarse[None]), size=[S, S], mode="bilinear",
                                              align_corners=True)[0].numpy()
    else:
        img = photos[rng.integers(0, len(photos))]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[y:y + side, x:x + side].transpose(2, 0, 1).copy()
        bg = paddle.nn.functional.interpolate(paddle.to_tensor(crop[None]), size=[S, S], mode="bilinear")[0].numpy()
    return np.clip(bg, 0, 1).astype(np.float32)


def random_sh(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 9, 3) SH lights: near-white ambient plus a random directional component."""
    from ..render.shading import SH_CONSTANTS

    sh = np.zeros((n, 9, 3), np.float32)
    amb = rng.uniform(0.55, 0.9, size=(n, 1)) / SH_CONSTANTS[0]
    tint = 1.0 + rng.normal(scale=0.05, size=(n, 3))
    sh[:, 0] = amb * tint
    d = rng.normal(size=(n, 3))
    d[:, 2] = np.abs(d[:, 2]) + 0.5  # light mostly from the camera side
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    strength = rng.uniform(0.2, 0.5, size=(n, 1)) / SH_CONSTANTS[1]
    # DECA's basis order: 1, x, y, z, ...
    sh[:, 1:4] = (d * strength)[:, :, None] * tint[:, None, :]
    sh[:, 4:] = rng.normal(scale=0.05, size=(n, 5, 1)) / SH_CONSTANTS[4]
    return sh


@DATASETS.register()
class SyntheticFaces(paddle.io.Dataset):
    """Rendered FLAME faces with full ground truth (see the module docstring).

    Args:
        split: 'train', 'val' or 'test' (disjoint random streams).
        num_subjects: dataset length (default 2000 / 32 / 64).
        K: images per subject (DECA trains with K=4; evaluation uses 1).
        image_size: S.
        n_shape, n_exp, n_tex: sizes of the random codes (match the model).
        shape_std, exp_std, tex_std: standard deviations of shape / expression / albedo codes.
        shape_components: if set, only the first this many shape coefficients vary (the rest
            are 0); the coefficients that do vary are the same numbers as with None (the random
            stream is unchanged). None = all ``n_shape``.
        max_yaw, max_pitch, max_roll: head-pose ranges in degrees (uniform); max_jaw: jaw
            opening in radians (uniform in [0, max_jaw]).
        scale_jitter, trans_jitter: relative camera scale and NDC translation jitter.
        flame_model_path, flame_landmark_path, albedo_path, uv_size, albedo_seed: the face
            model (same meaning as in the DECA model; defaults are the generated ones).
        seed: base seed.
        cache: keep generated samples in memory (images as uint8, vertices as float16).
        return_vertices: include the posed vertices (K, V, 3) (off saves memory in training).
        augment: training augmentation drawn anew at every access (the rendered sample and its
            labels stay as they are): with probability 0.5 the background outside the head mask
            is replaced by another generated one (from a pool of 256), then per-channel gain,
            brightness, contrast and pixel noise. It keeps a network from memorising the cached
            images (measured in docs/deca.md). Draws from NumPy's global generator, which the
            engine reseeds every step, so a resumed run sees the same augmentations.
        flip: training augmentation: with probability 0.5 a sample (all K images) is mirrored
            left-right with its labels: landmarks mirrored and re-paired (iBUG-68 order), shape and
            expression codes through the model's mirror symmetry (:func:`~ppface3d.flame.mirror.mirror_maps`),
            pose, camera and light mirrored, neutral meshes mirrored. A coefficient with no mirror
            counterpart (sign 0) is masked out of the supervised losses (``shape_mask`` /
            ``exp_mask``, ones when not mirrored), and a landmark whose mirror image is not its
            partner on the model (more than 1 mm off at the mean face) gets confidence 0.
        geometry: also return ``geometry`` (K, 5, S/8, S/8): per 8x8-pixel cell the rendered
            face's mean normal (x, y, z), mean depth relative to the face's mean depth (screen
            NDC), and the fraction of the cell the face covers: the target of DECA's auxiliary
            ``loss.geometry`` term. Needs S divisible by 8.
        render_batch: subjects rendered together when the read order is known (:meth:`prepare`).
        wrinkles: detail ground truth (``{}`` for the defaults, None = off): procedural,
            expression-driven wrinkle displacement maps (:class:`~ppface3d.data.wrinkles.Wrinkles`;
            the dict's keys are its arguments: size, depth, width, bumps, n_bumps) rendered into
            the images through the detail normals, returned as ``displacement`` (K, T, T). The
            subject's detail parameters are drawn from their own random stream, so every other
            ground truth is unchanged.
        detail_gt: with ``wrinkles``, also return ``normal_gt`` (K, 3, S, S) the rendered
            (detailed) world normals and ``detail_region`` (K, S, S) the face region they cover
            (the UV face mask seen in the image): the detail metric's ground truth.
    """

    def __init__(self, split: str = "train", num_subjects: Optional[int] = None, K: int = 1,
                 image_size: int = 224, n_shape: int = 100, n_exp: int = 50, n_tex: int = 50,
                 shape_std: float = 1.0, exp_std: float = 1.0, tex_std: float = 1.0,
                 shape_components: Optional[int] = None,
                 max_yaw: float = 30.0, max_pitch: float = 15.0, max_roll: float = 8.0, max_jaw: float = 0.3,
                 scale_jitter: float = 0.08, trans_jitter: float = 0.05,
                 flame_model_path: Optional[str] = None, flame_landmark_path: Optional[str] = None,
                 albedo_path: Optional[str] = None, uv_size: int = 64, albedo_seed: int = 0,
                 seed: int = 0, cache: bool = True, return_vertices: bool = True, render_backend: str = "auto",
                 augment: bool = False, flip: bool = False, geometry: bool = False, render_batch: int = 32,
                 wrinkles: Optional[dict] = None, detail_gt: bool = False):
        super().__init__()
        if split not in _SPLITS:
            raise ConfigError(f"SyntheticFaces split={split!r}: use one of {list(_SPLITS)}")
        self.split, self.K, self.S = split, int(K), int(image_size)
        self.num_subjects = int(num_subjects if num_subjects is not None else _DEFAULT_SUBJECTS[split])
        self.n_shape, self.n_exp, self.n_tex = int(n_shape), int(n_exp), int(n_tex)
        self.std = dict(shape=shape_std, exp=exp_std, tex=tex_std)
        self.shape_components = None if shape_components is None else int(shape_components)
        self.ranges = dict(yaw=max_yaw, pitch=max_pitch, roll=max_roll, jaw=max_jaw)
        self.scale_jitter, self.trans_jitter = float(scale_jitter), float(trans_jitter)
        self.model_args = dict(flame_model_path=flame_model_path, flame_landmark_path=flame_landmark_path,
                               albedo_path=albedo_path, uv_size=uv_size, albedo_seed=albedo_seed,
                               render_backend=render_backend)
        self.seed = int(seed)
        self.cache = bool(cache)
        self.return_vertices = bool(return_vertices)
        self.augment = bool(augment)
        self.flip = bool(flip)
        self.geometry = bool(geometry)
        if self.geometry and self.S % 8:
            raise ConfigError(f"SyntheticFaces(geometry=True) needs image_size divisible by 8, got {self.S}")
        self._mirror = None
        self._cache: Dict[int, dict] = {}
        self._gen = None
        self._bg_pool = None
        self.render_batch = int(render_batch)
        self._pending, self._pending_pos = [], 0
        if wrinkles is not None and not isinstance(wrinkles, dict):
            raise ConfigError(f"SyntheticFaces wrinkles={wrinkles!r}: give a mapping of Wrinkles arguments "
                              "({} for the defaults) or null")
        if detail_gt and wrinkles is None:
            raise ConfigError("SyntheticFaces detail_gt=true needs wrinkles (e.g. wrinkles: {})")
        self.wrinkle_args, self.detail_gt = wrinkles, bool(detail_gt)
        self._detail = None

    def __len__(self) -> int:
        return self.num_subjects

    # ------------------------------------------------------------------ generator parts
    def _parts(self):
        """(face model, background photos), built on first use."""
        if self._gen is None:
            from ..face_model import FaceModel

            a = self.model_args
            face = FaceModel(n_shape=self.n_shape, n_exp=self.n_exp, n_tex=self.n_tex, image_size=self.S,
                             uv_size=a["uv_size"], flame_model_path=a["flame_model_path"],
                             flame_landmark_path=a["flame_landmark_path"], albedo_path=a["albedo_path"],
                             albedo_seed=a["albedo_seed"], render_backend=a["render_backend"])
            self._gen = (face, _photo_pool())
        return self._gen

    @property
    def face(self):
        """The :class:`~ppface3d.face_model.FaceModel` that renders the samples."""
        return self._parts()[0]

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLITS[self.split], int(i), zlib.crc32(b"SyntheticFaces")])

    def sample_codes(self, i: int, rng: Optional[np.random.Generator] = None) -> Dict[str, np.ndarray]:
        """The random ground-truth codes of subject ``i`` (numpy), without rendering (``rng``:
        draw from another stream than the subject's)."""
        rng = self._rng(i) if rng is None else rng
        K = self.K
        decay = lambda n: 1.0 / np.sqrt(1.0 + np.arange(n) / 10.0)  # noqa: E731  later components vary less
        shape = rng.normal(size=self.n_shape) * self.std["shape"]  # FLAME bases already decay
        if self.shape_components is not None:
            shape[self.shape_components:] = 0.0
        tex = rng.normal(size=self.n_tex) * self.std["tex"]
        exp = rng.normal(size=(K, self.n_exp)) * self.std["exp"] * decay(self.n_exp) * 0.5
        deg = np.pi / 180.0
        yaw = rng.uniform(-1, 1, K) * self.ranges["yaw"] * deg
        pitch = rng.uniform(-1, 1, K) * self.ranges["pitch"] * deg
        roll = rng.uniform(-1, 1, K) * self.ranges["roll"] * deg
        from scipy.spatial.transform import Rotation

        glob = Rotation.from_euler("YXZ", np.stack([yaw, pitch, roll], 1)).as_rotvec()
        jaw = np.stack([rng.uniform(0, 1, K) * self.ranges["jaw"], rng.normal(scale=0.01, size=K),
                        rng.normal(scale=0.01, size=K)], 1)
        pose = np.concatenate([glob, jaw], 1)
        light = random_sh(rng, K)
        jit = dict(scale=1.0 + rng.uniform(-1, 1, K) * self.scale_jitter,
                   trans=rng.uniform(-1, 1, (K, 2)) * self.trans_jitter,
                   bg_seed=rng.integers(0, 2 ** 31 - 1, K), noise=rng.uniform(0.0, 0.02, K))
        f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
        return dict(shape=f32(shape), tex=f32(tex), exp=f32(exp), pose=f32(pose), light=f32(light), jitter=jit)

    @paddle.no_grad()
    def _posed_many(self, cs):
        """Decoded FLAME geometry of the codes ``cs`` (a list from :meth:`sample_codes`), K images
        each in order (:meth:`FaceModel.decode` without a camera), and their jittered DECA-crop
        cameras (len(cs) * K, 3) (numpy)."""
        face = self.face
        t = paddle.to_tensor
        cat = lambda f: np.concatenate([f(c) for c in cs])  # noqa: E731
        shape = np.repeat(np.stack([c["shape"] for c in cs]), self.K, 0)
        dec = face.decode({"shape": t(shape), "exp": t(cat(lambda c: c["exp"])), "pose": t(cat(lambda c: c["pose"]))})
        cam = face.framing_camera(dec["landmarks3d"].numpy())
        cam[:, 0] *= cat(lambda c: c["jitter"]["scale"])
        cam[:, 1:] += cat(lambda c: c["jitter"]["trans"]) / cam[:, :1]
        return dec, cam

    def posed(self, c: Dict[str, np.ndarray]):
        """The K posed geometries of codes ``c`` (from :meth:`sample_codes`: a dict with
        'vertices' (K, V, 3) and 'landmarks3d' (K, 68, 3) world) and their jittered DECA-crop
        cameras (K, 3) (numpy); no rendering."""
        return self._posed_many([c])

    @paddle.no_grad()
    def _generate_many(self, indices) -> list:
        """Render subjects ``indices`` in one batch (each sample is the same as rendering it
        alone: every random draw is a function of its own index)."""
        face, photos = self._parts()
        indices = [int(i) for i in indices]
        cs = [self.sample_codes(i) for i in indices]
        K, n = self.K, len(indices)
        t = paddle.to_tensor
        dec, cam = self._posed_many(cs)
        dec = face.place(dec, t(cam))
        alb = face.albedo_map(t(np.stack([c["tex"] for c in cs])))
        alb = alb.unsqueeze(1).expand([n, K] + alb.shape[1:]).reshape([n * K] + alb.shape[1:])
        bgs = np.stack([make_background(np.random.default_rng(int(s)), self.S, photos)
                        for c in cs for s in c["jitter"]["bg_seed"]])
        lights = np.concatenate([c["light"] for c in cs])
        disp = self.detail.displacements(indices, cs) if self.detail is not None else None
        nmap = self.detail.normal_maps(disp, dec["vertices"]) if disp is not None else None
        r = face.render(dec, light=t(lights), albedo=alb, background=t(bgs), normal_map=nmap)
        img = r["images"].numpy().reshape([n, K, 3, self.S, self.S])
        mask = (r["alpha_images"].numpy()[:, 0] > 0.5).astype(np.uint8).reshape([n, K, self.S, self.S])
        lmk2d = dec["landmarks2d"].numpy().reshape([n, K, 68, 2])
        verts = dec["vertices"].numpy().astype(np.float16).reshape([n, K, -1, 3]) if self.return_vertices else None
        neutral = face.neutral(t(np.stack([c["shape"] for c in cs])))
        lm_n = neutral["landmarks68"].numpy()
        v_n = neutral["vertices"].numpy()
        cam = cam.reshape([n, K, 3])
        geo = self._geometry_maps(r).reshape([n, K, 5, self.S // 8, self.S // 8]) if self.geometry else None
        if self.detail_gt:
            normal_gt = r["normal_images"].numpy().astype(np.float16).reshape([n, K, 3, self.S, self.S])
            region = self.detail.region(r, nmap).reshape([n, K, self.S, self.S])
        out = []
        for j, (i, c) in enumerate(zip(indices, cs)):
            noise = self._rng(i + 10 ** 7).normal(size=img[j].shape).astype(np.float32)
            im = np.clip(img[j] + noise * c["jitter"]["noise"][:, None, None, None], 0, 1)
            out.append({
                "image": (im * 255 + 0.5).astype(np.uint8),
                "landmark": np.concatenate([lmk2d[j], np.ones((K, 68, 1), np.float32)], -1).astype(np.float32),
                "mask": mask[j],
                "shape": c["shape"], "tex": c["tex"], "exp": c["exp"], "pose": c["pose"], "cam": cam[j],
                "light": c["light"],
                "vertices": None if verts is None else verts[j],
                "gt_verts_neutral": v_n[j].astype(np.float32),
                "gt_lmk3d_neutral": lm_n[j].astype(np.float32),
                "subject": np.int64(i),
            })
            if geo is not None:
                out[-1]["geometry"] = geo[j]
            if disp is not None:
                out[-1]["displacement"] = disp[j * K:(j + 1) * K].astype(np.float16)
            if self.detail_gt:
                out[-1]["normal_gt"] = normal_gt[j]
                out[-1]["detail_region"] = region[j]
        return out

    @property
    def detail(self):
        """The set's :class:`~ppface3d.data.wrinkles.SyntheticDetail` (wrinkle ground truth), or None."""
        if self._detail is None and self.wrinkle_args is not None:
            from .wrinkles import SyntheticDetail

            self._detail = SyntheticDetail(self, **self.wrinkle_args)
        return self._detail

    @staticmethod
    def _geometry_maps(r) -> np.ndarray:
        """Renderer outputs -> (N, 5, S/8, S/8) float16 cell maps (see ``geometry``)."""
        F = paddle.nn.functional
        m = (r["alpha_images"] > 0.5).astype("float32")
        d = r["depth_images"]
        d = d - (d * m).sum([2, 3], keepdim=True) / m.sum([2, 3], keepdim=True).clip(min=1.0)
        cover = F.avg_pool2d(m, 8)
        maps = F.avg_pool2d(paddle.concat([r["normal_images"], d], 1) * m, 8) / cover.clip(min=1e-3)
        return paddle.concat([maps * (cover > 0).astype("float32"), cover], 1).numpy().astype(np.float16)

    def prepare(self, indices) -> None:
        """The order in which the next items will be read (the training data stream calls this
        at every epoch): a cache miss then renders the next ``render_batch`` uncached subjects
        of that order together, which is about twice as fast per subject as one at a time."""
        self._pending = [int(i) for i in indices] if self.cache else []
        self._pending_pos = 0

    def _chunk(self, i: int) -> list:
        """``i`` and the next uncached subjects of the prepared order (up to ``render_batch``)."""
        chunk, seen = [i], {i}
        p = self._pending
        while self._pending_pos < len(p) and len(chunk) < self.render_batch:
            j = p[self._pending_pos]
            self._pending_pos += 1
            if j not in seen and j not in self._cache and 0 <= j < len(self):
                chunk.append(j)
                seen.add(j)
        return chunk

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """image (K, 3, S, S) float [0, 1], mask (K, S, S) -> augmented copy (see ``augment``)."""
        if self._bg_pool is None:
            rng = np.random.default_rng([self.seed, _SPLITS[self.split], zlib.crc32(b"SyntheticFaces.bg")])
            photos = self._parts()[1]
            self._bg_pool = np.stack([make_background(rng, self.S, photos) for _ in range(256)])
        r = np.random.default_rng(np.random.randint(0, 2 ** 31 - 1))
        K = image.shape[0]
        u = lambda lo, hi, shape: r.uniform(lo, hi, shape).astype(np.float32)  # noqa: E731
        out = image.copy()
        for k in np.nonzero(r.random(K) < 0.5)[0]:  # background swap
            bg = self._bg_pool[r.integers(0, len(self._bg_pool))]
            bg = bg[..., ::-1] if r.random() < 0.5 else bg  # mirrored half the time
            out[k] += (bg - out[k]) * (1.0 - mask[k])
        mean = out.mean((1, 2, 3), keepdims=True)
        out = (out - mean) * u(0.8, 1.2, (K, 1, 1, 1)) + mean  # contrast
        out = out * u(0.85, 1.15, (K, 3, 1, 1)) + u(-0.08, 0.08, (K, 1, 1, 1))  # colour, brightness
        out += r.standard_normal(out.shape, dtype=np.float32) * u(0.0, 0.03, (K, 1, 1, 1))
        return np.clip(out, 0.0, 1.0, out=out)

    def _mirror_tables(self):
        if self._mirror is None:
            from ..flame.mirror import IBUG68_MIRROR, MIRROR_X

            maps = self.face.mirror()
            lm = self.face.mean_landmarks()
            off = np.linalg.norm(lm[IBUG68_MIRROR] - lm * MIRROR_X, axis=-1)  # landmark j vs mirrored partner
            self._mirror = dict(maps=maps, lmk_ok=(off < 1e-3).astype(np.float32))
        return self._mirror

    def _mirrored(self, out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The sample ``out`` (from :meth:`__getitem__`) mirrored left-right, labels included."""
        from ..flame.mirror import IBUG68_MIRROR, MIRROR_X

        t = self._mirror_tables()
        maps = t["maps"]
        o = dict(out)
        o["image"] = np.ascontiguousarray(out["image"][..., ::-1])
        o["mask"] = np.ascontiguousarray(out["mask"][..., ::-1])
        lm = out["landmark"][:, IBUG68_MIRROR].copy()
        lm[..., 0] *= -1.0  # screen NDC: x -> -x is the pixel flip (pixel centres are symmetric)
        lm[..., 2] *= t["lmk_ok"]
        o["landmark"] = lm
        o["shape"] = out["shape"] * maps.shape_sign[: len(out["shape"])]
        o["shape_mask"] = out["shape_mask"] * (maps.shape_sign[: len(out["shape"])] != 0)
        ne = out["exp"].shape[-1]
        o["exp"] = out["exp"] * maps.exp_sign[:ne]
        o["exp_mask"] = out["exp_mask"] * (maps.exp_sign[:ne] != 0)
        axis_angle = np.array([1, -1, -1], np.float32)  # rotation R -> M R M with M = diag(-1, 1, 1)
        o["pose"] = out["pose"] * np.tile(axis_angle, out["pose"].shape[-1] // 3)
        o["cam"] = out["cam"] * np.array([1, -1, 1], np.float32)
        o["light"] = out["light"] * _SH_MIRROR[:, None]
        for k in ("vertices", "gt_verts_neutral"):
            if k in out:
                o[k] = out[k][:, maps.vertex_pair] * MIRROR_X
        o["gt_lmk3d_neutral"] = out["gt_lmk3d_neutral"][:, IBUG68_MIRROR] * MIRROR_X
        if "geometry" in out:
            g = out["geometry"][..., ::-1].copy()
            g[:, 0] *= -1.0  # normal x
            o["geometry"] = g
        if "displacement" in out:  # the UV layout is mirror-symmetric in u
            o["displacement"] = np.ascontiguousarray(out["displacement"][..., ::-1])
        if "normal_gt" in out:
            g = out["normal_gt"][..., ::-1].copy()
            g[:, 0] *= -1.0
            o["normal_gt"] = g
            o["detail_region"] = np.ascontiguousarray(out["detail_region"][..., ::-1])
        return o

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        i = int(i)
        if i < 0 or i >= len(self):
            raise IndexError(i)
        s = self._cache.get(i)
        if s is None:
            chunk = self._chunk(i) if self.cache else [i]
            made = dict(zip(chunk, self._generate_many(chunk)))
            if self.cache:
                self._cache.update(made)
            s = made[i]
        out = dict(s)
        out["image"] = s["image"].astype(np.float32) / 255.0
        out["mask"] = s["mask"].astype(np.float32)
        if self.augment:
            out["image"] = self._augment(out["image"], out["mask"])
        out["gt_verts_neutral"] = np.repeat(s["gt_verts_neutral"][None], self.K, 0)
        out["gt_lmk3d_neutral"] = np.repeat(s["gt_lmk3d_neutral"][None], self.K, 0)
        if "geometry" in s:
            out["geometry"] = s["geometry"].astype(np.float32)
        if "displacement" in s:
            out["displacement"] = s["displacement"].astype(np.float32)
        if "normal_gt" in s:
            out["normal_gt"] = s["normal_gt"].astype(np.float32)
            out["detail_region"] = s["detail_region"].astype(np.float32)
        if s["vertices"] is None:
            del out["vertices"]
        else:
            out["vertices"] = s["vertices"].astype(np.float32)
        if self.flip:
            n_sh = len(s["shape"])
            out["shape_mask"] = np.ones(n_sh, np.float32)
            out["exp_mask"] = np.ones_like(s["exp"])
            if np.random.random() < 0.5:
                out = self._mirrored(out)
        return out
