"""Clips written with PyAV directly (not through the code under test): frames at given times
(variable frame rate) with an AAC tone, for the video and tracking tests."""
from fractions import Fraction

import numpy as np


def write_clip_with_tone(path, frames, times, seconds=0.5, rate=16000):
    import av

    h, w = frames[0].shape[:2]
    with av.open(path, "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt, vs.time_base = w, h, "yuv420p", Fraction(1, 1000)
        a = out.add_stream("aac", rate=rate)
        for f, t in zip(frames, times):
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            fr.pts, fr.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for pk in vs.encode(fr):
                out.mux(pk)
        for pk in vs.encode():
            out.mux(pk)
        n = int(seconds * rate)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)[None]
        for k in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, k:k + 1024]), format="fltp", layout="mono")
            af.sample_rate, af.pts = rate, k
            for pk in a.encode(af):
                out.mux(pk)
        for pk in a.encode():
            out.mux(pk)
    return path
