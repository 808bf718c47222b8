"""IdentitySyntheticFaces: SyntheticFaces with every image's identity features, cached on disk.

    data:
      train: {type: IdentitySyntheticFaces, split: train, num_subjects: 2000, K: 4, image_size: 96,
              features: {type: dlib}, neutral: false}

MICA learns a subject's neutral shape from a frozen face-recognition network's features of its
photos. The features of a rendered image never change, so they are computed once per image,
on the rendered image with its true 68 landmarks (the alignment the network expects, see
:mod:`ppface3d.data.identity_features`), and stored in chunks of ``chunk`` subjects under
``feature_cache`` (default ``$PPFACE3D_CACHE/identity_features/<key>/``). The key hashes every
setting that changes the images (split, seed, sizes, ranges, FLAME / albedo files, the generator
version and the renderer code of SyntheticFaces) and the network's file, so a stale cache is
never read. Each chunk is written atomically: an interrupted run resumes at the first missing
chunk. Training then needs no rendering at all.

Sample: the SyntheticFaces sample (see :mod:`.synthetic`) when ``images`` is true, else only its
labels (``shape``, ``tex``, ``exp``, ``pose``, ``subject``, and with ``neutral`` the neutral
meshes ``gt_verts_neutral`` (K, V, 3) / ``gt_lmk3d_neutral`` (K, 68, 3)), plus
``identity`` (K, D) float32 unit-length features.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from typing import Dict, Optional

import numpy as np

from ppengine.errors import ConfigError
from ppengine.registry import DATASETS

from .identity_features import build_identity_extractor, check_identity_spec
from .synthetic import SyntheticFaces

CACHE_FORMAT = 1


@DATASETS.register()
class IdentitySyntheticFaces(SyntheticFaces):
    """SyntheticFaces + identity features (see the module docstring).

    Args:
        features: identity network, ``{type: dlib}`` (default) or ``{type: onnx, path: ...}``.
        images: also return the rendered images and every SyntheticFaces label (evaluation of
            image models on the same samples, visuals); False returns labels and features only.
        neutral: include the true neutral meshes (what the NoW-style metric needs); a model can
            instead compute them from ``shape`` in one batched call (training).
        feature_cache: folder of feature caches (default ``<ppface3d cache>/identity_features``).
        chunk: subjects per cache file.
        progress: progress bar while features are computed.
        **kwargs: SyntheticFaces arguments (split, num_subjects, K, image_size, ...).
    """

    def __init__(self, features: Optional[dict] = None, images: bool = False, neutral: bool = True,
                 feature_cache: Optional[str] = None, chunk: int = 64, progress: bool = True, **kwargs):
        kwargs.setdefault("return_vertices", False)
        super().__init__(**kwargs)
        self.features = check_identity_spec(features, "data.features")
        if self.features["type"] == "arcface":
            raise ConfigError("data.features={type: arcface}: MICA's Paddle iresnet runs inside the model; the data "
                              "pipeline computes {type: dlib} or {type: onnx, path: ...} features")
        for k in ("augment", "flip"):
            if getattr(self, k):
                raise ConfigError(f"IdentitySyntheticFaces({k}=True): cached features belong to the rendered image; "
                                  f"{k} would change the image after its features were computed")
        self.images, self.neutral = bool(images), bool(neutral)
        self.chunk = int(chunk)
        self.progress = bool(progress)
        if feature_cache is None:
            from ..flame.generate import cache_dir

            feature_cache = os.path.join(cache_dir(), "identity_features")
        self.feature_cache = os.fspath(feature_cache)
        self._extractor = None
        self._folder = None
        self._chunks: Dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ the cache
    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = build_identity_extractor(self.features)
        return self._extractor

    def cache_key(self) -> dict:
        """Everything the cached features depend on."""
        from ..flame.generate import GENERATOR_VERSION
        from . import synthetic

        files = {}
        for k in ("flame_model_path", "flame_landmark_path", "albedo_path"):
            p = self.model_args.get(k)
            files[k] = None if p is None else [os.path.abspath(p), os.path.getsize(p), int(os.path.getmtime(p))]
        return {
            "format": CACHE_FORMAT, "split": self.split, "seed": self.seed, "K": self.K, "S": self.S,
            "n": [self.n_shape, self.n_exp, self.n_tex], "std": self.std, "shape_components": self.shape_components,
            "ranges": self.ranges, "jitter": [self.scale_jitter, self.trans_jitter], "files": files,
            "uv_size": self.model_args["uv_size"], "albedo_seed": self.model_args["albedo_seed"],
            "generator": GENERATOR_VERSION, "chunk": self.chunk, "network": self.extractor.key(),
            "synthetic_source": hashlib.sha1(inspect.getsource(synthetic).encode()).hexdigest()[:16],
        }

    @property
    def folder(self) -> str:
        if self._folder is None:
            key = self.cache_key()
            digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            self._folder = os.path.join(self.feature_cache, f"{self.features['type']}-{self.split}-{digest}")
            if not os.path.isfile(os.path.join(self._folder, "key.json")):
                from ppengine.io import atomic_write_json

                os.makedirs(self._folder, exist_ok=True)
                atomic_write_json(os.path.join(self._folder, "key.json"), key)
        return self._folder

    def _compute_chunk(self, c: int) -> np.ndarray:
        """Render chunk ``c``'s subjects and describe every image: (n, K, D) float32."""
        from ppengine.logging import progress

        from ..render.cameras import ndc_to_pixels

        lo, hi = c * self.chunk, min(len(self), (c + 1) * self.chunk)
        ext = self.extractor
        out = []
        n_chunks = -(-len(self) // self.chunk)
        bar = progress(hi - lo, enabled=self.progress, desc=f"identity features {self.split} chunk {c + 1}/{n_chunks}",
                       leave=False)
        for start in range(lo, hi, self.render_batch):
            idx = list(range(start, min(hi, start + self.render_batch)))
            samples = self._generate_many(idx)
            if self.images and self.cache:  # the renders are needed again for the images: keep them
                self._cache.update(zip(idx, samples))
            for s in samples:
                imgs = [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in s["image"]]
                lms = [ndc_to_pixels(lm[:, :2], self.S) for lm in s["landmark"]]
                out.append(ext.describe_many(imgs, lms))
                bar.update(1)
        bar.close()
        return np.stack(out).astype(np.float32)

    def chunk_features(self, c: int) -> np.ndarray:
        """Features of chunk ``c`` (n, K, D): from memory, the disk cache, or computed and stored."""
        if c not in self._chunks:
            path = os.path.join(self.folder, f"chunk_{c:05d}.npy")
            if os.path.isfile(path):
                arr = np.load(path, allow_pickle=False)
            else:
                from ppengine.io import atomic_save

                arr = self._compute_chunk(c)
                atomic_save(path, lambda tmp: np.save(tmp, arr))
            self._chunks[c] = arr
        return self._chunks[c]

    def identity(self, i: int) -> np.ndarray:
        """(K, D) unit features of subject ``i``'s images."""
        return self.chunk_features(int(i) // self.chunk)[int(i) % self.chunk]

    def prepare(self, indices) -> None:
        """The training stream's read order (each epoch): every chunk it touches is made ready
        now, in that order, rather than in the middle of a step."""
        super().prepare(indices)
        seen = set()
        for i in indices:
            c = int(i) // self.chunk
            if c not in seen:
                seen.add(c)
                self.chunk_features(c)

    # ------------------------------------------------------------------ samples
    def _labels(self, i: int) -> Dict[str, np.ndarray]:
        import paddle

        c = self.sample_codes(i)
        out = {k: c[k] for k in ("shape", "tex", "exp", "pose")}
        out["subject"] = np.int64(i)
        if self.neutral:
            with paddle.no_grad():
                n = self.face.neutral(paddle.to_tensor(c["shape"][None]))
            out["gt_verts_neutral"] = np.repeat(n["vertices"].numpy(), self.K, 0)
            out["gt_lmk3d_neutral"] = np.repeat(n["landmarks68"].numpy(), self.K, 0)
        return out

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        i = int(i)
        if i < 0 or i >= len(self):
            raise IndexError(i)
        feats = self.identity(i)
        out = super().__getitem__(i) if self.images else self._labels(i)
        out["identity"] = np.array(feats, np.float32)
        return out
