"""Reading user images for the pipelines. (Writing goes through :mod:`ppengine.io`: ``to_uint8``,
``image_grid``, ``save_png``.)"""
from __future__ import annotations

import os

import numpy as np

from ppengine.errors import InputError


def read_image(path: str, size: int, channels: int = 3, what: str = "image") -> np.ndarray:
    """Read a user image -> [channels, size, size] float32 in [-1, 1] (centre crop + resize)."""
    from PIL import Image

    if not os.path.isfile(path):
        raise InputError(f"{what} {path!r} not found")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB" if channels == 3 else "L")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{what} {path!r} could not be read as an image ({type(e).__name__}: {e})") from None
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BICUBIC)
    a = np.asarray(im, np.float32) / 127.5 - 1
    return (a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).astype(np.float32)
