"""Reading and writing clips for tracking: videos (PyAV) and folders of frames.

    clip = open_clip("clip.mp4")            # or a folder of frames (sorted by name, --fps)
    clip.count, clip.fps, clip.size, clip.rotation, clip.has_audio
    for i, t, frame in clip.frames():      # index, time in seconds, (H, W, 3) uint8 upright
        ...
    write_video("out.mp4", frames, times, audio_from="clip.mp4")   # same timestamps, audio kept

Handled: variable frame rate (each frame keeps its own presentation time, and a written video
keeps them), phone videos with a rotation in their display matrix (frames are turned upright),
audio (re-encoded to AAC into the written video), and bad files: a corrupt, zero-length or
non-video file, or one with no video stream, is an InputError with one line saying so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ppengine.errors import InputError

from .io import IMAGE_EXTS, VIDEO_EXTS, list_images, load_image  # noqa: F401  (VIDEO_EXTS: what open_clip reads)


def _rotate(frame: np.ndarray, degrees: int) -> np.ndarray:
    """Turn a decoded frame upright given the stream's display rotation (counter-clockwise degrees)."""
    k = int(round(degrees / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(frame, k=k)) if k else frame


@dataclass
class Clip:
    """A video file or a folder of frames (see :func:`open_clip`)."""

    path: str
    count: int                      # frames (decoded count; for a video, counted once at open)
    fps: float                      # average frame rate (count / duration)
    size: Tuple[int, int]           # (H, W) of the upright frames
    rotation: int = 0               # display rotation applied to the frames (degrees)
    has_audio: bool = False
    files: Optional[List[str]] = None   # a folder's frames

    @property
    def duration(self) -> float:
        return self.count / self.fps if self.fps > 0 else 0.0

    def frames(self, start: int = 0) -> Iterator[Tuple[int, float, np.ndarray]]:
        """Yield (index, time in seconds, (H, W, 3) uint8 upright frame) from frame ``start`` on."""
        if self.files is not None:
            for i in range(start, len(self.files)):
                img, _ = load_image(self.files[i])
                yield i, i / self.fps, img
            return
        import av

        try:
            with av.open(self.path) as c:
                vs = c.streams.video[0]
                vs.thread_type = "AUTO"
                for i, fr in enumerate(c.decode(vs)):
                    if i < start:
                        continue
                    t = float(fr.time) if fr.time is not None else i / self.fps
                    yield i, t, _rotate(fr.to_ndarray(format="rgb24"), self.rotation)
        except av.error.FFmpegError as e:
            raise InputError(f"{self.path}: the video cannot be decoded past this point ({e}); "
                             "re-encode it (e.g. ffmpeg -i in.mp4 out.mp4)") from None


def open_clip(path: str, fps: float = 25.0) -> Clip:
    """Open a video file or a folder of frames; a bad input is an InputError (one line).

    Args:
        path: a video (.mp4, .mov, .avi, .mkv, .webm) or a folder of images (sorted by name).
        fps: frame rate of a folder of frames (a video carries its own timestamps).
    """
    if os.path.isdir(path):
        files = [f for f in list_images(path) if os.path.splitext(f)[1].lower() in IMAGE_EXTS]
        if not files:
            raise InputError(f"{path}: no frames ({', '.join(IMAGE_EXTS)}) in this folder")
        first, _ = load_image(files[0])
        return Clip(path, len(files), float(fps), first.shape[:2], files=files)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such video file or folder of frames")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); give a video file")
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise InputError(f"{path}: has no video stream")
            vs = c.streams.video[0]
            has_audio = bool(c.streams.audio)
            n, rotation, t_first, t_last, shape = 0, 0, None, None, None
            for fr in c.decode(vs):  # count the frames once (containers' counts are often missing or wrong)
                if n == 0:
                    rotation = int(getattr(fr, "rotation", 0) or 0)
                    shape = (fr.height, fr.width)
                t = float(fr.time) if fr.time is not None else None
                t_first = t if t_first is None else t_first
                t_last = t if t is not None else t_last
                n += 1
            step = float(1 / vs.average_rate) if vs.average_rate else 1 / 25.0
    except InputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, IndexError) as e:
        raise InputError(f"{path}: not a readable video ({type(e).__name__}: {e}); check the file is complete") from None
    if n == 0:
        raise InputError(f"{path}: the video has no frames")
    duration = (t_last - t_first + step) if (t_first is not None and t_last is not None and n > 1) else n * step
    if rotation % 180:
        shape = (shape[1], shape[0])
    return Clip(path, n, n / max(duration, 1e-6), shape, rotation % 360, has_audio)


def write_video(path: str, frames: Sequence[np.ndarray], times: Sequence[float], audio_from: Optional[str] = None,
                crf: int = 20) -> str:
    """Write frames (H, W, 3) uint8 as H.264 MP4 at the given presentation times (seconds; variable
    frame rate kept), atomically; with ``audio_from`` the audio stream of that file (if any) is
    re-encoded to AAC alongside. ``frames`` may be any iterable (a generator: one frame in memory)."""
    from ppengine.io import atomic_save

    def write(tmp):
        import av

        times_ = [float(t) for t in times]
        tb = Fraction(1, 1000)
        with av.open(tmp, mode="w", format="mp4") as out:
            dt = np.diff(times_) if len(times_) > 1 else np.array([1 / 25.0])
            rate = Fraction(round(1.0 / max(float(np.median(dt)), 1e-3))).limit_denominator(1000)
            vs = out.add_stream("libx264", rate=rate)
            vs.time_base = tb
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": str(crf), "preset": "veryfast"}
            src, a_in, a_out = None, None, None
            if audio_from and os.path.isfile(audio_from):
                src = av.open(audio_from)
                if src.streams.audio:
                    a_in = src.streams.audio[0]
                    a_out = out.add_stream("aac", rate=a_in.rate or 44100)
                else:
                    src.close()
                    src = None
            last = -1
            for k, (f, t) in enumerate(zip(frames, times_)):
                f = np.asarray(f)
                if k == 0:
                    vs.height, vs.width = f.shape[0] - f.shape[0] % 2, f.shape[1] - f.shape[1] % 2
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:vs.height, :vs.width]), format="rgb24")
                pts = max(int(round(t * 1000)), last + 1)
                vf.pts, vf.time_base, last = pts, tb, pts
                for pkt in vs.encode(vf):
                    out.mux(pkt)
            for pkt in vs.encode():
                out.mux(pkt)
            if a_in is not None:
                for fr in src.decode(a_in):
                    fr.pts = None
                    for pkt in a_out.encode(fr):
                        out.mux(pkt)
                for pkt in a_out.encode():
                    out.mux(pkt)
                src.close()

    return atomic_save(path, write)


def video_info(path: str) -> dict:
    """Frame count, duration (s), frame times and audio presence of a written video (for checks)."""
    import av

    with av.open(path) as c:
        vs = c.streams.video[0]
        times = [float(fr.time) for fr in c.decode(vs)]
    with av.open(path) as c:
        audio = bool(c.streams.audio)
        ad = float(c.streams.audio[0].duration * c.streams.audio[0].time_base) if audio and c.streams.audio[0].duration else 0.0
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    return {"count": len(times), "times": times, "duration": (times[-1] - times[0] + step) if times else 0.0,
            "has_audio": audio, "audio_duration": ad}
