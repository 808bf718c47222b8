"""sklearn's 1,797 labelled 8x8 handwritten digits as an image dataset for class-conditional LDMs."""
from __future__ import annotations

import numpy as np

from ppengine.errors import ConfigError
from ppengine.registry import DATASETS

_CACHE = {}


def load_digits_images(size: int = 16):
    """All digits resized to ``size`` x ``size``: images [1797, size, size] float32 in [0, 1], labels [1797]."""
    key = int(size)
    if key not in _CACHE:
        from skimage.transform import resize
        from sklearn.datasets import load_digits

        d = load_digits()
        imgs = d.images.astype(np.float32) / 16.0
        if size != 8:
            imgs = np.stack([resize(im, (size, size), order=1, mode="edge", anti_aliasing=False) for im in imgs])
        _CACHE[key] = (np.clip(imgs, 0, 1).astype(np.float32), d.target.astype(np.int64))
    return _CACHE[key]


def split_indices(n_labels, split: str, test_frac: float = 0.2, seed: int = 0):
    """Deterministic stratified split of the 1,797 digits: ``train`` (80%) or ``test``/``val`` (20%)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(n_labels)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * test_frac))
        test.extend(idx[:k])
        train.extend(idx[k:])
    out = np.sort(np.asarray(train if split == "train" else test))
    return out


@DATASETS.register()
class Digits:
    """sklearn digits. Item: ``image`` [channels, size, size] float32 in [-1, 1] (ink bright),
    ``label`` int64 (0..9), ``caption`` str (e.g. "the digit 7"), ``index`` int64.

    Splits: ``train`` (1,437 images) and ``test`` (360; ``val`` is the same held-out set),
    stratified by class with ``seed``.
    """

    def __init__(self, split: str = "train", size: int = 16, channels: int = 1, seed: int = 0, repeat: int = 1):
        if split not in ("train", "val", "test"):
            raise ConfigError(f"Digits: split must be train, val or test, got {split!r}")
        if channels not in (1, 3):
            raise ConfigError(f"Digits: channels must be 1 or 3, got {channels}")
        if size < 8:
            raise ConfigError(f"Digits: size must be >= 8, got {size}")
        imgs, labels = load_digits_images(size)
        idx = split_indices(labels, split, seed=seed)
        self.images = imgs[idx] * 2 - 1
        self.labels = labels[idx]
        self.channels, self.repeat = channels, max(1, int(repeat))

    def __len__(self):
        return len(self.labels) * self.repeat

    def __getitem__(self, i):
        i = i % len(self.labels)
        img = np.repeat(self.images[i][None], self.channels, axis=0)
        return {"image": img.astype(np.float32), "label": np.int64(self.labels[i]),
                "caption": f"the digit {int(self.labels[i])}", "index": np.int64(i)}
