"""One inference contract for every trained model: a run folder holds its resolved config.

The trainer writes ``config.yml`` into the run's output folder when training starts, beside the
``final.safetensors`` / ``best.safetensors`` / ``ckpt_*/`` it writes later, so a run folder (or
any weights file in it) is enough to rebuild the model:

    import ppldm                       # registers the zoo's models first
    model, cfg = load_for_inference("output/ldm/class2img_digits")
    model, cfg = load_for_inference("output/deca/best.safetensors", ["model.n_shape=100"])
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Tuple

from .checkpoint import CheckpointManager, load_weights
from .config import load_config
from .errors import InputError
from .registry import MODELS

WEIGHT_FILES = ("final.safetensors", "best.safetensors")


def find_run_files(path: str) -> Tuple[str, Optional[str]]:
    """A run folder or a weights file -> (weights file, its run's config.yml or None).

    For a folder: ``final.safetensors``, else ``best.safetensors``, else the latest checkpoint's
    ``model.safetensors``. For a file: the file, with the ``config.yml`` beside it (or, for a
    checkpoint's ``ckpt_*/model.safetensors``, the run folder's).
    """
    if not os.path.exists(path):
        raise InputError(f"{path!r} not found: give a run folder (e.g. output/ldm/class2img_digits) or a "
                         f"weights file written by training")
    if os.path.isdir(path):
        run = path
        weights = next((os.path.join(path, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))), None)
        if weights is None:
            latest = CheckpointManager(path).latest()
            if latest is not None and os.path.isfile(os.path.join(latest, "model.safetensors")):
                weights = os.path.join(latest, "model.safetensors")
        if weights is None:
            raise InputError(f"{path}: no weights there (looked for {', '.join(WEIGHT_FILES)} and ckpt_*/"
                             f"model.safetensors): train first, or pass the weights file")
    else:
        weights = path
        run = os.path.dirname(os.path.abspath(path))
        if not os.path.isfile(os.path.join(run, "config.yml")) and CheckpointManager.is_checkpoint(run):
            run = os.path.dirname(run)
    cfg = os.path.join(run, "config.yml")
    return weights, (cfg if os.path.isfile(cfg) else None)


def load_for_inference(path: str, overrides: Iterable[str] = (), config: Optional[str] = None):
    """Rebuild a trained model for inference -> ``(model, cfg)``, the model in eval mode.

    ``path``: a run folder or a weights file (see :func:`find_run_files`). The model is built
    from the run's ``config.yml`` (or ``config``, a config file given explicitly, e.g. ``-c``)
    with ``overrides`` (``-o key=value``) through the model registry, so the package that
    registers the model type must be imported first. ``cfg['model']['weights']`` is set to the
    weights file that was loaded.
    """
    weights, run_cfg = find_run_files(path)
    cfg_path = config or run_cfg
    if cfg_path is None:
        raise InputError(f"{path}: no config.yml beside the weights (runs trained before configs were saved with "
                         f"the weights have none): pass -c CONFIG, the config the model was trained with")
    cfg = load_config(cfg_path, overrides)
    mcfg = dict(cfg.get("model") or {})
    if "type" not in mcfg:
        raise InputError(f"{cfg_path}: the config has no model section with a type: cannot rebuild the model")
    if mcfg["type"] not in MODELS:
        raise InputError(f"{cfg_path}: model type {mcfg['type']!r} is not registered: import the package that "
                         f"defines it before loading (registered: {', '.join(MODELS.names()) or 'none'})")
    mcfg.pop("weights", None)
    model = MODELS.build(mcfg, "model", cfg)
    load_weights(model, weights)
    model.eval()
    cfg["model"] = {**mcfg, "weights": weights}
    return model, cfg
