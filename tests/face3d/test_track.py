"""Video tracking: smoothness, warm start and re-detection, outputs, bad inputs, resuming."""
import os

import numpy as np
import paddle
import pytest

import ppface3d  # noqa: F401
from ppengine.errors import InputError

N_SHAPE, N_EXP = 20, 10


@pytest.fixture(scope="module")
def face():
    from ppface3d.face_model import FaceModel

    return FaceModel(n_shape=N_SHAPE, n_exp=N_EXP, n_tex=10, image_size=64)


def _sequence(face, T=24, seed=0, noise=0.01):
    """A static head with a constant expression, its 68 landmarks in screen NDC, noisy targets."""
    rng = np.random.default_rng(seed)
    shape = (rng.normal(size=(1, N_SHAPE)) * 0.5).astype(np.float32)
    exp = np.repeat((rng.normal(size=(1, N_EXP)) * 0.5).astype(np.float32), T, 0)
    pose = np.repeat(np.array([[0.05, 0.2, 0.0, 0.05, 0, 0]], np.float32), T, 0)
    cam = np.repeat(face.framing_camera(face.mean_landmarks(static=False))[None], T, 0)
    t = paddle.to_tensor
    with paddle.no_grad():
        lm = face.decode({"shape": t(np.repeat(shape, T, 0)), "exp": t(exp), "pose": t(pose), "cam": t(cam)},
                         vertices=False)["landmarks2d"].numpy()
    noisy = lm + rng.normal(scale=noise, size=lm.shape).astype(np.float32)
    return dict(shape=shape, exp=exp, pose=pose, cam=cam, lm=lm, noisy=noisy)


def _solve(face, seq, smooth, found=None, W=12):
    from ppface3d.apps.track import TrackSettings
    from ppface3d.apps.track_solver import WindowSolver

    T = len(seq["lm"])
    found = np.ones(T, np.float32) if found is None else found
    solver = WindowSolver(face, seq["shape"], TrackSettings(w_dense=0.0), None, float(seq["cam"][0, 0]))
    init = {"exp": np.zeros((1, N_EXP), np.float32), "pose": np.zeros((1, 6), np.float32), "cam": seq["cam"][:1] * 0.95}
    return solver.track(seq["noisy"], None, found, np.arange(T, dtype=np.float32), init, W, smooth=smooth)


def _metrics(face, seq, out):
    from tools_diag import jitter, posed_landmarks

    L, l2 = posed_landmarks(face, seq["shape"], out["exp"], out["pose"], out["cam"])
    err = np.abs(l2 - seq["lm"]).mean()
    return jitter(L, np.ones(len(L), bool)), err


