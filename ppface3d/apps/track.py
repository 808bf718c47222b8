"""FLAME face tracking in a video (or a folder of frames): one identity, smooth per-frame motion.

    from ppface3d.apps.track import track_video
    files = track_video("clip.mp4", "output/clip_track", overrides=["track.window=24"],
                        progress=lambda stage, done, total: ...)
    files["tracking"]   # tracking.npz;  also "csv", "flame", "glb", "overlay"

    python tools/infer.py face3d --video clip.mp4 [-c configs/track.yml] [-o track.filter=one_euro]

Pipeline (settings in ``configs/track.yml``, section ``track``):

1. detection: every frame through mediapipe (face boxes, then the 468-point mesh of the tracked
   face only): the face is the largest one (or the ``track_id``-th largest) where the track
   starts, then the box that overlaps the last one; a frame without it is "lost" and the face
   is "re-found" near where it was last seen;
2. identity: keyframes spread over the clip are fitted together (one shape and albedo code,
   :meth:`~ppface3d.apps.fit.FaceFitter.fit_views`), or MICA gives the shape
   (``identity: mica``); the shape is then held for the whole clip;
3. motion: windows of frames (:class:`~ppface3d.apps.track_solver.WindowSolver`) warm-started
   from the last solved frame: each frame's head placed (rigid), then expression, jaw, head
   pose and camera fitted to the 68 + dense landmarks with frame-to-frame smoothness; a
   one-euro filter optionally smooths the result causally (``filter: one_euro``);
4. outputs (:mod:`ppface3d.apps.track_outputs`): ``tracking.npz``, ``flame_params.csv`` /
   ``flame_params.npz`` (Blender), ``tracking.glb`` (one mesh per frame, shown in turn),
   ``overlay.mp4`` (input beside the mesh overlay, the input's timestamps and audio).

All cameras are in one fixed crop of the clip (``clip_tform``: photo pixels -> a 224 crop around
the face's median box), so they are continuous across frames. Detections and solved windows
are saved in ``<output>.partial/`` as they are made: an interrupted run started again with the
same input and settings continues from there. The outputs appear together when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ppengine.errors import ConfigError, InputError

CLIP_CROP = 224


@dataclass
class TrackSettings:
    """The ``track`` section of ``configs/track.yml`` (see there for what each does)."""

    window: int = 16
    keyframes: int = 6
    keyframe_iters: int = 150
    keyframe_w_shape: float = 2e-4
    identity: str = "fit"
    mica_weights: Optional[str] = None
    mica_config: Optional[str] = None
    fit_size: int = 128
    rigid_iters: int = 20
    iters: int = 40
    lr: float = 0.02
    rigid_lr: float = 0.05
    smooth_iters: int = 80
    smooth_lr: float = 0.01
    w_dense: float = 1.0
    w_exp: float = 2e-4
    smooth1: Dict[str, float] = field(default_factory=lambda: dict(exp=0.0, jaw=0.0, rot=0.0, trans=0.0, scale=0.0))
    smooth2: Dict[str, float] = field(default_factory=lambda: dict(exp=3.0, jaw=30.0, rot=300.0, trans=60.0, scale=600.0))
    filter: str = "none"
    one_euro: Dict[str, float] = field(default_factory=lambda: dict(min_cutoff=1.0, beta=0.05, d_cutoff=1.0))
    track_id: int = 0
    min_iou: float = 0.2
    fps: float = 25.0
    max_frames: Optional[int] = None
    overlay: bool = True
    overlay_size: int = 256
    glb: bool = True

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "TrackSettings":
        from ppengine.config import check_keys

        d = dict(d or {})
        check_keys(d, [f.name for f in fields(cls)], "track")
        s = cls(**d)
        from .track_solver import GROUPS

        for name in ("smooth1", "smooth2"):
            check_keys(getattr(s, name), GROUPS, f"track.{name}")
        check_keys(s.one_euro, ("min_cutoff", "beta", "d_cutoff"), "track.one_euro")
        if s.filter not in ("none", "one_euro"):
            raise ConfigError(f"track.filter={s.filter!r}: use 'none' or 'one_euro'")
        if s.identity not in ("fit", "mica"):
            raise ConfigError(f"track.identity={s.identity!r}: use 'fit' (keyframes) or 'mica'")
        if s.identity == "mica" and not (s.mica_weights or s.mica_config):
            raise ConfigError("track.identity=mica needs track.mica_weights (a MICA run folder, e.g. output/mica) "
                              "or track.mica_config (configs/mica_release.yml)")
        if s.window < 2 or s.keyframes < 1:
            raise ConfigError(f"track.window={s.window} (>= 2) and track.keyframes={s.keyframes} (>= 1)")
        return s


def load_track_config(config: Optional[str] = None, overrides: Sequence[str] = ()):
    """(face model config dict, TrackSettings) from ``configs/track.yml`` (or ``config``) and ``-o`` overrides."""
    from ppengine.config import load_config

    path = config or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                  "configs", "track.yml")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such tracking config (give -c configs/track.yml)")
    cfg = load_config(path, list(overrides))
    return dict(cfg.get("model") or {}), TrackSettings.from_dict(cfg.get("track"))


# --------------------------------------------------------------------------- detection
def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1e-9)


class FaceAssociation:
    """Which detected box is the tracked face in each frame (see the module docstring)."""

    def __init__(self, track_id: int = 0, min_iou: float = 0.2):
        self.track_id, self.min_iou = int(track_id), float(min_iou)
        self.last = None
        self.lost = 0

    def choose(self, boxes: List[np.ndarray]) -> Optional[int]:
        """Index into ``boxes`` (sorted largest first) of the tracked face, or None (lost)."""
        if not boxes:
            self.lost += 1
            return None
        if self.last is None:
            k = self.track_id if self.track_id < len(boxes) else None
        else:
            ious = [_iou(b, self.last) for b in boxes]
            k = int(np.argmax(ious))
            if ious[k] < self.min_iou:  # re-found: the nearest box within three box widths of the last one
                c0 = (self.last[:2] + self.last[2:]) / 2
                d = [np.linalg.norm((b[:2] + b[2:]) / 2 - c0) for b in boxes]
                k = int(np.argmin(d))
                if d[k] > 3.0 * (self.last[2] - self.last[0]):
                    k = None
        if k is None:
            self.lost += 1
            return None
        self.last, self.lost = np.asarray(boxes[k], np.float64), 0
        return k


def _state_key(path: str, settings: TrackSettings, model_cfg: dict) -> str:
    h = hashlib.sha1()
    st = os.stat(path) if os.path.isfile(path) else None
    h.update(f"{os.path.abspath(path)}|{st.st_size if st else ''}|{st.st_mtime_ns if st else ''}".encode())
    h.update(json.dumps(asdict(settings), sort_keys=True, default=str).encode())
    h.update(json.dumps(model_cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class Tracker:
    """Track one face through a clip (see the module docstring).

    Args:
        settings: :class:`TrackSettings`; model_cfg: face model keys (``FACE_KEYS``: FLAME /
            albedo paths and code sizes).
        progress: callback ``(stage, done, total)``; stages 'detect', 'identity', 'track', 'write'.
        show_progress: also show tqdm bars.
    """

    def __init__(self, settings: Optional[TrackSettings] = None, model_cfg: Optional[dict] = None,
                 progress: Optional[Callable] = None, show_progress: bool = True):
        from ..face_model import FaceModel
        from .fit import FaceFitter

        self.s = settings or TrackSettings()
        self.model_cfg = dict(model_cfg or {})
        self.callback = progress
        self.show = show_progress
        self.mica = None
        face = None
        if self.s.identity == "mica":
            self.mica = self._load_mica()
            face = getattr(self.mica, "face", None)
        if face is None:
            face = FaceModel.from_config(self.model_cfg, image_size=self.s.fit_size)
        self.fitter = FaceFitter(face, image_size=self.s.fit_size, landmark_iters=self.s.keyframe_iters,
                                 w_dense=self.s.w_dense, w_shape=self.s.keyframe_w_shape, progress=False)
        self.face = self.fitter.face
        self.emb = self.fitter.dense_embedding() if self.s.w_dense > 0 else None

    def _load_mica(self):
        try:
            from .mica_reconstruct import load_mica
        except ImportError:
            raise ConfigError("track.identity=mica: this installation has no MICA model "
                              "(ppface3d/apps/mica_reconstruct.py); use identity: fit") from None
        return load_mica(weights=self.s.mica_weights, config=self.s.mica_config)

    def _bar(self, stage, total):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=stage, disable=not self.show, leave=False)

        def step(done):
            bar.n = done
            bar.refresh()
            if self.callback is not None:
                self.callback(stage, done, total)

        return bar, step

    # ------------------------------------------------------------------ 1. detection
    def detect(self, clip, state: str) -> Dict[str, np.ndarray]:
        """Per frame: found, times, box, 68 landmarks and 468 mesh points (photo pixels).
        Saved per window of frames in ``state`` (resumable)."""
        from ppengine.io import atomic_save
        from ppengine.quiet import native_stderr_filtered

        from ..data.preprocess import FacePreprocessor, mediapipe_to_68

        n = clip.count if self.s.max_frames is None else min(clip.count, int(self.s.max_frames))
        W = self.s.window
        chunks = [(a, min(a + W, n)) for a in range(0, n, W)]
        path = lambda a: os.path.join(state, f"detect_{a:06d}.npz")  # noqa: E731
        assoc = FaceAssociation(self.s.track_id, self.s.min_iou)
        start = 0
        for a, b in chunks:  # resume after the last saved chunk
            if not os.path.isfile(path(a)):
                break
            with np.load(path(a)) as z:
                fnd = z["found"].astype(bool)
                last = z["box"][fnd]
                if len(last):
                    assoc.last, assoc.lost = last[-1].astype(np.float64), int(b - a - np.nonzero(fnd)[0][-1] - 1)
                else:
                    assoc.lost += b - a
            start = b
        bar, step = self._bar("detect", n)
        pre = FacePreprocessor()
        buf = []
        with native_stderr_filtered():
            for i, t, frame in clip.frames(start):
                if i >= n:
                    break
                boxes = [bx for bx, _ in pre.detect_boxes(frame)]
                k = assoc.choose(boxes)
                pts = pre.mesh_landmarks(frame, boxes[k]) if k is not None else None  # None: lost
                rec = dict(time=t, found=pts is not None, box=boxes[k] if pts is not None else np.zeros(4),
                           lm68=mediapipe_to_68(pts) if pts is not None else np.zeros((68, 2)),
                           dense=pts if pts is not None else np.zeros((468, 2)))
                buf.append(rec)
                if len(buf) == W or i == n - 1:
                    a = i + 1 - len(buf)

                    def write(tmp, buf=buf):
                        with open(tmp, "wb") as fh:
                            np.savez(fh, **{k: np.stack([np.asarray(r[k], np.float64) for r in buf]) for k in buf[0]})

                    atomic_save(path(a), write)
                    buf = []
                step(i + 1)
        pre.close()
        bar.close()
        parts = []
        for a, b in chunks:
            if not os.path.isfile(path(a)):
                raise InputError(f"{clip.path}: the video ended at frame {a} of {n} (truncated?); "
                                 "re-encode it or give a shorter --max-frames")
            with np.load(path(a)) as z:
                parts.append({k: z[k] for k in z.files})
        det = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        det["found"] = det["found"].astype(bool)
        if not det["found"].any():
            raise InputError(f"{clip.path}: no face found in any of its {n} frames (faces narrower than about "
                             "40 px are not detected)")
        return det

    # ------------------------------------------------------------------ 2. identity
    def clip_tform(self, det) -> np.ndarray:
        """The clip's fixed crop: photo pixels -> a CLIP_CROP crop around the median face box."""
        from ..data.preprocess import deca_crop_transform

        lm = det["lm68"][det["found"]]
        med = np.median(lm, 0)
        return deca_crop_transform(med, CLIP_CROP)

    def keyframe_indices(self, det) -> np.ndarray:
        idx = np.nonzero(det["found"])[0]
        k = min(self.s.keyframes, len(idx))
        return idx[np.unique(np.round(np.linspace(0, len(idx) - 1, k)).astype(int))]

    def identity(self, clip, det, keys: np.ndarray):
        """(shape (1, n), tex (1, n_tex), light (1, 9, 3), codes of the keyframes in the clip frame)."""
        from ..data.preprocess import FacePreprocessor
        from ..render.cameras import recrop_camera

        pre = FacePreprocessor()
        want = set(int(k) for k in keys)
        crops = {}
        for i, _, frame in clip.frames():
            if i in want:
                crops[i] = pre.crop(frame, det["lm68"][i], det["box"][i], dense=det["dense"][i])
            if len(crops) == len(want):
                break
        pre.close()
        faces = [crops[int(k)] for k in keys]
        init, fixed = None, ()
        if self.mica is not None:
            shape = np.asarray(self.mica.shape_from_faces(faces), np.float32).mean(0, keepdims=True)
            init, fixed = {"shape": shape[:, :self.fitter.n["shape"]]}, ("shape",)
        codes = self.fitter.fit_views(faces, init=init, fixed=fixed)
        T = self.clip_tform(det)
        cams = np.stack([recrop_camera(codes["cam"][j], f.tform, f.image.shape[0], T, CLIP_CROP)
                         for j, f in enumerate(faces)])
        keyc = {"exp": codes["exp"], "pose": codes["pose"], "cam": cams}
        return codes["shape"], codes["tex"], codes["light"].mean(0, keepdims=True), keyc

    # ------------------------------------------------------------------ 3. motion
    def targets(self, det, T: np.ndarray):
        """68 and dense targets of every frame in the clip frame's screen NDC."""
        from ..data.preprocess import apply_transform
        from ..render import pixels_to_ndc

        t68 = pixels_to_ndc(apply_transform(T, det["lm68"]), CLIP_CROP).astype(np.float32)
        dense = pixels_to_ndc(apply_transform(T, det["dense"]), CLIP_CROP).astype(np.float32)
        return t68, dense

    def solve(self, det, shape, keyc, keys, state: str, smooth: bool = True) -> Dict[str, np.ndarray]:
        """Per-frame exp, pose, cam (T, ...) in the clip frame, window by window (resumable)."""
        from ppengine.io import atomic_save

        from .track_solver import WindowSolver

        T = self.clip_tform(det)
        t68, dense = self.targets(det, T)
        n = len(det["found"])
        times = det["time"]
        step_t = float(np.median(np.diff(times))) if n > 1 else 1.0
        tf = (times - times[0]) / max(step_t, 1e-6)  # frame units
        cam0 = keyc["cam"][0]
        solver = WindowSolver(self.face, shape, self.s, None if self.emb is None else self.emb.weight, float(cam0[0]))
        # warm start of the first window: the keyframe nearest the first frame with a face
        first = int(np.argmin(np.abs(keys - np.nonzero(det["found"])[0][0])))
        init = {k: keyc[k][first:first + 1] for k in ("exp", "pose", "cam")}
        tag = "smooth" if smooth else "frame"
        path = lambda a: os.path.join(state, f"{tag}_{a:06d}.npz")  # noqa: E731

        def load(a):
            if not os.path.isfile(path(a)):
                return None
            with np.load(path(a)) as z:
                return {k: z[k] for k in ("exp", "pose", "cam")}

        def save(a, res):
            def write(tmp):
                with open(tmp, "wb") as fh:
                    np.savez(fh, **res)

            atomic_save(path(a), write)

        bar, step = self._bar("track", n)
        out = solver.track(t68, dense if self.emb is not None else None, det["found"], tf, init, self.s.window,
                           smooth=smooth, load=load, save=save, progress=step)
        bar.close()
        return out

    # ------------------------------------------------------------------ run
    def run(self, path: str, output: str) -> Dict[str, str]:
        """Track ``path`` (video or folder of frames) into ``output``; returns the written files."""
        from ppengine.io import atomic_dir, atomic_save

        from ..data.video import open_clip
        from .track_outputs import write_outputs
        from .track_solver import one_euro

        clip = open_clip(path, fps=self.s.fps)
        state = output.rstrip("/\\") + ".partial"
        key = _state_key(path, self.s, self.model_cfg)
        marker = os.path.join(state, "key.txt")
        if os.path.isdir(state) and (not os.path.isfile(marker) or open(marker).read().strip() != key):
            shutil.rmtree(state)  # another input or other settings: start over
        os.makedirs(state, exist_ok=True)
        with open(marker, "w") as fh:
            fh.write(key)
        try:
            det = self.detect(clip, state)
        except InputError:  # nothing to resume from an unusable clip
            shutil.rmtree(state, ignore_errors=True)
            raise
        keys = self.keyframe_indices(det)
        if self.callback:
            self.callback("identity", 0, 1)
        id_path = os.path.join(state, "identity.npz")
        if os.path.isfile(id_path):
            with np.load(id_path) as z:
                shape, tex, light = z["shape"], z["tex"], z["light"]
                keyc = {k: z["key_" + k] for k in ("exp", "pose", "cam")}
        else:
            shape, tex, light, keyc = self.identity(clip, det, keys)

            def write(tmp):
                with open(tmp, "wb") as fh:
                    np.savez(fh, shape=shape, tex=tex, light=light, **{"key_" + k: v for k, v in keyc.items()})

            atomic_save(id_path, write)
        if self.callback:
            self.callback("identity", 1, 1)
        motion = self.solve(det, shape, keyc, keys, state)
        if self.s.filter == "one_euro":
            for k in ("exp", "pose", "cam"):
                motion[k] = one_euro(motion[k], det["time"], **self.s.one_euro)
        result = dict(motion, shape=shape, tex=tex, light=light, found=det["found"], time=det["time"],
                      box=det["box"], landmarks68=det["lm68"], clip_tform=self.clip_tform(det), keyframes=keys,
                      frame_size=np.asarray(clip.size), rotation=np.asarray(clip.rotation))
        with atomic_dir(output) as tmp:
            files = write_outputs(self, clip, result, tmp, progress=self._bar)
        shutil.rmtree(state, ignore_errors=True)
        return {k: os.path.join(output, os.path.basename(v)) for k, v in files.items()}


def track_video(path: str, output: str, config: Optional[str] = None, overrides: Sequence[str] = (),
                progress: Optional[Callable] = None, show_progress: bool = True) -> Dict[str, str]:
    """Track the face in ``path`` (a video or a folder of frames) into the folder ``output``.

    Args:
        config: tracking config (default ``configs/track.yml``); overrides: ``-o`` style.
        progress: ``callback(stage, done, total)``.
    Returns: {'tracking', 'csv', 'flame', 'glb', 'overlay'} -> written paths (those enabled).
    """
    model_cfg, settings = load_track_config(config, overrides)
    return Tracker(settings, model_cfg, progress, show_progress).run(path, output)
