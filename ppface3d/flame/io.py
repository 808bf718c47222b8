"""Reading and writing FLAME-format files, with checks that name the file and what was expected.

Model pickles (FLAME 2020 ``generic_model.pkl`` / ``male_model.pkl`` / ``female_model.pkl``,
FLAME 2023 pickles, the generated default) hold, with V vertices, F faces and J=5 joints::

    v_template    (V, 3)            mean head
    shapedirs     (V, 3, 300 + 100) shape then expression directions (fewer are accepted)
    posedirs      (V, 3, 36)        pose correctives, 9 entries of (R - I) for joints 1..4
    J_regressor   (J, V)            dense or scipy sparse
    weights       (V, J)            linear blend skinning weights
    kintree_table (2, J)            row 0: parent of each joint (root: any value)
    f             (F, 3)            triangles
    vt, ft        (T, 2), (F, 3)    optional UV layout (else ``head_template.obj`` beside it)

Landmark embeddings: DECA's ``landmark_embedding.npy`` (one dict) or RingNet/TF_FLAME's
``flame_static_embedding*.pkl`` (+ ``flame_dynamic_embedding.npy``). Both are returned as
:class:`LandmarkEmbedding` with face indices and barycentric coordinates.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from ppengine.errors import InputError
from ppengine.io import atomic_write_bytes
from ppengine.safe_load import load_npy, load_pickle

FLAME_SOURCE_HINT = (
    "FLAME is licensed and cannot ship with this library: register and download it at "
    "https://flame.is.tue.mpg.de (FLAME 2020: generic_model.pkl; FLAME 2023), and DECA's "
    "landmark_embedding.npy from https://github.com/yfeng95/DECA (data/). Without a path, "
    "ppface3d.flame.FLAME() uses the generated FLAME-format default model."
)

NUM_JOINTS = 5


@dataclass
class LandmarkEmbedding:
    """Landmarks as barycentric points on mesh faces.

    static_faces (51,), static_bary (51, 3): the 51 inner-face points (iBUG 17..67).
    dynamic_faces (79, 17), dynamic_bary (79, 17, 3): contour (iBUG 0..16) by yaw row;
        rows 0..39 for yaw 0..39 degrees, rows 40..78 for yaw -1..-39 degrees.
    full_faces (68,), full_bary (68, 3): a static 68-point embedding, or None.
    convention: 'deca' or 'smplx', the yaw convention the contour table was built for.
    """

    static_faces: np.ndarray
    static_bary: np.ndarray
    dynamic_faces: Optional[np.ndarray] = None
    dynamic_bary: Optional[np.ndarray] = None
    full_faces: Optional[np.ndarray] = None
    full_bary: Optional[np.ndarray] = None
    convention: str = "deca"


def _fail(path, msg):
    raise InputError(f"{path}: {msg}. {FLAME_SOURCE_HINT}")


def _dense(x):
    if hasattr(x, "toarray"):
        return np.asarray(x.toarray())
    return np.asarray(x)


def _check(path, key, arr, ndim, shape_desc, cond=True):
    if arr.ndim != ndim or not cond:
        _fail(path, f"'{key}' should have shape {shape_desc}, found {tuple(arr.shape)}")


def load_flame_model(path: str) -> Dict[str, np.ndarray]:
    """Read and check a FLAME model pickle (or ``.npz``); return a dict of float64/int64 arrays.

    Keys: v_template (V,3), shapedirs (V,3,K), posedirs (V,3,36), J_regressor (5,V),
    weights (V,5), parents (5,) with parents[0] = -1, f (F,3), and vt (T,2), ft (F,3) or None.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        _fail(path, "FLAME model file not found")
    if os.path.isdir(path):
        cands = [n for n in ("generic_model.pkl", "flame2023.pkl", "FLAME_NEUTRAL.pkl") if os.path.isfile(os.path.join(path, n))]
        if not cands:
            _fail(path, "is a folder without generic_model.pkl / flame2023.pkl / FLAME_NEUTRAL.pkl; give the model file itself")
        path = os.path.join(path, cands[0])
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001
            _fail(path, f"not a readable .npz ({e})")
    else:
        raw = load_pickle(path)
    if not isinstance(raw, dict):
        _fail(path, f"expected a pickled dict of arrays, found {type(raw).__name__}")
    need = ["v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f"]
    missing = [k for k in need if k not in raw]
    if missing:
        _fail(path, f"missing key(s) {missing}; a FLAME model has {need}")
    out = {}
    try:
        v = np.asarray(raw["v_template"], dtype=np.float64)
        _check(path, "v_template", v, 2, "(V, 3)", v.ndim == 2 and v.shape[1] == 3)
        V = v.shape[0]
        sd = np.asarray(raw["shapedirs"], dtype=np.float64)
        if sd.ndim == 2 and sd.shape[:2] == (V, 3):
            sd = sd[:, :, None]
        _check(path, "shapedirs", sd, 3, f"({V}, 3, K) (300 shape + 100 expression in FLAME 2020)", sd.shape[:2] == (V, 3))
        pd = np.asarray(raw["posedirs"], dtype=np.float64)
        _check(path, "posedirs", pd, 3, f"({V}, 3, 36)", pd.shape == (V, 3, 9 * (NUM_JOINTS - 1)))
        jr = _dense(raw["J_regressor"]).astype(np.float64)
        _check(path, "J_regressor", jr, 2, f"({NUM_JOINTS}, {V})", jr.shape == (NUM_JOINTS, V))
        w = np.asarray(raw["weights"], dtype=np.float64)
        _check(path, "weights", w, 2, f"({V}, {NUM_JOINTS})", w.shape == (V, NUM_JOINTS))
        kt = np.asarray(raw["kintree_table"]).astype(np.int64)
        _check(path, "kintree_table", kt, 2, f"(2, {NUM_JOINTS})", kt.shape == (2, NUM_JOINTS))
        f = np.asarray(raw["f"]).astype(np.int64)
        _check(path, "f", f, 2, "(F, 3)", f.ndim == 2 and f.shape[1] == 3)
    except InputError:
        raise
    except (TypeError, ValueError) as e:
        _fail(path, f"an entry is not a numeric array ({e})")
    if f.size and (f.min() < 0 or f.max() >= V):
        _fail(path, f"'f' indexes vertices outside 0..{V - 1}")
    for name, arr in (("v_template", v), ("shapedirs", sd), ("posedirs", pd), ("weights", w)):
        if not np.all(np.isfinite(arr)):
            _fail(path, f"'{name}' contains NaN or Inf")
    parents = kt[0].copy()
    parents[0] = -1
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, NUM_JOINTS)):
        _fail(path, f"'kintree_table' row 0 should list each joint's parent before it, found {kt[0].tolist()}")
    out.update(v_template=v, shapedirs=sd, posedirs=pd, J_regressor=jr, weights=w, parents=parents, f=f)
    vt = raw.get("vt")
    ft = raw.get("ft")
    if vt is None or ft is None:
        obj = os.path.join(os.path.dirname(path), "head_template.obj")
        if os.path.isfile(obj):
            vt, ft = read_obj_uv(obj)
    if vt is not None and ft is not None:
        vt = np.asarray(vt, dtype=np.float64)
        ft = np.asarray(ft).astype(np.int64)
        if vt.ndim != 2 or vt.shape[1] != 2 or ft.shape != f.shape or ft.min() < 0 or ft.max() >= len(vt):
            _fail(path, f"UV layout should be vt (T, 2) and ft {f.shape} indexing vt, found {vt.shape}, {ft.shape}")
    out["vt"], out["ft"] = vt, ft
    return out


