"""Reading user photos robustly: every odd file becomes an RGB uint8 array or a clear InputError.

    img, notes = load_image("photo.jpg")      # img: (H, W, 3) uint8; notes: what was converted

Handled: grayscale (-> RGB), gray+alpha / RGBA (alpha composited over white), 16-bit and
float images (-> 8-bit), EXIF orientation (the photo is turned upright, as a viewer shows it),
corrupt or truncated files and non-images (InputError naming the file and what to do).
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np

from ppengine.errors import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")

_EXIF_ORIENTATION = 0x0112


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn ``img`` (H, W, C) upright according to the EXIF orientation tag (1..8)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, k=1),
    }
    f = ops.get(int(orientation))
    return np.ascontiguousarray(f(img)) if f else img


def to_rgb_uint8(arr: np.ndarray, notes: List[str] = None) -> np.ndarray:
    """Convert any (H, W), (H, W, 1|2|3|4) integer/float image to (H, W, 3) uint8 RGB."""
    notes = [] if notes is None else notes
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype == np.uint16 or a.dtype == np.int32 or a.dtype == np.uint32:
        maxv = 65535.0 if a.dtype == np.uint16 or a.max() > 255 else 255.0
        notes.append(f"{a.dtype} image ({'16' if maxv > 255 else '8'}-bit range) converted to 8-bit")
        a = np.clip(np.round(a.astype(np.float64) / maxv * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype.kind == "f":
        hi = 1.0 if float(np.nanmax(a)) <= 1.0 + 1e-6 else 255.0
        notes.append(f"float image (range 0..{hi:g}) converted to 8-bit")
        a = np.clip(np.nan_to_num(a) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        notes.append("grayscale image converted to RGB")
        return np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (2, 3, 4):
        raise InputError(f"image has shape {a.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if a.shape[2] in (2, 4):
        alpha = a[..., -1:].astype(np.float32) / 255.0
        color = a[..., :-1].astype(np.float32)
        if color.shape[2] == 1:
            color = np.repeat(color, 3, axis=2)
            notes.append("grayscale+alpha image converted to RGB")
        if float(alpha.min()) < 1.0:
            notes.append("alpha channel composited over white")
        else:
            notes.append("opaque alpha channel dropped")
        a = np.clip(color * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def load_image(path: str) -> Tuple[np.ndarray, List[str]]:
    """Read ``path`` as an upright RGB photo.

    Returns:
        image: (H, W, 3) uint8 RGB, turned upright by its EXIF orientation.
        notes: list of human-readable conversions that were applied (may be empty).
    Raises:
        InputError: the file is missing, empty, corrupt/truncated, or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    notes: List[str] = []
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file. Check the path (folders are read with --image DIR).")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty (0 bytes). Re-export or re-download the photo.")
    orientation = 1
    try:
        with Image.open(path) as im:
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            except Exception:  # a broken EXIF block must not hide a good image
                orientation = 1
            im.load()  # raises on truncated / corrupt pixel data
            pil_arr = np.asarray(im)
            pil_mode = im.mode
    except UnidentifiedImageError:
        raise InputError(
            f"{path}: not an image file that can be decoded (unknown or corrupt format). "
            f"Use a JPEG/PNG/BMP/TIFF/WebP photo."
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(
            f"{path}: the image is corrupt or truncated ({e}). Re-export or re-download it."
        ) from None
    arr = pil_arr
    # Pillow reduces 16-bit RGB PNG/TIFF to 8 bits on its own; OpenCV keeps the full depth,
    # so use it where it decodes the file (it ignores EXIF, which is applied below).
    try:
        import cv2

        raw = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if raw is not None and raw.ndim == 3 and raw.shape[:2] == pil_arr.shape[:2] and raw.dtype != np.uint8:
            arr = raw[..., [2, 1, 0] + ([3] if raw.shape[2] == 4 else [])]
    except Exception:
        pass
    if pil_mode == "P":
        from PIL import Image as _I

        with _I.open(path) as im:
            arr = np.asarray(im.convert("RGBA"))
    elif pil_mode == "CMYK":
        from PIL import Image as _I

        with _I.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        notes.append("CMYK image converted to RGB")
    if arr.size == 0:
        raise InputError(f"{path}: the image has no pixels ({arr.shape}).")
    rgb = to_rgb_uint8(arr, notes)
    if orientation != 1:
        rgb = _apply_orientation(rgb, orientation)
        notes.append(f"EXIF orientation {orientation} applied (photo turned upright)")
    return rgb, notes


def list_images(folder: str, recursive: bool = True) -> List[str]:
    """Sorted image paths under ``folder`` (by extension, case-insensitive)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."):
                out.append(os.path.join(root, f))
        if not recursive:
            break
    return out
