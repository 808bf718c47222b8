"""What every tab shares: per-visitor folders, upload checks, path safety.

The app writes only under its work folder::

    WORK/cache/            gradio's upload/result cache (GRADIO_TEMP_DIR)
    WORK/examples/         the bundled example photo(s)
    WORK/sessions/<id>/    one folder per visitor: uploads and results, deleted when the visitor
                           leaves (gr.State's delete_callback) or after ``ttl`` seconds (sweep)
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
import uuid
import zipfile
from typing import Iterable, List, Optional

from ppengine.errors import InputError

# one model job at a time: paddle / mediapipe objects are shared by every visitor
MODEL_LOCK = threading.Lock()


def is_inside(path: str, root: str) -> bool:
    """True when ``path`` (after resolving ``..`` and links) lies inside folder ``root``."""
    p, r = os.path.realpath(path), os.path.realpath(root)
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def safe_name(name: str, default: str = "upload") -> str:
    """A file name without folders or odd characters (an uploaded name is never a path)."""
    base = os.path.basename(str(name).replace("\\", "/"))
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return base[:120] or default


class Sessions:
    """Per-visitor folders under ``root``, removed on leave or after ``ttl`` seconds."""

    def __init__(self, root: str, ttl: float = 3600.0):
        self.root = os.path.abspath(root)
        self.ttl = float(ttl)
        os.makedirs(self.root, exist_ok=True)

    def ensure(self, folder: Optional[str]) -> str:
        """The visitor's folder (``folder`` from its gr.State), created when missing or foreign."""
        if folder and is_inside(folder, self.root) and os.path.realpath(folder) != os.path.realpath(self.root):
            os.makedirs(folder, exist_ok=True)
            return folder
        folder = os.path.join(self.root, uuid.uuid4().hex)
        os.makedirs(folder)
        return folder

    def delete(self, folder: Optional[str]) -> bool:
        """Remove a visitor's folder; anything outside ``root`` (or root itself) is refused."""
        if not folder or not is_inside(folder, self.root) or os.path.realpath(folder) == os.path.realpath(self.root):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return not os.path.exists(folder)

    def sweep(self, now: Optional[float] = None) -> List[str]:
        """Delete visitor folders untouched for more than ``ttl`` seconds; returns them."""
        now = time.time() if now is None else now
        gone = []
        for name in os.listdir(self.root):
            p = os.path.join(self.root, name)
            if os.path.isdir(p) and now - _last_change(p) > self.ttl and self.delete(p):
                gone.append(p)
        return gone

    def start_sweeper(self, every: float = 300.0) -> threading.Thread:
        def loop():
            while True:
                time.sleep(every)
                self.sweep()

        t = threading.Thread(target=loop, name="ppapp-sweeper", daemon=True)
        t.start()
        return t


def _last_change(folder: str) -> float:
    t = os.path.getmtime(folder)
    for base, _, files in os.walk(folder):
        for f in files:
            try:
                t = max(t, os.path.getmtime(os.path.join(base, f)))
            except OSError:
                pass
    return t


def upload_path(f) -> str:
    """The local path of a gradio upload (a path string or an object with ``.name``/``.path``)."""
    if isinstance(f, str):
        return f
    for attr in ("path", "name"):
        if isinstance(getattr(f, attr, None), str):
            return getattr(f, attr)
    if isinstance(f, dict) and isinstance(f.get("path"), str):
        return f["path"]
    raise InputError(f"unexpected upload {type(f).__name__}")


def take_upload(f, folder: str, max_mb: float, label: str = "photo") -> str:
    """Copy one upload into the visitor's ``folder``/inputs after checking its size.

    Raises InputError with a one-line message (empty, too large, missing).
    """
    src = upload_path(f)
    name = safe_name(os.path.basename(src))
    if not os.path.isfile(src):
        raise InputError(f"{name}: the upload did not arrive; upload the {label} again")
    size = os.path.getsize(src)
    if size > max_mb * 1024 * 1024:
        raise InputError(f"{name}: {size / 1024 / 1024:.1f} MB, more than the {max_mb:g} MB upload limit; "
                         f"use a smaller {label} (or start the app with a larger --max-upload-mb)")
    dst_dir = os.path.join(folder, "inputs")
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, name)
    stem, ext = os.path.splitext(dst)
    k = 1
    while os.path.exists(dst):
        dst = f"{stem}_{k}{ext}"
        k += 1
    shutil.copyfile(src, dst)
    return dst


def zip_files(path: str, files: Iterable[str], root: str) -> str:
    """Zip ``files`` (named relative to ``root``) into ``path``, written to a temp name first."""
    tmp = path + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, os.path.relpath(f, root))
    os.replace(tmp, path)
    return path