@pytest.fixture(scope="module")
def tools_diag():
    import importlib.util
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("tools_diag", os.path.join(root, "tools", "diagnostics", "track_eval.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["tools_diag"] = mod
    return mod


def test_smoothness_lowers_jitter_at_equal_landmark_error(face, tools_diag):
    """Noisy landmarks of a still head: the smoothness terms cut the 3D landmarks' frame-to-frame
    acceleration to a fraction of the per-frame solve's, without moving away from the truth."""
    seq = _sequence(face)
    j_frame, e_frame = _metrics(face, seq, _solve(face, seq, smooth=False))
    j_track, e_track = _metrics(face, seq, _solve(face, seq, smooth=True))
    assert j_track < 0.3 * j_frame, (j_track, j_frame)
    assert e_track <= 1.02 * e_frame, (e_track, e_frame)


def test_lost_frames_are_filled_and_refound(face, tools_diag):
    """Frames without a face (no data term) are bridged by the smoothness from their neighbours,
    and the frames after the gap (re-found) are fitted again; without smoothness the lost frames
    keep their warm start."""
    seq = _sequence(face, noise=0.0)
    seq["pose"][12:] = seq["pose"][12:] + np.array([0, 0.15, 0, 0, 0, 0], np.float32)  # the head turned meanwhile
    t = paddle.to_tensor
    with paddle.no_grad():
        seq["lm"] = face.decode({"shape": t(np.repeat(seq["shape"], 24, 0)), "exp": t(seq["exp"]), "pose": t(seq["pose"]),
                                 "cam": t(seq["cam"])}, vertices=False)["landmarks2d"].numpy()
    seq["noisy"] = seq["lm"].copy()
    found = np.ones(24, np.float32)
    found[8:12] = 0.0
    out = _solve(face, seq, smooth=True, found=found)
    from tools_diag import posed_landmarks

    _, l2 = posed_landmarks(face, seq["shape"], out["exp"], out["pose"], out["cam"])
    err = np.abs(l2 - seq["lm"]).mean((1, 2))
    assert err[12:].mean() < 0.01, err          # re-found after the gap, at the turned pose
    assert err[:8].mean() < 0.01
    # the lost frames lie between their neighbours (the turn happens inside the gap)
    yaw = out["pose"][:, 1]
    assert yaw[7] - 0.02 < yaw[8:12].min() and yaw[8:12].max() < yaw[12] + 0.02


def test_face_association():
    from ppface3d.apps.track import FaceAssociation

    big, small = np.array([100, 100, 300, 300.0]), np.array([10, 10, 60, 60.0])
    a = FaceAssociation(track_id=1)
    assert a.choose([big, small]) == 1                              # the second largest
    assert a.choose([big, small + 5]) == 1                          # followed by overlap
    assert a.choose([big]) is None and a.lost == 1                  # lost (no box near it)
    assert a.choose([big, small + 30]) == 1 and a.lost == 0         # re-found near where it was
    b = FaceAssociation()
    assert b.choose([]) is None and b.choose([small, big]) == 0     # starts at the first frame with a face


def test_animated_glb_loads_with_every_frame(face, tmp_path):
    import trimesh

    from ppface3d.apps.track_outputs import save_frame_meshes_glb

    with paddle.no_grad():
        v = face.decode({"shape": paddle.zeros([5, N_SHAPE]), "pose": paddle.to_tensor(
            np.stack([np.array([0, 0.1 * k, 0, 0, 0, 0], np.float32) for k in range(5)]))})["vertices"].numpy()
    p = save_frame_meshes_glb(str(tmp_path / "t.glb"), v, face.faces, np.arange(5) * 0.04)
    scene = trimesh.load(p)
    assert len(scene.geometry) == 5
    names = sorted(scene.graph.nodes_geometry)
    for k, n in enumerate(names):
        _, g = scene.graph[n]
        np.testing.assert_allclose(scene.geometry[g].vertices, v[k], atol=1e-6)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """A short synthetic clip with an audio track, and a clip without any face."""
    from av_clips import write_clip_with_tone

    from ppface3d.data.synthetic_clip import flame_clip, write_clip

    d = tmp_path_factory.mktemp("track")
    clip = flame_clip(T=12, size=160, seed=1, blur=False, occlusion=False)
    p = write_clip_with_tone(str(d / "clip.mp4"), clip["frames"], clip["times"])
    noise = dict(clip, frames=np.random.default_rng(0).integers(0, 255, clip["frames"].shape).astype(np.uint8))
    return {"clip": p, "noface": write_clip(str(d / "noface.mp4"), noise), "T": 12}


FAST = ["track.keyframes=2", "track.keyframe_iters=40", "track.window=8", "track.iters=20", "track.smooth_iters=15",
        "track.overlay_size=128", "model.n_shape=20", "model.n_exp=10", "model.n_tex=10"]


def test_track_video_outputs_and_resume(clip_files, tmp_path):
    """The whole pipeline on a clip with audio, interrupted after its first window and run again:
    it resumes from the saved state, and every output is complete and consistent with the input."""
    import csv

    import trimesh

    from ppface3d.apps.track import track_video
    from ppface3d.data.video import open_clip, video_info

    out = str(tmp_path / "out")
    seen = []

    def stop_at(stage):
        def cb(st, done, total):
            seen.append((st, done))
            if st == stage and done >= 8:
                raise KeyboardInterrupt
        return cb

    with pytest.raises(KeyboardInterrupt):  # during detection (its first window saved)
        track_video(clip_files["clip"], out, overrides=FAST, progress=stop_at("detect"), show_progress=False)
    assert not os.path.exists(out) and os.path.isdir(out + ".partial")  # no partial outputs, the state kept
    seen.clear()
    with pytest.raises(KeyboardInterrupt):  # then during the motion solve
        track_video(clip_files["clip"], out, overrides=FAST, progress=stop_at("track"), show_progress=False)
    assert min(d for s, d in seen if s == "detect") == 9  # detection went on from frame 8
    seen.clear()
    files = track_video(clip_files["clip"], out, overrides=FAST, progress=lambda s, d, n: seen.append((s, d)),
                        show_progress=False)
    assert not [d for s, d in seen if s == "detect"]       # every detection and the first window reused
    assert not os.path.exists(out + ".partial")
    T = clip_files["T"]
    src = open_clip(clip_files["clip"])
    info = video_info(files["overlay"])
    assert info["count"] == T and abs(info["duration"] - src.duration) < 1e-3 and info["has_audio"]
    z = np.load(files["tracking"])
    assert z["exp"].shape == (T, 10) and z["found"].all() and z["shape"].shape == (1, 20)
    assert len(trimesh.load(files["glb"]).geometry) == T
    rows = list(csv.reader(open(files["csv"])))
    assert len(rows) == T + 1 and rows[0][:3] == ["frame", "time", "found"]
    # the tracked landmarks follow the detected ones (projected back onto the photo)
    from ppface3d.apps.track import CLIP_CROP
    from ppface3d.data.preprocess import apply_transform
    from ppface3d.face_model import FaceModel
    from ppface3d.render import ndc_to_pixels

    face = FaceModel(n_shape=20, n_exp=10, n_tex=10)
    t = paddle.to_tensor
    with paddle.no_grad():
        l2 = face.decode({"shape": t(np.repeat(z["shape"], T, 0)), "exp": t(z["exp"]), "pose": t(z["pose"]),
                          "cam": t(z["cam"])}, vertices=False)["landmarks2d"].numpy()
    px = apply_transform(np.linalg.inv(z["clip_tform"]), ndc_to_pixels(l2, CLIP_CROP))
    det = z["landmarks68"]
    io = np.linalg.norm(det[:, 36] - det[:, 45], axis=-1)
    assert (np.linalg.norm(px - det, axis=-1).mean(-1) / io).mean() < 0.12


def test_bad_videos_give_one_line_and_no_outputs(clip_files, tmp_path):
    from ppface3d.apps.track import track_video

    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(open(clip_files["clip"], "rb").read()[:700])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path, msg in ((str(bad), "not a readable video"), (str(empty), "empty"),
                      (clip_files["noface"], "no face found in any")):
        out = str(tmp_path / ("out_" + os.path.basename(path)))
        with pytest.raises(InputError, match=msg) as e:
            track_video(path, out, overrides=FAST, show_progress=False)
        assert "\n" not in str(e.value)
        assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_one_euro_filter():
    """A noisy still signal is smoothed; a fast ramp is followed with a small lag (beta)."""
    from ppface3d.apps.track_solver import one_euro

    rng = np.random.default_rng(0)
    t = np.arange(100) / 30.0
    still = 1.0 + rng.normal(scale=0.05, size=(100, 1))
    out = one_euro(still, t, min_cutoff=1.0, beta=0.0)
    assert np.diff(out[20:], 2, axis=0).std() < 0.2 * np.diff(still[20:], 2, axis=0).std()
    ramp = (t * 10.0)[:, None]
    lag_slow = np.abs(one_euro(ramp, t, min_cutoff=1.0, beta=0.0) - ramp)[50:].mean()
    lag_fast = np.abs(one_euro(ramp, t, min_cutoff=1.0, beta=1.0) - ramp)[50:].mean()
    assert lag_fast < 0.2 * lag_slow


def test_cli_video_and_fuse_arguments(clip_files, tmp_path, capsys):
    from ppface3d.apps.cli import main

    rc = main(["--video", clip_files["clip"], "-O", str(tmp_path), "--no-progress", "--filter", "one_euro"]
              + sum((["-o", o] for o in FAST + ["track.overlay=false", "track.glb=false"]), []))
    out = capsys.readouterr().out
    assert rc == 0 and "tracking:" in out and os.path.isfile(tmp_path / "clip_track" / "tracking.npz")
    assert not os.path.exists(tmp_path / "clip_track" / "overlay.mp4")
    assert main(["--images", "a.jpg", "b.jpg", "-O", str(tmp_path)]) == 2
    assert "--images goes with --fuse" in capsys.readouterr().err
    assert main(["-O", str(tmp_path)]) == 2


def test_track_settings_are_checked():
    from ppengine.errors import ConfigError
    from ppface3d.apps.track import TrackSettings, load_track_config

    model, s = load_track_config()  # configs/track.yml
    assert s.window >= 2 and s.smooth2["rot"] > 0 and model["n_shape"] == 100
    with pytest.raises(ConfigError, match="Did you mean 'window'"):
        TrackSettings.from_dict({"windw": 8})
    with pytest.raises(ConfigError, match="mica_weights"):
        TrackSettings.from_dict({"identity": "mica"})
    with pytest.raises(ConfigError, match="track.smooth2.rotation"):
        TrackSettings.from_dict({"smooth2": {"rotation": 1.0}})
