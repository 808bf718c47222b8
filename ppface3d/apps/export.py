"""Writing reconstruction results people can open: codes (.npz), meshes (.obj + texture +
normal map, .glb), renders (PNG), animations (GIF/MP4). Every file is written atomically."""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import paddle

from ppengine.io import atomic_save
from ppengine.io import save_png as _save_png
from ppengine.io import to_uint8 as _to_uint8


def _atomic(path: str, write):
    return atomic_save(path, write)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) float [0, 1] (or (3, H, W)) -> uint8."""
    return _to_uint8(img, (0.0, 1.0))


def save_png(path: str, img: np.ndarray) -> str:
    return _save_png(path, img)


def save_codes(path: str, codes: Dict[str, np.ndarray], **extra) -> str:
    arrays = {k: np.asarray(v) for k, v in codes.items()}
    arrays.update({k: np.asarray(v) for k, v in extra.items() if v is not None})

    def w(t):
        with open(t, "wb") as f:
            np.savez(f, **arrays)

    return _atomic(path, w)


def save_animation(path: str, frames, fps: int = 12) -> str:
    """Frames (list of (H, W, 3)) -> GIF or MP4 (by extension) through imageio."""
    import imageio.v3 as iio

    frames = [to_uint8(f) for f in frames]
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gif":
        return _atomic(path, lambda t: iio.imwrite(t, np.stack(frames), extension=".gif",
                                                   duration=1000.0 / fps, loop=0))
    # MP4 (or another video container) through imageio-ffmpeg; even sizes for yuv420p
    h, w = frames[0].shape[:2]
    frames = [f[: h - h % 2, : w - w % 2] for f in frames]
    return _atomic(path, lambda t: _ffmpeg_write(t, frames, fps))


def _ffmpeg_write(path, frames, fps):
    import imageio.v2 as iio2

    with iio2.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=1) as w:
        for f in frames:
            w.append_data(f)


def uv_normal_map(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, uv_faces: np.ndarray,
                  size: int = 256) -> np.ndarray:
    """Object-space normal map in UV: (size, size, 3) float in [0, 1] ((n + 1) / 2).

    The mesh is rasterised in UV space with the project's rasterizer; each texel interpolates
    the vertex normals of its triangle.
    """
    from ..render import rasterize
    from ..render.interpolate import interpolate
    from ..render.mesh import vertex_normals

    v = paddle.to_tensor(np.asarray(vertices, np.float32)[None])
    f = paddle.to_tensor(np.asarray(faces, np.int64))
    n = vertex_normals(v, f)[0].numpy()
    uv = np.asarray(uv, np.float32)
    uvf = np.asarray(uv_faces, np.int64)
    screen = np.stack([uv[:, 0] * 2 - 1, (1 - uv[:, 1]) * 2 - 1, np.full(len(uv), 0.5)], 1).astype(np.float32)
    frags = rasterize(paddle.to_tensor(screen[None]), paddle.to_tensor(uvf), (size, size))
    corner_n = paddle.to_tensor(n[np.asarray(faces)][None].astype(np.float32))  # (1, F, 3, 3)
    img = interpolate(frags, corner_n, None)[0].numpy()
    norm = np.linalg.norm(img, axis=-1, keepdims=True)
    img = np.where(norm > 1e-8, img / np.maximum(norm, 1e-8), 0.0)
    covered = frags.mask[0].numpy()[..., None] > 0
    return np.where(covered, (img + 1) / 2, 0.5).astype(np.float32)


def blend_normal_map(coarse: np.ndarray, detail: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """A (T, T, 3) normal map in [0, 1]: ``detail`` (D, D, 3, also in [0, 1]) resized to T where
    ``weight`` (D, D) is 1, ``coarse`` elsewhere (a detail branch's map in an OBJ's normal map)."""
    T = coarse.shape[0]
    both = np.concatenate([detail, np.asarray(weight, np.float32)[..., None]], -1).transpose(2, 0, 1)[None]
    both = paddle.nn.functional.interpolate(paddle.to_tensor(np.ascontiguousarray(both, np.float32)), size=[T, T],
                                            mode="bilinear").numpy()[0].transpose(1, 2, 0)
    w = np.clip(both[..., 3:], 0.0, 1.0)
    return (both[..., :3] * w + coarse * (1.0 - w)).astype(np.float32)


def split_uv_vertices(vertices, faces, uv, uv_faces):
    """Per-corner (vertex, uv) pairs made unique, for formats with one UV per vertex (GLB).

    Returns (vertices (N, 3), uv (N, 2), faces (F, 3)).
    """
    faces, uv_faces = np.asarray(faces), np.asarray(uv_faces)
    pairs = np.stack([faces.reshape(-1), uv_faces.reshape(-1)], 1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    return np.asarray(vertices)[uniq[:, 0]], np.asarray(uv)[uniq[:, 1]], inv.reshape(-1, 3)


def save_obj(path: str, vertices, faces, uv=None, uv_faces=None, texture: Optional[np.ndarray] = None,
             normal_map: Optional[np.ndarray] = None) -> str:
    """OBJ with UVs; with ``texture`` also writes ``<name>.png`` and ``<name>.mtl`` (and the
    normal map as ``<name>_normals.png``, referenced as ``norm``/``map_Bump``)."""
    base = os.path.splitext(path)[0]
    name = os.path.basename(base)
    lines = []
    if texture is not None:
        save_png(base + ".png", texture)
        mtl = ["newmtl FaceTexture", "Ka 1 1 1", "Kd 1 1 1", "Ks 0 0 0", "illum 1", f"map_Kd {name}.png"]
        if normal_map is not None:
            save_png(base + "_normals.png", normal_map)
            mtl += [f"norm {name}_normals.png", f"map_Bump {name}_normals.png"]
        _atomic(base + ".mtl", lambda t: open(t, "w").write("\n".join(mtl) + "\n"))
        lines += [f"mtllib {name}.mtl", "usemtl FaceTexture"]
    v = np.asarray(vertices, np.float64)
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in v]
    f = np.asarray(faces, np.int64) + 1
    if uv is not None:
        lines += [f"vt {a:.6f} {b:.6f}" for a, b in np.asarray(uv)]
        ft = np.asarray(uv_faces, np.int64) + 1
        lines += [f"f {a}/{x} {b}/{y} {c}/{z}" for (a, b, c), (x, y, z) in zip(f, ft)]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in f]
    return _atomic(path, lambda t: open(t, "w").write("\n".join(lines) + "\n"))


def save_glb(path: str, vertices, faces, uv, uv_faces, texture: np.ndarray) -> str:
    """Binary glTF with the texture embedded, through trimesh."""
    import trimesh
    from PIL import Image

    v, t, f = split_uv_vertices(vertices, faces, uv, uv_faces)
    mat = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(to_uint8(texture)),
                                              metallicFactor=0.0, roughnessFactor=1.0)
    mesh = trimesh.Trimesh(vertices=v, faces=f, visual=trimesh.visual.TextureVisuals(uv=t, material=mat),
                           process=False)
    data = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh))

    def w(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)

    return _atomic(path, w)
