"""Builds the rasterizer's C++ (and, with CUDA, CUDA) custom operator once and caches it.

The shared library lives under ``$PPFACE3D_OPS_CACHE`` (default ``~/.cache/ppface3d/ops``) in a
folder keyed by a hash of the sources, the Paddle version and the compiler flags, so it is
compiled on first use (about 12 s with gcc here) and loaded from disk afterwards. A file lock
keeps concurrent processes (pytest workers, data-loader workers) from building it twice, and
the build happens in a temporary folder renamed into place, so a killed build leaves no
half-written library behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

_SRC_DIR = Path(__file__).resolve().parent / "csrc"
_MODULE = None
_ERROR: Exception | None = None


class OpUnavailable(RuntimeError):
    """The custom operator can't be built here (no compiler, or the build failed)."""


def cache_root() -> Path:
    """Folder holding the compiled operators (``$PPFACE3D_OPS_CACHE`` or ``~/.cache/ppface3d/ops``)."""
    env = os.environ.get("PPFACE3D_OPS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ppface3d" / "ops"


def find_compiler() -> str | None:
    """Path of the C++ compiler Paddle's extension builder will use, or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _want_cuda() -> bool:
    import paddle

    if not paddle.is_compiled_with_cuda():
        return False
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return bool(shutil.which("nvcc") or os.path.exists(os.path.join(cuda_home, "bin", "nvcc")))


def _config():
    import paddle

    cuda = _want_cuda()
    sources = [_SRC_DIR / "rasterize.cc"] + ([_SRC_DIR / "rasterize.cu"] if cuda else [])
    cflags = ["-O3", "-std=c++17"] + (["-DPPF3D_WITH_CUDA"] if cuda else [])
    h = hashlib.sha1()
    for s in sources:
        h.update(s.name.encode())
        h.update(s.read_bytes())
    h.update(" ".join(cflags).encode())
    h.update(paddle.__version__.encode())
    h.update(sys.version.split()[0].encode())
    return sources, cflags, cuda, h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence the compiler/setuptools chatter on the process's stdout/stderr file descriptors."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def load_op(verbose: bool = False):
    """The compiled operator module (with ``ppf3d_rasterize``), building it on first use.

    Raises:
        OpUnavailable: no C++ compiler was found or the build failed (the message says why).
    """
    global _MODULE, _ERROR
    if _MODULE is not None:
        return _MODULE
    if _ERROR is not None:
        raise _ERROR
    try:
        _MODULE = _load(verbose)
        _remove_generated_api_file(_MODULE)
    except OpUnavailable as e:
        _ERROR = e
        raise
    except Exception as e:  # a failed compile/link: keep its message, don't retry every call
        _ERROR = OpUnavailable(f"building the C++ rasterizer failed: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
        raise _ERROR from e
    return _MODULE


def _remove_generated_api_file(module) -> None:
    """Paddle writes a ``<name>_<pid-ish>.py`` wrapper next to the library on every load; once
    imported it is not needed, so don't let them pile up in the cache."""
    path = getattr(module, "__file__", None) or ""
    stem = os.path.basename(path)
    if stem.startswith("ppf3d_raster_") and stem.count("_") >= 3 and stem.endswith(".py"):
        with contextlib.suppress(OSError):
            os.remove(path)


def _load(verbose: bool):
    if find_compiler() is None:
        raise OpUnavailable("no C++ compiler (c++/g++/clang++) on PATH")
    with warnings.catch_warnings():  # "No ccache found" is noise for a one-file build
        warnings.simplefilter("ignore")
        from paddle.utils.cpp_extension import load
        from paddle.utils.cpp_extension.extension_utils import _import_module_from_library

    sources, cflags, cuda, key = _config()
    name = f"ppf3d_raster_{key}"
    root = cache_root()
    final = root / name
    lib = final / name / f"{name}.so"
    with _locked(root / f"{name}.lock"):
        if lib.exists():
            with _quiet(not verbose):
                return _import_module_from_library(name, str(final / name), verbose)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            with _quiet(not verbose), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = load(
                    name=name,
                    sources=[str(s) for s in sources],
                    extra_cxx_cflags=cflags,
                    extra_cuda_cflags=["-O3", "-DPPF3D_WITH_CUDA"] if cuda else None,
                    build_directory=str(tmp),
                    verbose=verbose,
                )
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return module
