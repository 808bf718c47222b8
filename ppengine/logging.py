"""Run logging: a plain-text log file, VisualDL scalars/images, and a tqdm progress bar."""
from __future__ import annotations

import logging
import os
import sys

import numpy as np


def get_logger(name: str = "ppengine", log_file: str = None) -> logging.Logger:
    """A logger printing to stderr and, when given, appending to ``log_file``."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        log.addHandler(h)
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


class RunLogger:
    """Scalars and images to VisualDL (``<out>/vdl``) and text to ``<out>/train.log``.

    On ranks other than 0 every method is a no-op.
    """

    def __init__(self, output: str, enabled: bool = True, log_name: str = "train.log"):
        self.enabled = enabled
        self.log = get_logger("ppengine", os.path.join(output, log_name) if enabled else None)
        self.writer = None
        if enabled:
            from visualdl import LogWriter

            self.writer = LogWriter(logdir=os.path.join(output, "vdl"))

    def info(self, msg: str):
        if self.enabled:
            self.log.info(msg)

    def scalars(self, values: dict, step: int, prefix: str = ""):
        if not self.enabled or self.writer is None:
            return
        for k, v in values.items():
            try:
                self.writer.add_scalar(tag=f"{prefix}{k}", value=float(v), step=int(step))
            except (TypeError, ValueError):
                continue

    def image(self, tag: str, img: np.ndarray, step: int):
        if self.enabled and self.writer is not None:
            img = np.asarray(img)
            if img.dtype != np.uint8:
                img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            self.writer.add_image(tag=tag, img=img, step=int(step), dataformats="HWC")

    def close(self):
        """Flush and close the VisualDL writer; later calls log to the text log only."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def progress(total: int, initial: int = 0, enabled: bool = True, desc: str = "train", leave: bool = True):
    """A tqdm bar (it/s is shown by tqdm; loss and lr go in the postfix)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True,
                mininterval=0.5, file=sys.stderr, leave=leave)