def read_obj_uv(path: str):
    """UV coordinates (T,2) and UV faces (F,3) from an OBJ with ``vt`` and ``f v/vt`` lines."""
    vt, ft = [], []
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("vt "):
                    vt.append([float(x) for x in line.split()[1:3]])
                elif line.startswith("f "):
                    ids = [p.split("/") for p in line.split()[1:4]]
                    if len(ids[0]) < 2 or not ids[0][1]:
                        return None, None
                    ft.append([int(p[1]) - 1 for p in ids])
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: could not read UV coordinates from this OBJ ({e})") from e
    if not vt or not ft:
        return None, None
    return np.asarray(vt), np.asarray(ft)


def _lmk_arrays(path, d, fkey, bkey, shape_f):
    if fkey not in d or bkey not in d:
        _fail(path, f"missing '{fkey}' / '{bkey}'; found keys {sorted(d)}")
    fi = np.asarray(d[fkey]).astype(np.int64).reshape(shape_f) if np.asarray(d[fkey]).size == int(np.prod(shape_f)) else None
    if fi is None:
        _fail(path, f"'{fkey}' should have {int(np.prod(shape_f))} entries {shape_f}, found shape {np.asarray(d[fkey]).shape}")
    b = np.asarray(d[bkey], dtype=np.float64)
    if b.size != fi.size * 3:
        _fail(path, f"'{bkey}' should have shape {shape_f + (3,)}, found {b.shape}")
    return fi, b.reshape(shape_f + (3,))


