"""Synthetic clips with known motion, for measuring and testing the tracker.

    clip = flame_clip(seed=0)          # a FLAME head rendered over a sequence of known codes
    clip["frames"] (T, S, S, 3) uint8, clip["times"] (T,), clip["static"] (T,) bool,
    clip["shape"], clip["exp"] (T, n), clip["pose"] (T, 6), clip["cam"] (T, 3) (frame NDC),
    clip["landmarks"] (T, 68, 2) frame pixels
    clip = photo_clip(skimage.data.astronaut())   # a real photo under a moving camera

:func:`flame_clip` runs through segments: static, head motion (yaw and pitch sweeps), an
expression change (towards a smile with the jaw open), static again with the light turning;
the head's colours are its painted features (:func:`~ppface3d.flame.mediapipe_embedding.feature_colors`)
under the SH light; some frames are blurred, some have an occluding bar over the mouth, every frame gets pixel
noise (so a detector jitters as on a real video). ``static`` marks the frames whose head and
expression do not move (where a tracker's jitter is measured). :func:`photo_clip` moves a
virtual camera over a photo (pans, a zoom, a roll) with static segments between the moves;
``static`` marks the frames where it stands still and ``tforms`` the photo -> frame matrices.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np


def _ease(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))


def flame_clip(T: int = 64, size: int = 192, seed: int = 0, face=None, fps: float = 25.0,
               blur: bool = True, occlusion: bool = True, noise: float = 2.0) -> Dict[str, np.ndarray]:
    """Render a FLAME sequence (see the module docstring). ``face``: the FaceModel (default: the
    generated model with 100 shape, 50 expression, 50 albedo codes)."""
    import paddle
    from scipy.ndimage import gaussian_filter
    from scipy.spatial.transform import Rotation

    from ..face_model import FaceModel
    from ..flame.mediapipe_embedding import feature_colors
    from .synthetic import random_sh

    face = (face or FaceModel(image_size=size)).at_size(size)
    rng = np.random.default_rng(seed)
    ns, ne, nt = face.code_sizes["shape"], face.code_sizes["exp"], face.code_sizes["tex"]
    shape = (rng.normal(size=ns) * 0.8).astype(np.float32)
    tex = rng.normal(size=nt).astype(np.float32)
    e0 = (rng.normal(size=ne) * 0.3 / np.sqrt(1 + np.arange(ne) / 10)).astype(np.float32)
    e1 = e0.copy()
    e1[1] += 1.5  # smile
    e1[0] += 0.8  # lips part
    q = T // 4
    seg = np.repeat(np.arange(4), [q, q, q, T - 3 * q])
    a = np.zeros(T)       # expression blend e0 -> e1
    yaw = np.zeros(T)
    pitch = np.zeros(T)
    jaw = np.zeros(T)
    i1 = np.nonzero(seg == 1)[0]
    yaw[i1] = 20.0 * np.sin(np.linspace(0, 2 * np.pi, len(i1)))
    pitch[i1] = 8.0 * np.sin(np.linspace(0, np.pi, len(i1)))
    i2 = np.nonzero(seg == 2)[0]
    a[i2] = _ease(len(i2))
    a[seg == 3] = 1.0
    jaw = 0.15 * a
    exp = ((1 - a)[:, None] * e0[None] + a[:, None] * e1[None]).astype(np.float32)
    glob = Rotation.from_euler("YX", np.stack([yaw + 5.0, pitch], 1), degrees=True).as_rotvec()
    pose = np.concatenate([glob, np.stack([jaw, np.zeros(T), np.zeros(T)], 1)], 1).astype(np.float32)
    light0 = random_sh(rng, 1)[0]
    light1 = light0.copy()
    light1[1:4] = np.roll(light0[1:4], 1, axis=0) * np.array([[-1.0], [1.0], [1.0]])  # the light turns
    b = np.clip((np.arange(T) - 3 * q) / max(T - 3 * q - 1, 1), 0, 1)  # the light turns in the last segment
    light = ((1 - b)[:, None, None] * light0[None] + b[:, None, None] * light1[None]).astype(np.float32)
    t = paddle.to_tensor
    with paddle.no_grad():
        dec0 = face.decode({"shape": t(np.repeat(shape[None], T, 0)), "exp": t(exp), "pose": t(pose)})
        cam = face.framing_camera(dec0["landmarks3d"].numpy()[0])  # fixed camera: the head moves in the frame
        cam = np.repeat(cam[None] * np.array([0.8, 1, 1], np.float32), T, 0)
        dec = face.place(dec0, t(cam))
        # the albedo: the face's features painted on (lips, brows, eyes; as a detector needs), toned by the code
        paint = feature_colors(face.flame)[None] * (1.0 + 0.1 * np.tanh(tex[:3]))[None, None]
        r = face.renderer(dec["vertices"], face.camera(dec["cam"]), lights=t(light),
                          vertex_colors=t(np.repeat(np.clip(paint, 0, 1), T, 0).astype(np.float32)))
    img = r["images"].numpy().transpose(0, 2, 3, 1)
    alpha = r["alpha_images"].numpy()[:, 0, :, :, None]
    yy, xx = np.mgrid[0:size, 0:size] / size
    bg = np.stack([0.35 + 0.2 * xx, 0.4 + 0.1 * yy, 0.45 - 0.15 * xx], -1)
    frames = img * alpha + bg[None] * (1 - alpha)
    from ..render import ndc_to_pixels

    lm = ndc_to_pixels(dec["landmarks2d"].numpy(), size)
    blurred = np.zeros(T, bool)
    occluded = np.zeros(T, bool)
    if blur:
        blurred[rng.choice(T, max(1, T // 12), replace=False)] = True
    if occlusion:
        occluded[rng.choice(np.nonzero(seg >= 2)[0], max(1, T // 16), replace=False)] = True
    for k in range(T):
        if blurred[k]:
            frames[k] = gaussian_filter(frames[k], sigma=(1.5, 1.5, 0))
        if occluded[k]:
            m = lm[k, 48:68]
            x0, y0 = m.min(0) - 4
            x1, y1 = m.max(0) + 4
            frames[k, int(y0):int(y1), int(x0):int((x0 + x1) / 2)] = 0.5
    frames = frames * 255 + rng.normal(scale=noise, size=frames.shape)
    static = np.isin(seg, (0, 3))
    return dict(frames=np.clip(frames, 0, 255).astype(np.uint8), times=np.arange(T) / fps, static=static,
                shape=shape, tex=tex, exp=exp, pose=pose, cam=cam.astype(np.float32), light=light, landmarks=lm,
                segment=seg, blurred=blurred, occluded=occluded)


def photo_clip(photo: np.ndarray, T: int = 64, size: int = 256, seed: int = 0, fps: float = 25.0,
               box: Optional[np.ndarray] = None, noise: float = 2.0) -> Dict[str, np.ndarray]:
    """A virtual camera moving over ``photo`` (H, W, 3) uint8 (see the module docstring). ``box``:
    the face box (x0, y0, x1, y1) the camera frames (default: the photo's centre half)."""
    from skimage.transform import SimilarityTransform, warp

    rng = np.random.default_rng(seed)
    H, W = photo.shape[:2]
    if box is None:
        box = np.array([W * 0.25, H * 0.25, W * 0.75, H * 0.75])
    c = (np.asarray(box[:2]) + np.asarray(box[2:])) / 2
    side = 2.2 * max(box[2] - box[0], box[3] - box[1])
    seg = np.repeat(np.arange(6), [T // 6] * 5 + [T - 5 * (T // 6)])
    dx, dy, zoom, roll = (np.zeros(T) for _ in range(4))
    moves = {1: ("dx", 0.12), 3: ("zoom", 0.15), 5: ("roll", 8.0)}
    pos = dict(dx=0.0, zoom=0.0, roll=0.0)
    track = dict(dx=dx, zoom=zoom, roll=roll)
    for k in range(6):
        idx = np.nonzero(seg == k)[0]
        for name, arr in track.items():
            arr[idx] = pos[name]
        if k in moves:
            name, amount = moves[k]
            arr = track[name]
            arr[idx] = pos[name] + amount * _ease(len(idx))
            pos[name] += amount
    frames, tforms = [], []
    for k in range(T):
        s = size / (side * (1.0 - zoom[k]))
        ang = np.deg2rad(roll[k])
        center = c + np.array([dx[k], dy[k]]) * side
        # photo -> frame: rotate about the centre, scale, centre in the frame
        M = (SimilarityTransform(translation=(size / 2, size / 2)).params
             @ SimilarityTransform(scale=s, rotation=ang).params
             @ SimilarityTransform(translation=-center).params)
        tforms.append(M)
        f = warp(photo, np.linalg.inv(M), output_shape=(size, size), order=1, mode="edge", preserve_range=True)
        frames.append(f + rng.normal(scale=noise, size=f.shape))
    static = np.isin(seg, (0, 2, 4))
    return dict(frames=np.clip(np.stack(frames), 0, 255).astype(np.uint8), times=np.arange(T) / fps,
                static=static, tforms=np.stack(tforms), segment=seg)


def write_clip(path: str, clip: Dict[str, np.ndarray]) -> str:
    """Write a synthetic clip's frames as an MP4 at its frame times."""
    from .video import write_video

    return write_video(path, list(clip["frames"]), clip["times"])
