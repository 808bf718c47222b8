"""Checkpoints: safetensors weights + a JSON trainer state, written atomically.

A checkpoint is a folder ``ckpt_00000200/`` holding ``model.safetensors``,
``optimizer.safetensors`` (optimizer accumulators), optionally ``ema.safetensors``, and
``state.json`` (step, scheduler/optimizer scalars, data position, RNG scheme). The folder is
written under a temporary name and renamed into place, so a process killed mid-write leaves
the previous checkpoints untouched and never a half-written one under a final name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Dict, Optional

import numpy as np

from .errors import CheckpointError
from .io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401  (re-exported)

CKPT_RE = re.compile(r"^ckpt_(\d{8})$")


# ----------------------------------------------------------------------------- tensors <-> files
def to_numpy(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    if hasattr(t, "numpy"):
        return np.ascontiguousarray(t.numpy())
    return np.asarray(t)


def save_tensors(path: str, tensors: Dict[str, "object"], metadata: Optional[Dict[str, str]] = None):
    """Save a name -> tensor/array mapping as safetensors, atomically."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in tensors.items()}
    atomic_write_bytes(path, save(arrays, metadata=metadata))


def load_tensors(path: str) -> Dict[str, np.ndarray]:
    """Read a safetensors file into NumPy arrays; a missing or corrupt file is a CheckpointError."""
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path!r}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncation/corruption
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}). "
                              f"It may be truncated; re-export it or pick an earlier checkpoint.") from None


def save_weights(path: str, model, metadata: Optional[Dict[str, str]] = None):
    """Save ``model.state_dict()`` (structured names) as safetensors."""
    save_tensors(path, dict(model.state_dict()), metadata)


def read_pdparams(path: str) -> Dict[str, np.ndarray]:
    """Read a Paddle ``.pdparams`` state dict without running code from it (arrays only)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path!r}")
    from .safe_load import loads

    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = loads(data, path)  # the one allow-list unpickler: arrays and plain containers only
    except Exception as e:  # noqa: BLE001 - any failure is a bad file for the user
        raise CheckpointError(f"{path}: not a Paddle state dict of arrays ({e}). Save the weights as "
                              "safetensors instead.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    return {k: np.asarray(v) for k, v in obj.items() if isinstance(v, np.ndarray)}


def read_weights(path: str) -> Dict[str, np.ndarray]:
    """A ``.safetensors`` or ``.pdparams`` weights file -> name -> array (no pickle code runs)."""
    if path.endswith(".pdparams"):
        return read_pdparams(path)
    return load_tensors(path)


def check_state_match(own: Dict[str, object], arrays: Dict[str, np.ndarray], source: str, target: str,
                      hint: str, strict: bool = True):
    """Raise CheckpointError listing missing keys, unexpected keys and shape mismatches."""
    missing = sorted(k for k in own if k not in arrays)
    unexpected = sorted(k for k in arrays if k not in own)
    bad_shape = [f"{k}: file {tuple(arrays[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in sorted(own) if k in arrays and tuple(arrays[k].shape) != tuple(own[k].shape)]
    if bad_shape or (strict and (missing or unexpected)):
        def show(items):
            return "\n    " + "\n    ".join(items[:20]) + (f"\n    ... ({len(items) - 20} more)" if len(items) > 20 else "")

        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}):{show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}):{show(unexpected)}")
        if bad_shape:
            parts.append(f"shape mismatches ({len(bad_shape)}):{show(bad_shape)}")
        raise CheckpointError(f"{source} does not match {target}:\n  " + "\n  ".join(parts) + f"\n{hint}")
    return missing, unexpected


def load_weights(model, path_or_arrays, strict: bool = True) -> Dict[str, list]:
    """Load safetensors (or ``.pdparams``) weights into ``model``.

    A key the model lacks, a key the file lacks (with ``strict``) or a shape mismatch is a
    CheckpointError listing them all. Returns ``{"missing": [...], "unexpected": [...]}``.
    """
    import paddle

    arrays = read_weights(path_or_arrays) if isinstance(path_or_arrays, str) else path_or_arrays
    where = path_or_arrays if isinstance(path_or_arrays, str) else "weights"
    own = model.state_dict()
    missing, unexpected = check_state_match(
        own, arrays, where, type(model).__name__,
        "Check that the config's model section matches the one the weights were trained with.", strict)
    for k, t in own.items():
        if k in arrays:
            t.set_value(paddle.to_tensor(arrays[k]).astype(t.dtype))
    return {"missing": missing, "unexpected": unexpected}


# ----------------------------------------------------------------------------- optimizer state
def _param_name_map(model) -> Dict[str, str]:
    """Paddle's run-time parameter names (``linear_3.w_0``) -> structured names (``fc.weight``)."""
    return {p.name: n for n, p in model.named_parameters()}


