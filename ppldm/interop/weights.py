"""Reading and writing diffusers / ppdiffusers weight folders (config.json + weights).

Formats read:

* ``diffusion_pytorch_model.safetensors`` (diffusers, or ppdiffusers with ``to_diffusers=True``):
  PyTorch layout, Linear weights stored (out, in).
* ``diffusion_paddle_model.safetensors`` (ppdiffusers' default): Paddle layout, Linear (in, out).
* ``model_state.pdparams`` (ppdiffusers with ``safe_serialization=False``): read with a
  restricted unpickler that only builds NumPy arrays (no code from the file runs).
* ``diffusion_pytorch_model.bin`` (diffusers with ``safe_serialization=False``, a ``torch.save``
  file): read with :func:`ppengine.safe_load.load_torch_checkpoint` (allow-list; no torch, no
  code from the file runs).
* sharded variants with a ``*.index.json``.

The layout is told by the safetensors metadata ``format`` (``pt`` / ``pd``) or the file name.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Tuple

import numpy as np
import paddle.nn as nn

from ppengine.checkpoint import check_state_match, read_pdparams
from ppengine.errors import CheckpointError, InputError

PT_SAFE = "diffusion_pytorch_model.safetensors"
PD_SAFE = "diffusion_paddle_model.safetensors"
PD_PARAMS = "model_state.pdparams"
PT_BIN = "diffusion_pytorch_model.bin"


def _read_pdparams(path: str) -> Dict[str, np.ndarray]:
    if path.endswith(".bin"):
        from ppengine.safe_load import load_torch_checkpoint, torch_state_dict

        return torch_state_dict(load_torch_checkpoint(path), path)
    return read_pdparams(path)


def _read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], str]:
    from safetensors import safe_open

    try:
        out = {}
        with safe_open(path, framework="np") as f:
            fmt = (f.metadata() or {}).get("format")
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot be read as safetensors ({e}); the file may be truncated "
                              "or not a safetensors file. Re-download or re-save it.") from e
    return out, fmt


def _with_variant(name: str, variant) -> str:
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def read_folder_weights(folder: str, variant: str = None) -> Tuple[Dict[str, np.ndarray], str, str]:
    """Find and read the weights in a diffusers/ppdiffusers model folder.

    Args:
        variant: e.g. ``"fp16"`` for ``diffusion_pytorch_model.fp16.safetensors``.
    Returns:
        (name -> array, layout ``"pt"`` or ``"pd"``, file path read).
    """
    candidates = [(_with_variant(n, variant), lay)
                  for n, lay in ((PD_SAFE, "pd"), (PT_SAFE, "pt"), (PD_PARAMS, "pd"), (PT_BIN, "pt"))]
    for name, layout in candidates:
        path = os.path.join(folder, name)
        index = path + ".index.json"
        if os.path.isfile(path):
            if name.endswith(".safetensors"):
                arrays, fmt = _read_safetensors(path)
                return arrays, {"pt": "pt", "pd": "pd"}.get(fmt, layout), path
            return _read_pdparams(path), layout, path
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            arrays, fmt = {}, None
            for shard in shards:
                sp = os.path.join(folder, shard)
                if not os.path.isfile(sp):
                    raise CheckpointError(f"{index} names shard {shard!r}, which is missing from {folder}")
                if shard.endswith(".safetensors"):
                    a, fmt = _read_safetensors(sp)
                else:
                    a = _read_pdparams(sp)
                arrays.update(a)
            return arrays, {"pt": "pt", "pd": "pd"}.get(fmt, layout), index
    present = sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".pdparams", ".bin")))
    hint = f" Weight files present: {', '.join(present)} (pass variant=... for e.g. *.fp16.safetensors)." \
        if present else ""
    raise InputError(f"{folder}: no weights found; expected one of {', '.join(n for n, _ in candidates)} "
                     f"(or a sharded *.index.json).{hint}")


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise InputError(f"{folder}: no config.json. Give a folder written by save_pretrained "
                         "(diffusers / ppdiffusers) or by ppldm.interop.save_unet / save_autoencoder.")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON ({e})") from e


# Old diffusers VAE attention names (before 0.14) -> current names
_LEGACY = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def linear_weight_names(model: nn.Layer):
    return {name + ".weight" for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}


def to_paddle_layout(model: nn.Layer, arrays: Dict[str, np.ndarray], layout: str) -> Dict[str, np.ndarray]:
    """Rename legacy keys and transpose PyTorch-layout Linear weights for ``model``."""
    linear = linear_weight_names(model)
    linear_params = linear | {n[: -len(".weight")] + ".bias" for n in linear}
    out = {}
    for k, v in arrays.items():
        for old, new in _LEGACY.items():
            if old in k and k.replace(old, new) in linear_params:
                k = k.replace(old, new)
        if k in linear:
            if v.ndim == 4 and v.shape[2:] == (1, 1):      # 1x1-conv form of a Linear
                v = v[:, :, 0, 0]
                if layout == "pd":
                    v = v.T
            if layout == "pt" and v.ndim == 2:
                v = v.T
        out[k] = v
    return out


def load_arrays_into(model: nn.Layer, arrays: Dict[str, np.ndarray], source: str, dtype: str = "float32"):
    """Set ``model``'s parameters from ``arrays`` (Paddle layout); a CheckpointError lists missing
    keys, unexpected keys and shape mismatches."""
    own = model.state_dict()
    check_state_match(own, arrays, source, f"the {type(model).__name__} built from its config",
                      "Check that config.json belongs to these weights and that the file is complete.")
    model.set_state_dict({k: arrays[k].astype(dtype) if arrays[k].dtype.kind == "f" else arrays[k] for k in own})
    return model


def write_folder(model: nn.Layer, folder: str, config: dict, layout: str = "pt"):
    """Write ``config.json`` and the weights (``pt``: diffusers file and layout; ``pd``:
    ppdiffusers' Paddle-layout file), each atomically."""
    from safetensors.numpy import save

    from ppengine.checkpoint import atomic_write_bytes, atomic_write_json

    if layout not in ("pt", "pd"):
        raise InputError(f"layout must be 'pt' (diffusers) or 'pd' (ppdiffusers), got {layout!r}")
    linear = linear_weight_names(model)
    arrays = {}
    for k, v in model.state_dict().items():
        a = np.ascontiguousarray(v.numpy())
        if layout == "pt" and k in linear:
            a = np.ascontiguousarray(a.T)
        arrays[k] = a
    os.makedirs(folder, exist_ok=True)
    name = PT_SAFE if layout == "pt" else PD_SAFE
    atomic_write_bytes(os.path.join(folder, name), save(arrays, metadata={"format": layout}))
    atomic_write_json(os.path.join(folder, "config.json"), config)
    return folder
