"""Writing files safely, and turning float images into files a person can open.

Every file the library writes goes through :func:`atomic_path`: the content is written to a
temporary file in the target's own folder and renamed over the target with ``os.replace``, so a
reader never sees a half-written file, an existing file stays as it was until the rename, and on
any failure (an exception, Ctrl-C) the temporary file is removed and nothing is left. The file is
created with ``os.open(..., 0o666)``, so it gets the usual mode the process's umask allows
(0644 under umask 022), not the 0600 of ``tempfile.mkstemp``.

    atomic_write_bytes("out/a.bin", data)
    atomic_save("out/a.npz", lambda tmp: np.savez(tmp, x=x))     # any writer that takes a path
    save_png("out/a.png", images[0], value_range=(-1, 1))

Images: :func:`to_uint8` maps float images in an explicit ``value_range`` (default [0, 1]) to
uint8, NCHW or NHWC (or one CHW / HWC image) in, channels last out.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Callable, Iterator, Optional, Sequence

import numpy as np


def _temp_name(path: str) -> str:
    """A hidden name beside ``path`` that keeps its extension (writers choose formats by it)."""
    folder, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    return os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{ext}")


def _fsync_dir(folder: str):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: str):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; on success it is renamed to ``path``.

    The temporary file exists (empty, umask-respecting mode) when the block starts; write to it by
    path. If the block raises, the temporary file is deleted and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _temp_name(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(folder)


def make_temp_dir(path: str, prefix: Optional[str] = None) -> str:
    """Create and return an empty hidden folder beside ``path`` with the umask's usual mode (0755
    under umask 022, not ``tempfile.mkdtemp``'s 0700), to be renamed to ``path`` when complete.
    ``prefix``: its name starts so (plus a random part); default ``.<name>.<random>.tmp``."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, prefix + uuid.uuid4().hex[:12]) if prefix else _temp_name(path)
    os.mkdir(tmp, 0o777)  # the umask applies
    return tmp


@contextlib.contextmanager
def atomic_dir(path: str, prefix: Optional[str] = None) -> Iterator[str]:
    """Yield a temporary folder beside ``path`` (see :func:`make_temp_dir`); on success it
    replaces ``path`` (an existing folder there is removed first). On failure it is removed."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = make_temp_dir(path, prefix)
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(parent)


def atomic_save(path: str, write: Callable[[str], object]) -> str:
    """Call ``write(tmp_path)`` (e.g. an image or NumPy writer) and rename the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def atomic_write_json(path: str, obj) -> str:
    """``obj`` as indented, key-sorted JSON (NumPy scalars and arrays allowed), atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


# ----------------------------------------------------------------------------- images
def _channels_first(shape: Sequence[int]) -> bool:
    """C (1 or 3) before H, W? When both ends could be C (a 3x3 image), channels first wins."""
    if shape[-3] in (1, 3):
        return True
    if shape[-1] in (1, 3):
        return False
    raise ValueError(f"to_uint8: no channel axis of size 1 or 3 in shape {tuple(shape)}")


def to_uint8(images, value_range=(0.0, 1.0)) -> np.ndarray:
    """Float images -> uint8, channels last.

    ``images``: a NumPy array or paddle Tensor, (N, C, H, W) or (N, H, W, C), or one image
    (C, H, W) / (H, W, C), with C = 1 or 3 (the layout is read from where C is; when both ends
    could be C, channels first). Values in
    ``value_range`` (``(0, 1)``, or ``(-1, 1)`` for diffusion outputs) map to 0..255 (rounded,
    clipped). uint8 input is only transposed. Returns (N, H, W, C), (H, W, C) (or (H, W) for a
    grey (H, W) image) uint8.
    """
    x = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"to_uint8: expected (N, C, H, W), (N, H, W, C) or one (C, H, W) / (H, W, C) / (H, W) "
                         f"image, got shape {tuple(x.shape)}")
    if x.ndim > 2 and _channels_first(x.shape):
        x = np.moveaxis(x, -3, -1)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"to_uint8: value_range must be (low, high) with high > low, got {value_range!r}")
    x = (x.astype(np.float32) - lo) / (hi - lo)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(images, nrow: int = 8, pad: int = 1, upscale: int = 1, value_range=(0.0, 1.0)) -> np.ndarray:
    """N images (as :func:`to_uint8` takes them) -> one RGB uint8 sheet, ``nrow`` per row, white gaps
    of ``pad`` pixels, each image enlarged ``upscale`` times (nearest)."""
    x = to_uint8(images, value_range)
    if x.ndim == 3:
        x = x[None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    x = x[..., :3]
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


def save_png(path: str, image, value_range=(0.0, 1.0)) -> str:
    """Write one image ((H, W, C) / (C, H, W), uint8 or float in ``value_range``) as PNG, atomically."""
    import imageio.v3 as iio

    img = to_uint8(image, value_range)
    if img.ndim == 4:
        raise ValueError(f"save_png: expected one image, got shape {tuple(img.shape)} (write a grid with image_grid)")
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return atomic_save(path, lambda tmp: iio.imwrite(tmp, img, extension=".png"))
