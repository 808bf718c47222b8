"""FLAME vertex masks (face, eyeballs, ears) of a FLAME-topology head and MICA's per-vertex weights.

    masks = flame_masks(flame)                         # generated model: derived from its geometry
    masks = flame_masks(flame, "FLAME_masks.pkl")      # FLAME 2020: FLAME's vertex masks file
    w = vertex_weights(masks, flame.num_vertices)      # (V,) MICA: whole 1, eyes 0.01, ears 0.01, face 150

FLAME's ``FLAME_masks.pkl`` (FLAME website, "FLAME vertex masks"; MICA keeps a copy in
``data/FLAME2020/FLAME_masks/``) is a pickle of index arrays: ``face``, ``left_eyeball``,
``right_eyeball``, ``left_ear``, ``right_ear``, ``forehead``, ``lips``, ``nose``, ... It is read
through the allow-list unpickler. The generated model has no such file; its regions come from
its own geometry: the eyeballs from the model's ``part_labels``, the face as the skin in front
of the jaw-contour landmarks inside the polygon of the jaw line and the brows raised to the
forehead, the ears where the generator sculpts them (the sides of the head around the ear
centre). A real FLAME model without a masks file is an error: its regions cannot be guessed.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from ppengine.errors import ConfigError, InputError

REGIONS = ("face", "eyes", "ears")
# MICA's mask weights (configs/config.py: cfg.mask_weights), applied in this order
MICA_WEIGHTS = {"whole": 1.0, "eyes": 0.01, "ears": 0.01, "face": 150.0}


def _from_masks_file(path: str, V: int) -> Dict[str, np.ndarray]:
    from ppengine.safe_load import load_pickle

    if not os.path.isfile(path):
        raise InputError(f"model.flame_masks_path: {path!r} not found (FLAME's FLAME_masks.pkl)")
    raw = load_pickle(path)
    need = ("face", "left_eyeball", "right_eyeball", "left_ear", "right_ear")
    if not isinstance(raw, dict) or any(k not in raw for k in need):
        have = sorted(raw)[:10] if isinstance(raw, dict) else type(raw).__name__
        raise InputError(f"{path}: not FLAME's vertex masks file: expected entries {list(need)}, found {have}")
    idx = {k: np.asarray(raw[k], np.int64).reshape(-1) for k in need}
    for k, v in idx.items():
        if v.size and (v.min() < 0 or v.max() >= V):
            raise InputError(f"{path}: mask {k!r} indexes vertex {int(v.max())}, but the FLAME model has {V} vertices "
                             "(a masks file for another topology?)")
    return {"face": np.unique(idx["face"]),
            "eyes": np.unique(np.concatenate([idx["left_eyeball"], idx["right_eyeball"]])),
            "ears": np.unique(np.concatenate([idx["left_ear"], idx["right_ear"]]))}


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _from_geometry(v: np.ndarray, labels: np.ndarray, lm: np.ndarray) -> Dict[str, np.ndarray]:
    """Regions of the generated head from its template ``v`` (V, 3), part labels and its static
    68 landmarks ``lm`` (68, 3) (see the module docstring)."""
    from matplotlib.path import Path

    skin = labels == 0
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    # ears: the generator's ear field (sides of the head, around y 0.006, z -0.014 from the centre)
    side = _smoothstep(0.75, 0.97, np.abs(x) / np.maximum(np.hypot(x, z), 1e-9))
    ear = side * np.exp(-0.5 * (((y - 0.006) / 0.021) ** 2 + ((z + 0.014) / 0.010) ** 2))
    ears = skin & (ear > 0.3)
    # face: inside the jaw line + brows raised by 0.6 x (brow height above the nose tip), in front of the contour
    brows = lm[17:27][::-1].copy()
    brows[:, 1] += 0.6 * (brows[:, 1].mean() - lm[30, 1])
    poly = np.concatenate([lm[0:17, :2], brows[:, :2]], 0)
    inside = Path(poly).contains_points(v[:, :2])
    face = skin & inside & (z > max(lm[0, 2], lm[16, 2])) & ~ears
    return {"face": np.nonzero(face)[0], "eyes": np.nonzero(~skin & (labels <= 2))[0], "ears": np.nonzero(ears)[0]}


_MODEL_ARRAYS: Dict[tuple, dict] = {}


def _model_arrays(path: str) -> dict:
    """The model pickle's template and part labels (read once per file and version)."""
    key = (os.path.abspath(path), os.path.getmtime(path), os.path.getsize(path))
    if key not in _MODEL_ARRAYS:
        from ppengine.safe_load import load_pickle

        raw = load_pickle(path)
        raw = raw if isinstance(raw, dict) else {}
        _MODEL_ARRAYS[key] = {k: raw.get(k) for k in ("v_template", "part_labels")}
    return _MODEL_ARRAYS[key]


def flame_masks(flame, masks_path: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Vertex index arrays 'face', 'eyes' (both eyeballs), 'ears' (both) of a :class:`FLAME` layer."""
    V = int(flame.num_vertices)
    if masks_path:
        return _from_masks_file(os.fspath(masks_path), V)
    raw = _model_arrays(flame.model_path)
    labels = raw.get("part_labels")
    if labels is None:
        raise ConfigError(f"model.flame_masks_path: {flame.model_path} is not the generated model, and the face / "
                          "eye / ear regions of MICA's loss cannot be derived for it: give FLAME's FLAME_masks.pkl "
                          "(FLAME website 'FLAME vertex masks'; MICA ships it in data/FLAME2020/FLAME_masks/)")
    import paddle

    with paddle.no_grad():
        out = flame(shape=paddle.zeros([1, 1]))
    lm = (out.landmarks_full68 if out.landmarks_full68 is not None else out.landmarks).numpy()[0]
    return _from_geometry(np.asarray(raw["v_template"], np.float64), np.asarray(labels), lm)


def vertex_weights(masks: Dict[str, np.ndarray], num_vertices: int, face: float = 150.0, whole: float = 1.0,
                   eyes: float = 0.01, ears: float = 0.01) -> np.ndarray:
    """(V,) float32 MICA weights: ``whole`` everywhere, then ``eyes``, ``ears`` and ``face``
    written over it in that order (MICA's ``Masking.get_weights_per_vertex``)."""
    w = np.full(int(num_vertices), float(whole), np.float32)
    w[masks["eyes"]] = eyes
    w[masks["ears"]] = ears
    w[masks["face"]] = face
    return w
