"""Run an exported folder: each component's graph on onnxruntime or Paddle Inference, by name.

    graphs = ExportedGraphs("output/export/digits", backend="onnxruntime")
    out = graphs.run("unet", {"sample": x, "timestep": t, "encoder_hidden_states": c})   # any batch
    graphs.manifest["pipeline"]                     # the zoo's facts (scheduler, latent scale, ...)

The graphs have a fixed batch (the manifest's shapes); :meth:`ExportedGraphs.run` splits a larger
batch into pieces of that size (the last padded by repeating its final item), so callers pass any
batch along axis 0 of every input.

:func:`export_cache_dir` keys a cache folder by the model's weights and config, so a command that
samples through exported graphs exports once and reuses the files afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional

import numpy as np

from ..errors import ExportError, InputError

BACKENDS = ("onnxruntime", "paddle-inference")
TARGET_OF = {"onnxruntime": "onnx", "paddle-inference": "paddle"}


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise InputError(f"{folder!r} holds no manifest.json: give a folder written by tools/export.py")
    with open(path) as f:
        return json.load(f)


class ExportedGraphs:
    """The components of an export folder on one backend.

    Args:
        folder: written by :func:`ppengine.export.export` (its ``manifest.json``).
        backend: ``onnxruntime`` (the ``onnx/`` files) or ``paddle-inference`` (the ``paddle/`` programs).
        threads: CPU threads per graph.
        onednn: Paddle Inference only: oneDNN kernels (see :mod:`.paddle_target`).
    """

    def __init__(self, folder: str, backend: str = "onnxruntime", threads: int = 1, onednn: bool = False):
        if backend not in BACKENDS:
            raise InputError(f"backend {backend!r}: choose from {', '.join(BACKENDS)}")
        self.folder, self.backend, self.threads, self.onednn = folder, backend, int(threads), bool(onednn)
        self.manifest = read_manifest(folder)
        self._runners = {}

    def has(self, name: str) -> bool:
        entry = self.manifest["components"].get(name)
        return entry is not None and TARGET_OF[self.backend] in entry.get("files", {})

    def spec(self, name: str) -> dict:
        if name not in self.manifest["components"]:
            raise ExportError(f"{self.folder}: no component {name!r} (has: {', '.join(self.manifest['components'])})")
        return self.manifest["components"][name]

    def runner(self, name: str):
        if name not in self._runners:
            entry = self.spec(name)
            files = entry.get("files", {}).get(TARGET_OF[self.backend])
            if not files:
                raise ExportError(f"{self.folder}: component {name!r} was not exported for {self.backend} "
                                  f"(--target {TARGET_OF[self.backend]})")
            path = os.path.join(self.folder, files[0])
            if self.backend == "onnxruntime":
                from .onnx_target import OrtRunner

                self._runners[name] = OrtRunner(path, self.threads)
            else:
                from .paddle_target import PaddleInferenceRunner

                self._runners[name] = PaddleInferenceRunner(path[: -len(".json")], [o["name"] for o in entry["outputs"]],
                                                            self.threads, self.onednn)
        return self._runners[name]

    def run(self, name: str, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run component ``name`` on ``feeds`` of any batch (axis 0 of every input)."""
        entry = self.spec(name)
        run = self.runner(name)
        ins = entry["inputs"]
        arrays = {}
        for t in ins:
            if t["name"] not in feeds:
                raise ExportError(f"component {name!r}: input {t['name']!r} missing")
            a = np.asarray(feeds[t["name"]]).astype(t["dtype"], copy=False)
            if list(a.shape[1:]) != list(t["shape"][1:]):
                raise InputError(f"component {name!r}: input {t['name']!r} must be (B, {', '.join(map(str, t['shape'][1:]))})"
                                 f", got {list(a.shape)}")
            arrays[t["name"]] = a
        gb = int(ins[0]["shape"][0])
        n = int(next(iter(arrays.values())).shape[0])
        if n == gb:
            return run(arrays)
        pieces = []
        for s in range(0, n, gb):
            part = {k: v[s:s + gb] for k, v in arrays.items()}
            m = next(iter(part.values())).shape[0]
            if m < gb:
                part = {k: np.concatenate([v, np.repeat(v[-1:], gb - m, 0)]) for k, v in part.items()}
            out = run(part)
            pieces.append({k: v[:m] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def weights_digest(model, extra: Optional[dict] = None) -> str:
    """A short hash of every tensor of ``model``'s state and ``extra`` (config, options)."""
    h = hashlib.blake2b(digest_size=10)
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        a = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        h.update(str(a.shape).encode() + str(a.dtype).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def export_cache_dir(model, config: Optional[dict] = None, options: Optional[dict] = None, root: str = None) -> str:
    """The cache folder of ``model`` (weights + config + export options): ``root`` (default
    ``~/.cache/ppdigitalhuman/export``) / ``<model type>-<hash>``."""
    root = root or os.path.join(os.path.expanduser("~"), ".cache", "ppdigitalhuman", "export")
    key = weights_digest(model, {"config": dict(config or {}), "options": dict(options or {})})
    return os.path.join(root, f"{type(model).__name__}-{key}")
