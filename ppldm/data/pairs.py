"""Low/high-resolution pairs for super-resolution, made from any image dataset."""
from __future__ import annotations

import numpy as np

from ppengine.errors import ConfigError
from ppengine.registry import DATASETS


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Area (box-filter) downscaling of [C, H, W] by an integer ``factor`` -> [C, H/f, W/f]."""
    c, h, w = image.shape
    if h % factor or w % factor:
        raise ConfigError(f"super-resolution: image size {h}x{w} is not divisible by factor {factor}")
    return image.reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4)).astype(np.float32)


@DATASETS.register()
class SuperResPairs:
    """Wraps a dataset config (``base``) and adds ``lr``: the image downscaled by ``factor``.

    Item: every key of the base item, plus ``lr`` [C, H/factor, W/factor] float32 in [-1, 1]
    (area downscaling, the degradation the SR model learns to invert). ``image`` is the HR target.
    """

    def __init__(self, base: dict, factor: int = 4):
        if not isinstance(base, dict) or "type" not in base:
            raise ConfigError("SuperResPairs: base must be a dataset config with a 'type:' "
                              "(e.g. {type: ShapesWorld, size: 32})")
        if int(factor) < 2:
            raise ConfigError(f"SuperResPairs: factor must be >= 2, got {factor}")
        self.base = DATASETS.build(base, "data.base")
        self.factor = int(factor)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        item["lr"] = downscale(np.asarray(item["image"], np.float32), self.factor)
        return item
