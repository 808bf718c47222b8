"""Image helpers for pipelines: tensors in [-1, 1] to uint8 grids, atomic PNG writing, reading inputs."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ppengine.errors import InputError


def to_uint8(images) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] (Tensor or array; C = 1 or 3) -> [N, H, W, 3] uint8."""
    x = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    x = np.clip((x.astype(np.float32) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return x.transpose(0, 2, 3, 1)


def grid(images, nrow: int = 8, pad: int = 1, upscale: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one [rows*(H+pad)+pad, ...] x 3 uint8 grid, ``nrow`` per row."""
    x = to_uint8(images)
    if upscale > 1:
        x = x.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, _ = x.shape
    nrow = max(1, min(int(nrow), n))
    rows = (n + nrow - 1) // nrow
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i]
    return out


def save_png(path: str, image: np.ndarray) -> str:
    """Write an HxWx3 uint8 image as PNG atomically (temp file + rename)."""
    import imageio.v2 as imageio

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
    os.close(fd)
    try:
        imageio.imwrite(tmp, image, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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
