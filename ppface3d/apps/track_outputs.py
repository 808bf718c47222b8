"""Files written from a tracking result (:mod:`ppface3d.apps.track`).

| file | content |
|---|---|
| ``tracking.npz`` | per frame: exp (T, n_exp), pose (T, 6) [global, jaw axis-angle], cam (T, 3) in the clip crop (``clip_tform``, 224 px), found (T,), time (T,) s, box (T, 4) and the detected landmarks68 (T, 68, 2) in photo pixels; once: shape, tex, light, keyframes, frame_size, rotation |
| ``flame_params.npz`` | FLAME parameters in the layout FLAME tools read: shape (n_shape,), expression (T, n_exp), global_pose / neck_pose / jaw_pose (T, 3), eye_pose (T, 6), transl (T, 3) in model units (the camera's shift; depth 0), times (T,), fps |
| ``flame_params.csv`` | the same, one row per frame: frame, time, found, global_pose_0..2, jaw_pose_0..2, transl_0..2, scale, exp_0..n |
| ``tracking.glb`` | the head of every frame (one mesh per frame, posed and moved), shown in turn by a step animation on the frames' times (glTF 2.0: Blender, three.js, trimesh) |
| ``overlay.mp4`` | the input beside the tracked mesh drawn over it, at the input's frame times, with its audio |
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
from typing import Dict

import numpy as np

from ppengine.io import atomic_save


def _posed(tracker, result, idx):
    """(len(idx), V, 3) world vertices of frames ``idx`` (head pose applied, camera shift added)."""
    import paddle

    t = lambda a: paddle.to_tensor(np.asarray(a, np.float32))  # noqa: E731
    with paddle.no_grad():
        v = tracker.face.decode({"shape": t(result["shape"]).expand([len(idx), result["shape"].shape[1]]),
                                 "exp": t(result["exp"][idx]), "pose": t(result["pose"][idx])})["vertices"].numpy()
    shift = np.zeros((len(idx), 1, 3), np.float32)
    shift[:, 0, :2] = result["cam"][idx, 1:]
    return v + shift


def save_params(folder: str, result: Dict[str, np.ndarray]) -> Dict[str, str]:
    """flame_params.npz and flame_params.csv (see the module docstring)."""
    T = len(result["time"])
    transl = np.zeros((T, 3), np.float32)
    transl[:, :2] = result["cam"][:, 1:]
    times = np.asarray(result["time"], np.float64)
    fps = (T - 1) / (times[-1] - times[0]) if T > 1 and times[-1] > times[0] else 25.0
    flame = dict(shape=result["shape"][0], expression=result["exp"], global_pose=result["pose"][:, :3],
                 neck_pose=np.zeros((T, 3), np.float32), jaw_pose=result["pose"][:, 3:],
                 eye_pose=np.zeros((T, 6), np.float32), transl=transl, scale=result["cam"][:, 0], times=times,
                 fps=np.float64(fps))
    p_npz = os.path.join(folder, "flame_params.npz")

    def w_npz(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **flame)

    atomic_save(p_npz, w_npz)
    n_exp = result["exp"].shape[1]
    head = (["frame", "time", "found"] + [f"global_pose_{i}" for i in range(3)] + [f"jaw_pose_{i}" for i in range(3)]
            + [f"transl_{i}" for i in range(3)] + ["scale"] + [f"exp_{i}" for i in range(n_exp)])
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(head)
    for i in range(T):
        wr.writerow([i, f"{times[i]:.6f}", int(result["found"][i])]
                    + [f"{x:.6g}" for x in np.concatenate([result["pose"][i, :3], result["pose"][i, 3:], transl[i],
                                                           result["cam"][i, :1], result["exp"][i]])])
    p_csv = os.path.join(folder, "flame_params.csv")
    atomic_save(p_csv, lambda tmp: open(tmp, "w", newline="").write(buf.getvalue()))
    return {"flame": p_npz, "csv": p_csv}


def save_frame_meshes_glb(path: str, vertices: np.ndarray, faces: np.ndarray, times: np.ndarray) -> str:
    """Animated glTF 2.0 binary: one mesh node per frame (vertices (T, V, 3), shared faces),
    each scaled to 1 at its own time and 0 at the others (STEP interpolation)."""
    T, V = vertices.shape[:2]
    faces = np.asarray(faces, np.uint32)
    chunks, views, accessors = [], [], []

    def add(data: np.ndarray, target=None, **acc):
        off = sum(len(c) for c in chunks)
        raw = np.ascontiguousarray(data).tobytes()
        raw += b"\0" * (-len(raw) % 4)
        chunks.append(raw)
        v = {"buffer": 0, "byteOffset": off, "byteLength": data.nbytes}
        if target:
            v["target"] = target
        views.append(v)
        accessors.append(dict(bufferView=len(views) - 1, **acc))
        return len(accessors) - 1

    idx = add(faces.reshape(-1), 34963, componentType=5125, count=int(faces.size), type="SCALAR")
    meshes, nodes = [], []
    for k in range(T):
        v = np.asarray(vertices[k], np.float32)
        pos = add(v, 34962, componentType=5126, count=V, type="VEC3", min=v.min(0).tolist(), max=v.max(0).tolist())
        meshes.append({"primitives": [{"attributes": {"POSITION": pos}, "indices": idx}]})
        nodes.append({"mesh": k, "scale": [1.0, 1.0, 1.0] if k == 0 else [0.0, 0.0, 0.0], "name": f"frame_{k:05d}"})
    t = np.asarray(times, np.float32) - float(times[0])
    t_acc = add(t, componentType=5126, count=T, type="SCALAR", min=[float(t.min())], max=[float(t.max())])
    samplers, channels = [], []
    for k in range(T):
        sc = np.zeros((T, 3), np.float32)
        sc[k] = 1.0
        out = add(sc, componentType=5126, count=T, type="VEC3")
        samplers.append({"input": t_acc, "output": out, "interpolation": "STEP"})
        channels.append({"sampler": k, "target": {"node": k, "path": "scale"}})
    binary = b"".join(chunks)
    gltf = {"asset": {"version": "2.0", "generator": "ppface3d tracking"}, "scene": 0,
            "scenes": [{"nodes": list(range(T))}], "nodes": nodes, "meshes": meshes, "accessors": accessors,
            "bufferViews": views, "buffers": [{"byteLength": len(binary)}],
            "animations": [{"name": "tracking", "samplers": samplers, "channels": channels}]}
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    blob = (struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js) + 8 + len(binary))
            + struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(binary), 0x004E4942) + binary)
    return atomic_save(path, lambda tmp: open(tmp, "wb").write(blob))


def overlay_frames(tracker, clip, result, size: int = 256, max_height: int = 720):
    """Yield, per input frame, the input beside the tracked mesh drawn over it (H, 2W, 3) uint8."""
    import paddle

    from ..data.preprocess import deca_crop_transform, paste_back
    from ..render.cameras import recrop_camera
    from .track import CLIP_CROP

    face = tracker.face.at_size(size)
    t = lambda a: paddle.to_tensor(np.asarray(a, np.float32))  # noqa: E731
    n = len(result["time"])
    for i, _, frame in clip.frames():
        if i >= n:
            break
        H, W = frame.shape[:2]
        over = frame
        if result["found"][i]:
            T = deca_crop_transform(result["landmarks68"][i], size)
            cam = recrop_camera(result["cam"][i], result["clip_tform"], CLIP_CROP, T, size)
            with paddle.no_grad():
                dec = face.decode({"shape": t(result["shape"]), "exp": t(result["exp"][i:i + 1]),
                                   "pose": t(result["pose"][i:i + 1]), "cam": t(cam[None])})
                r = face.render(dec, mode="shape")
            img = r["images"].numpy()[0].transpose(1, 2, 0)
            alpha = r["alpha_images"].numpy()[0, 0] * 0.75
            over = (paste_back(img, T, frame.shape, background=frame, mask=alpha) * 255).clip(0, 255).astype(np.uint8)
        both = np.concatenate([frame, over], 1)
        if H > max_height:
            from skimage.transform import resize

            both = (resize(both, (max_height, int(round(2 * W * max_height / H))), anti_aliasing=True,
                           preserve_range=True)).astype(np.uint8)
        yield both


def write_outputs(tracker, clip, result: Dict[str, np.ndarray], folder: str, progress=None) -> Dict[str, str]:
    """Write every output of a tracking result into ``folder``; returns {name: path}."""
    from ..data.video import write_video

    files = {}
    p = os.path.join(folder, "tracking.npz")

    def w(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in result.items()})

    files["tracking"] = atomic_save(p, w)
    files.update(save_params(folder, result))
    n = len(result["time"])
    if tracker.s.glb:
        verts = np.concatenate([_posed(tracker, result, np.arange(a, min(a + 64, n))) for a in range(0, n, 64)])
        files["glb"] = save_frame_meshes_glb(os.path.join(folder, "tracking.glb"), verts, tracker.face.faces,
                                             result["time"])
    if tracker.s.overlay:
        bar, step = progress("write", n) if progress else (None, None)

        def frames():
            for k, f in enumerate(overlay_frames(tracker, clip, result, tracker.s.overlay_size)):
                if step:
                    step(k + 1)
                yield f

        files["overlay"] = write_video(os.path.join(folder, "overlay.mp4"), frames(), result["time"],
                                       audio_from=None if clip.files else clip.path)
        if bar:
            bar.close()
    return files
