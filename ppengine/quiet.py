"""Quiet command lines: silence the third-party chatter an entry point does not own.

Every entry point (``tools/*.py``, the app, the notebooks' first cell) calls :func:`quiet`
before its heavy imports::

    from ppengine.quiet import quiet
    quiet()            # or quiet(verbose=True); `--verbose` on the command line does the same

What it silences, unless ``--verbose`` is given or ``PPENGINE_VERBOSE=1`` is set:

- C++ logging of TensorFlow Lite / absl / glog (mediapipe, paddle): ``GLOG_minloglevel=2``,
  ``TF_CPP_MIN_LOG_LEVEL=3`` (environment, so they must be set before those libraries load);
  the lines mediapipe's graphs still write straight to the stderr file descriptor (``INFO:
  Created TensorFlow Lite XNNPACK delegate``, ``Feedback manager requires a model with a single
  signature``) are filtered by :func:`native_stderr_filtered` around its model load and runs;
- paddle's import-time notices (``No ccache found``, the ``OMP_NUM_THREADS set to N`` lines),
  filtered by :func:`importing_paddle`, which ``ppengine/__init__.py`` imports paddle inside;
- DeprecationWarning / PendingDeprecationWarning / FutureWarning raised by dependencies (the
  project's own stay visible), protobuf's ``GetPrototype() is deprecated`` warning;
- absl's Python logging and the request logs of httpx (gradio) below ERROR / WARNING.

The project's own lines (progress bars, one-line messages, errors) are untouched: only known
chatter is dropped, anything else written to stderr inside a filtered block is written back.
This module imports nothing heavy, so ``import ppengine.quiet`` is cheap.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from typing import Iterator, List, Optional, Sequence

OWN_PACKAGES = ("ppengine", "ppface3d", "ppldm", "ppapp")

ENV_DEFAULTS = {
    "GLOG_minloglevel": "2",        # glog (paddle, mediapipe): errors only
    "TF_CPP_MIN_LOG_LEVEL": "3",    # TensorFlow / TF Lite C++ logging
    "GRPC_VERBOSITY": "ERROR",
    "GRADIO_ANALYTICS_ENABLED": "False",  # no phone-home from the app (offline)
}

# Lines third-party native code writes to stderr that carry nothing for the user.
CHATTER = [re.compile(p) for p in (
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"^[IW]\d{4} [\d:. ]+\d+ \S+\.cc:\d+\] ",   # glog/absl INFO and WARNING lines (not E/F)
    r"^WARNING: OMP_NUM_THREADS set to \d+, not 1\.",
    r"^PLEASE USE OMP_NUM_THREADS WISELY\.",
    r" - INFO - using custom operator only$",   # paddle's cpp_extension logger
)]

# Python warnings from dependencies that are not actionable by the user.
WARNING_MESSAGES = (
    r"No ccache found",
    r"SymbolDatabase\.GetPrototype\(\) is deprecated",
    r"Setuptools is replacing distutils",
    r"pkg_resources is deprecated as an API",   # jieba (paddlenlp), face_recognition_models on setuptools 81
)

_state = {"applied": False, "verbose": False}


def verbose_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether the user asked for everything: ``--verbose`` in argv or ``PPENGINE_VERBOSE=1``."""
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get("PPENGINE_VERBOSE", "") not in ("", "0") or "--verbose" in argv


def is_chatter(line: str) -> bool:
    """True for a known third-party chatter line (see :data:`CHATTER`)."""
    return any(p.search(line) for p in CHATTER)


def quiet(verbose: Optional[bool] = None, argv: Optional[List[str]] = None) -> bool:
    """Silence third-party chatter for this process; returns whether verbose mode is on.

    ``verbose=None`` reads ``--verbose`` from ``argv`` (default ``sys.argv``) and removes it
    there, so the entry point's own parser never sees it; ``PPENGINE_VERBOSE=1`` also counts.
    Idempotent. In verbose mode nothing is silenced and ``PPENGINE_VERBOSE=1`` is exported
    (child processes inherit it).
    """
    argv_list = sys.argv if argv is None else argv
    if verbose is None:
        verbose = verbose_requested(argv_list[1:] if argv is None else argv_list)
    while "--verbose" in argv_list:
        argv_list.remove("--verbose")
    _state["verbose"] = bool(verbose)
    if verbose:
        os.environ["PPENGINE_VERBOSE"] = "1"
        return True
    if _state["applied"]:
        return False
    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    _filter_warnings()
    # request logs (gradio's httpx), paddle's extension loader, datasets' "PyTorch version ... available"
    for name in ("httpx", "httpcore", "urllib3", "utils.cpp_extension", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import absl.logging  # light; mediapipe uses it

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    _state["applied"] = True
    return False


def _filter_warnings():
    own = r"(%s)(\.|$)" % "|".join(OWN_PACKAGES)
    for cat in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=cat)
        warnings.filterwarnings("default", category=cat, module=own)  # inserted first: ours stay
    for msg in WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=msg)


class _FilteredText(io.TextIOBase):
    """A text stream that forwards whole lines to ``target`` unless they are chatter."""

    def __init__(self, target):
        self.target, self.buf = target, ""

    def write(self, s):
        self.buf += s
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if not is_chatter(line):
                self.target.write(line + "\n")
        return len(s)

    def flush(self):
        if self.buf and not is_chatter(self.buf):
            self.target.write(self.buf)
        self.buf = ""
        self.target.flush()


@contextlib.contextmanager
def importing_paddle() -> Iterator[None]:
    """Import paddle (inside the block) without its import-time notices, unless verbose.

    Paddle prints the ``OMP_NUM_THREADS set to N`` lines with ``print(file=sys.stderr)`` and
    warns ``No ccache found`` when its extension utilities load; both are dropped here.
    """
    if verbose_requested():
        yield
        return
    real = sys.stderr
    filt = _FilteredText(real)
    sys.stderr = filt
    try:
        with warnings.catch_warnings():
            for msg in WARNING_MESSAGES:
                warnings.filterwarnings("ignore", message=msg)
            yield
    finally:
        filt.flush()
        sys.stderr = real


_native = {"lock": threading.Lock(), "depth": 0, "saved": None, "file": None}


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Capture what native code writes to file descriptor 2 inside the block; afterwards write
    back every line that is not known chatter. A no-op in verbose mode.

    Re-entrant and thread-safe: the first block to enter redirects, the last to leave restores
    and replays (concurrent writers are delayed, never lost).
    """
    # verbose: quiet(verbose=True) ran (it exports PPENGINE_VERBOSE=1) or the environment says so;
    # argv is not read here (a library caller's own --verbose, e.g. pytest's, means something else)
    if _state["verbose"] or verbose_requested(argv=()):
        yield
        return
    with _native["lock"]:
        if _native["depth"] == 0:
            try:
                sys.stderr.flush()
                tmp = tempfile.TemporaryFile()
                saved = os.dup(2)
                os.dup2(tmp.fileno(), 2)
            except (OSError, ValueError, AttributeError):  # no real fd 2 (some notebook kernels)
                tmp = saved = None
            _native.update(saved=saved, file=tmp)
        _native["depth"] += 1
    try:
        yield
    finally:
        with _native["lock"]:
            _native["depth"] -= 1
            if _native["depth"] == 0 and _native["saved"] is not None:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                saved, tmp = _native["saved"], _native["file"]
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                text = tmp.read().decode("utf-8", "replace")
                tmp.close()
                _native.update(saved=None, file=None)
                keep = [ln for ln in text.splitlines(keepends=True) if not is_chatter(ln)]
                if keep:
                    os.write(2, "".join(keep).encode())