def load_landmark_embedding(path: str, dynamic_path: Optional[str] = None) -> LandmarkEmbedding:
    """Read DECA's ``landmark_embedding.npy`` or RingNet's ``flame_static_embedding*.pkl``.

    For a RingNet static file, the contour table is read from ``dynamic_path`` or, when not
    given, from ``flame_dynamic_embedding.npy`` beside it. DECA files use the 'deca' yaw
    convention, RingNet files the 'smplx' one (see docs/flame.md).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        _fail(path, "landmark embedding file not found")
    data = load_npy(path) if path.endswith(".npy") else load_pickle(path)
    if not isinstance(data, dict):
        _fail(path, f"expected a dict of arrays, found {type(data).__name__}")
    if "static_lmk_faces_idx" in data:  # DECA format
        sf, sb = _lmk_arrays(path, data, "static_lmk_faces_idx", "static_lmk_bary_coords", (51,))
        df, db = _lmk_arrays(path, data, "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords", (79, 17))
        ff = fb = None
        if "full_lmk_faces_idx" in data:
            ff, fb = _lmk_arrays(path, data, "full_lmk_faces_idx", "full_lmk_bary_coords", (68,))
        return LandmarkEmbedding(sf, sb, df, db, ff, fb, convention="deca")
    if "lmk_face_idx" in data:  # RingNet / TF_FLAME format
        n = np.asarray(data["lmk_face_idx"]).size
        if n not in (51, 68):
            _fail(path, f"'lmk_face_idx' should have 51 (or 68) entries, found {n}")
        sf, sb = _lmk_arrays(path, data, "lmk_face_idx", "lmk_b_coords", (n,))
        ff = fb = None
        if n == 68:
            ff, fb = sf, sb
            sf, sb = sf[17:], sb[17:]
        dyn = dynamic_path or os.path.join(os.path.dirname(path), "flame_dynamic_embedding.npy")
        df = db = None
        if dynamic_path is not None or os.path.isfile(dyn):
            dd = load_npy(dyn)
            if not isinstance(dd, dict):
                _fail(dyn, f"expected a dict of arrays, found {type(dd).__name__}")
            df, db = _lmk_arrays(dyn, dd, "lmk_face_idx", "lmk_b_coords", (79, 17))
        return LandmarkEmbedding(sf, sb, df, db, ff, fb, convention="smplx")
    _fail(path, "is neither DECA's landmark_embedding.npy (keys static_lmk_faces_idx, ...) nor a "
          f"RingNet flame_static_embedding.pkl (keys lmk_face_idx, lmk_b_coords); found keys {sorted(data)}")


def check_embedding(emb: LandmarkEmbedding, num_faces: int, source: str):
    for name in ("static_faces", "dynamic_faces", "full_faces"):
        a = getattr(emb, name)
        if a is not None and (a.min() < 0 or a.max() >= num_faces):
            raise InputError(f"{source}: landmark {name} index faces outside 0..{num_faces - 1}: this embedding "
                             "belongs to another mesh topology than the model file. " + FLAME_SOURCE_HINT)


# --------------------------------------------------------------------------- writers
def save_pickle(path: str, obj):
    atomic_write_bytes(path, pickle.dumps(obj, protocol=2))


def save_npy(path: str, obj):
    import io

    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    atomic_write_bytes(path, buf.getvalue())


def write_obj(path: str, vertices, faces, uv=None, uv_faces=None):
    """Write a triangle mesh (and its UV layout) as a Wavefront OBJ, atomically."""
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(vertices)]
    if uv is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in np.asarray(uv)]
        lines += [f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
                  for (a, b, c), (ta, tb, tc) in zip(np.asarray(faces), np.asarray(uv_faces))]
    else:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces)]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
