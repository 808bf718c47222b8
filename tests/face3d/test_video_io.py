"""Clips in and out: variable frame rate, rotated phone videos, audio, folders of frames, bad files."""
import os
import subprocess

import numpy as np
import pytest

from ppengine.errors import InputError

TIMES = np.cumsum([0, 0.04, 0.04, 0.08, 0.04, 0.12, 0.04])  # variable frame rate


def _frames(n, h=48, w=64):
    out = []
    for i in range(n):
        f = np.full((h, w, 3), 40, np.uint8)
        f[:8, :12] = (250, 30, 30)  # a marker in the top-left corner
        f[:, 20 + 4 * i:24 + 4 * i] = 200  # a bar that moves
        out.append(f)
    return out


@pytest.fixture(scope="module")
def vfr_audio(tmp_path_factory):
    """A VFR H.264 clip with an AAC tone, written by PyAV directly (not by the code under test)."""
    from av_clips import write_clip_with_tone

    return write_clip_with_tone(str(tmp_path_factory.mktemp("clips") / "vfr_audio.mp4"), _frames(len(TIMES)), TIMES)


def test_vfr_audio_round_trip(vfr_audio, tmp_path):
    from ppface3d.data.video import open_clip, video_info, write_video

    clip = open_clip(vfr_audio)
    assert clip.count == len(TIMES) and clip.has_audio and clip.size == (48, 64)
    got = list(clip.frames())
    np.testing.assert_allclose([t for _, t, _ in got], TIMES, atol=1e-3)
    out = write_video(str(tmp_path / "o.mp4"), [f for _, _, f in got], [t for _, t, _ in got], audio_from=vfr_audio)
    info = video_info(out)
    assert info["count"] == len(TIMES) and info["has_audio"] and info["audio_duration"] > 0.4
    np.testing.assert_allclose(info["times"], TIMES, atol=1e-3)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


def test_rotated_video_matches_ffmpeg(vfr_audio, tmp_path):
    """A phone video's display rotation: our upright frames equal ffmpeg's own autorotated ones."""
    import imageio_ffmpeg

    from ppface3d.data.video import open_clip

    ff = imageio_ffmpeg.get_ffmpeg_exe()
    rot = str(tmp_path / "rot.mp4")
    subprocess.run([ff, "-y", "-loglevel", "error", "-display_rotation:v:0", "90", "-i", vfr_audio, "-c", "copy", rot],
                   check=True)
    clip = open_clip(rot)
    assert clip.rotation in (90, 270) and clip.size == (64, 48)
    ours = next(clip.frames())[2]
    raw = subprocess.run([ff, "-loglevel", "error", "-i", rot, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    ref = np.frombuffer(raw, np.uint8).reshape(64, 48, 3)
    assert np.abs(ours.astype(int) - ref.astype(int)).mean() < 3


def test_folder_of_frames(tmp_path):
    import imageio.v3 as iio

    from ppface3d.data.video import open_clip

    for i, f in enumerate(_frames(3)):
        iio.imwrite(tmp_path / f"f{i:03d}.png", f)
    clip = open_clip(str(tmp_path), fps=10)
    assert clip.count == 3 and abs(clip.duration - 0.3) < 1e-9
    assert [round(t, 3) for _, t, _ in clip.frames()] == [0.0, 0.1, 0.2]


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "missing"])
def test_bad_video_files(vfr_audio, tmp_path, kind):
    from ppface3d.data.video import open_clip

    p = tmp_path / "bad.mp4"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "garbage":
        p.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "truncated":
        p.write_bytes(open(vfr_audio, "rb").read()[:500])
    with pytest.raises(InputError) as e:
        open_clip(str(p))
    assert "\n" not in str(e.value) and "bad.mp4" in str(e.value)
