"""Real face photos with 68-point landmarks, cropped the DECA way.

    data:
      train: {type: FaceImageFolder, root: /data/faces, K: 4}

Layout: images anywhere under ``root`` (one sub-folder per person when K > 1, as VGGFace2).
Landmarks for ``a/b.jpg`` are read from ``a/b.npy``, ``a/b.txt`` or ``a/b.pts`` (68 x 2|3,
original pixels, iBUG order, as DECA and EMOCA store them) or from ``root/landmarks/a/b.*``.
Images without a landmark file get them from mediapipe once (FacePreprocessor, the largest
face); the result is cached as ``.npy`` under ``cache_dir`` (default ``root/.landmarks_cache``)
so later runs read the file. Images that can't be used are listed with the reason and skipped.
"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import paddle

from ppengine.errors import InputError
from ppengine.io import atomic_save
from ppengine.registry import DATASETS

from ..render.cameras import pixels_to_ndc
from .io import list_images, load_image
from .preprocess import (
    FacePreprocessor,
    apply_transform,
    deca_crop_transform,
    landmark_face_mask,
    read_landmark_file,
    warp_crop,
)

_LMK_EXTS = (".npy", ".txt", ".pts")


def _atomic_save_npy(path: str, arr: np.ndarray):
    atomic_save(path, lambda tmp: np.save(tmp, arr))


@DATASETS.register()
class FaceImageFolder(paddle.io.Dataset):
    """Photos + 68 landmarks -> DECA training/eval samples.

    Args:
        root: folder of photos.
        image_size: crop side (DECA 224).
        scale: crop scale around the landmarks (DECA 1.25); training may jitter it with
            ``scale_range`` (DECA trains with 1.4-1.8).
        K: images per subject per sample (sub-folders are subjects); 1 = single images.
        landmarks: 'auto' (files, else mediapipe), 'files' (files only), 'detect' (mediapipe).
        cache_dir: where detected landmarks are cached (default ``root/.landmarks_cache``).
        split: unused tag ('train'/'val'/'test'), accepted for config symmetry.
        max_images: use at most this many photos (sorted order).
        seed: seed for the K-sampling and crop jitter.
        verbose: print one line per skipped photo.

    Each sample (K leading axis, even for K=1):
        image (K, 3, S, S) float32 [0, 1]; landmark (K, 68, 3) float32 in [-1, 1] crop
        coordinates + confidence; mask (K, S, S) float32 face region (landmark polygon);
        tform (K, 3, 3) float32 original -> crop pixels; subject (int64).
    """

    def __init__(self, root: str, image_size: int = 224, scale: float = 1.25, K: int = 1,
                 landmarks: str = "auto", cache_dir: Optional[str] = None, split: str = "train",
                 max_images: Optional[int] = None, scale_range=None, seed: int = 0, verbose: bool = True):
        super().__init__()
        if not os.path.isdir(root):
            raise InputError(f"FaceImageFolder: root {root!r} is not a folder. Set data.train.root to a "
                             f"folder of face photos (or use the SyntheticFaces default).")
        if landmarks not in ("auto", "files", "detect"):
            raise InputError(f"FaceImageFolder: landmarks={landmarks!r}; use 'auto', 'files' or 'detect'")
        self.root, self.image_size, self.scale, self.K = root, int(image_size), float(scale), int(K)
        self.scale_range = tuple(scale_range) if scale_range else None
        self.split, self.seed = split, int(seed)
        self.cache_dir = cache_dir or os.path.join(root, ".landmarks_cache")
        paths = list_images(root)
        if max_images:
            paths = paths[: int(max_images)]
        self.skipped: List[str] = []
        self.items: List[Dict] = []
        pre = None
        for p in paths:
            rel = os.path.relpath(p, root)
            lm = None
            try:
                if landmarks != "detect":
                    lm_path = self._find_landmark_file(p, rel)
                    if lm_path:
                        lm = read_landmark_file(lm_path)
                if lm is None and landmarks != "files":
                    cache = os.path.join(self.cache_dir, os.path.splitext(rel)[0] + ".npy")
                    if os.path.isfile(cache):
                        lm = read_landmark_file(cache)
                    else:
                        pre = pre or FacePreprocessor(crop_size=self.image_size, scale=self.scale, max_faces=1)
                        res = pre(p, name=rel)
                        if not res.ok:
                            self.skipped.append(res.summary())
                            continue
                        lm = np.concatenate([res.faces[0].landmarks_original,
                                             np.ones((68, 1), np.float32)], 1)
                        _atomic_save_npy(cache, lm)
                if lm is None:
                    self.skipped.append(f"{rel}: no landmark file (.npy/.txt/.pts) and landmarks='files'")
                    continue
            except InputError as e:
                self.skipped.append(f"{rel}: {e}")
                continue
            subject = os.path.dirname(rel) or "."
            self.items.append({"path": p, "rel": rel, "landmarks": lm, "subject": subject})
        if pre is not None:
            pre.close()
        if verbose and self.skipped:
            print(f"FaceImageFolder({root}): skipped {len(self.skipped)} of {len(paths)} images:", file=sys.stderr)
            for s in self.skipped:
                print(f"  {s}", file=sys.stderr)
        if not self.items:
            raise InputError(f"FaceImageFolder: no usable face photos under {root!r} "
                             f"({len(paths)} image files, {len(self.skipped)} skipped). Add photos with a "
                             f"visible face, or landmark files next to them.")
        groups: "OrderedDict[str, List[int]]" = OrderedDict()
        for i, it in enumerate(self.items):
            groups.setdefault(it["subject"], []).append(i)
        self.subjects = list(groups)
        self.groups = [groups[s] for s in self.subjects]
        self._subject_index = {s: i for i, s in enumerate(self.subjects)}

    def _find_landmark_file(self, path: str, rel: str) -> Optional[str]:
        stem = os.path.splitext(path)[0]
        rstem = os.path.join(self.root, "landmarks", os.path.splitext(rel)[0])
        for base in (stem, rstem):
            for ext in _LMK_EXTS:
                if os.path.isfile(base + ext):
                    return base + ext
        return None

    def __len__(self) -> int:
        return len(self.items) if self.K == 1 else len(self.groups)

    def _load_one(self, idx: int, rng: np.random.Generator):
        it = self.items[idx]
        image, _ = load_image(it["path"])
        lm = it["landmarks"]
        scale = self.scale
        if self.scale_range and self.split == "train":
            scale = float(rng.uniform(*self.scale_range))
        T = deca_crop_transform(lm[:, :2], self.image_size, scale)
        crop = warp_crop(image, T, self.image_size)
        lm_crop = apply_transform(T, lm[:, :2])
        mask = landmark_face_mask(lm_crop, self.image_size)
        lm_norm = np.concatenate([pixels_to_ndc(lm_crop, self.image_size), lm[:, 2:3]], 1)
        return crop.transpose(2, 0, 1), lm_norm.astype(np.float32), mask, T.astype(np.float32)

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, i))
        if self.K == 1:
            idxs = [i]
            subject = self._subject_index[self.items[i]["subject"]]
        else:
            g = self.groups[i]
            idxs = list(rng.choice(g, self.K, replace=len(g) < self.K))
            subject = i
        parts = [self._load_one(j, rng) for j in idxs]
        return {
            "image": np.stack([p[0] for p in parts]).astype(np.float32),
            "landmark": np.stack([p[1] for p in parts]),
            "mask": np.stack([p[2] for p in parts]),
            "tform": np.stack([p[3] for p in parts]),
            "subject": np.int64(subject),
        }