def optimizer_state(opt, model, prefix: str):
    """Split ``opt.state_dict()`` into tensors keyed by structured parameter names + JSON scalars."""
    names = _param_name_map(model)
    by_len = sorted(names, key=len, reverse=True)
    tensors, meta = {}, {}
    for k, v in opt.state_dict().items():
        if hasattr(v, "numpy"):
            key = k
            for pn in by_len:  # accumulator keys look like "<param.name>_<acc>_0"
                if k.startswith(pn + "_"):
                    key = "@" + names[pn] + k[len(pn):]
                    break
            tensors[f"{prefix}/{key}"] = v
        elif k == "master_weights" and isinstance(v, dict):
            for mk, mv in v.items():
                tensors[f"{prefix}/master/{names.get(mk, mk)}"] = mv
        else:
            meta[k] = v
    return tensors, meta


def restore_optimizer(opt, model, prefix: str, arrays: Dict[str, np.ndarray], meta: dict):
    import paddle

    names = {n: p.name for n, p in model.named_parameters()}
    by_len = sorted(names, key=len, reverse=True)
    state, master = {}, {}
    for k, v in arrays.items():
        if not k.startswith(prefix + "/"):
            continue
        key = k[len(prefix) + 1:]
        if key.startswith("master/"):
            n = key[len("master/"):]
            master[names.get(n, n)] = paddle.to_tensor(v)
            continue
        if key.startswith("@"):
            rest = key[1:]
            for n in by_len:
                if rest.startswith(n + "_"):
                    key = names[n] + rest[len(n):]
                    break
        state[key] = paddle.to_tensor(v)
    state.update(meta)
    if master:
        state["master_weights"] = master
    opt.set_state_dict(state)


# ----------------------------------------------------------------------------- checkpoint folders
class CheckpointManager:
    """Writes ``ckpt_XXXXXXXX`` folders under ``root`` and keeps the last ``keep_last``."""

    def __init__(self, root: str, keep_last: int = 3):
        self.root = root
        self.keep_last = max(1, int(keep_last))

    def list(self):
        if not os.path.isdir(self.root):
            return []
        out = []
        for d in os.listdir(self.root):
            m = CKPT_RE.match(d)
            if m and os.path.isfile(os.path.join(self.root, d, "state.json")):
                out.append((int(m.group(1)), os.path.join(self.root, d)))
        return [p for _, p in sorted(out)]

    @staticmethod
    def is_checkpoint(path: str) -> bool:
        """Is ``path`` a complete ``ckpt_XXXXXXXX`` folder?"""
        return bool(CKPT_RE.match(os.path.basename(os.path.normpath(path)))) and os.path.isfile(
            os.path.join(path, "state.json"))

    def latest(self) -> Optional[str]:
        ckpts = self.list()
        return ckpts[-1] if ckpts else None

    def save(self, step: int, files: Dict[str, Dict[str, object]], state: dict) -> str:
        """``files``: file stem -> tensors. Written into a temp folder, then renamed into place."""
        os.makedirs(self.root, exist_ok=True)
        for d in os.listdir(self.root):  # leftovers of a killed write
            if d.startswith(".tmp_ckpt_"):
                shutil.rmtree(os.path.join(self.root, d), ignore_errors=True)
        final = os.path.join(self.root, f"ckpt_{step:08d}")
        with atomic_dir(final, prefix=f".tmp_ckpt_{step:08d}_") as tmp:
            for stem, tensors in files.items():
                save_tensors(os.path.join(tmp, f"{stem}.safetensors"), tensors)
            atomic_write_json(os.path.join(tmp, "state.json"), state)
        for old in self.list()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: str):
        """-> (state dict, {stem: arrays}). A folder that is not a complete checkpoint is an error."""
        sp = os.path.join(path, "state.json")
        if not os.path.isfile(sp):
            raise CheckpointError(f"{path!r} is not a checkpoint folder (no state.json). "
                                  f"Pass a ckpt_XXXXXXXX folder or the run's output folder.")
        try:
            with open(sp, "r", encoding="utf-8") as f:
                state = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{sp}: corrupt trainer state ({e})") from None
        files = {}
        for fn in os.listdir(path):
            if fn.endswith(".safetensors"):
                files[fn[: -len(".safetensors")]] = load_tensors(os.path.join(path, fn))
        return state, files


def resolve_resume(path: str) -> str:
    """A checkpoint folder, or a run folder whose latest checkpoint is taken."""
    if os.path.isfile(os.path.join(path, "state.json")):
        return path
    latest = CheckpointManager(path).latest()
    if latest is None:
        raise CheckpointError(f"--resume {path!r}: no checkpoint found there (expected ckpt_XXXXXXXX/state.json)")
    return latest
