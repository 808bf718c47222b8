"""Tracking measured on clips with known motion: per-frame fitting vs the tracker.

    python tools/diagnostics/track_eval.py                       # synthetic FLAME clip + astronaut clip
    python tools/diagnostics/track_eval.py --clip flame -o track.smooth2.exp=20 --frames 64 --seeds 0 1

Clips (ppface3d/data/synthetic_clip.py): ``flame``: a FLAME head rendered from known codes
(static, head motion, expression change, static with a turning light; blurred and occluded
frames, pixel noise); ``astronaut``: skimage's astronaut under a moving virtual camera (pans, a
zoom, a roll, static segments between them).

Per-frame: :class:`~ppface3d.apps.fit.FaceFitter` on each frame's crop on its own (today's
``--image clip.mp4``). Tracked: :func:`ppface3d.apps.track.track_video` (configs/track.yml with
the ``-o`` overrides). Reported (one JSON line per clip and method):

* ``nme`` / ``nme_inner``: 2D landmark error (68 points / the 51 without the jaw line; % of the
  outer-eye-corner distance), against the
  rendered ground truth (flame) or against mediapipe's detections on the static camera's frame
  mapped through the known camera motion (astronaut);
* ``jitter_mm``: mean frame-to-frame acceleration |L(t+1) - 2 L(t) + L(t-1)| of the 68 posed 3D
  landmarks (+ the camera shift), mm/frame^2, over the static segments' frames;
* flame only: ``rot_deg`` / ``jaw_deg`` (angle errors), ``exp_rmse`` (expression code), ``shape_s2m_mm``
  (NoW-style median scan-to-mesh error of the neutral head);
* ``fps``: frames per second of the method (detection included; outputs not), and of the
  whole tracking run with its outputs (``fps_with_outputs``); ``fps_detect`` / ``fps_track``: the
  detection and motion stages alone (without the model loading and the keyframe fit, which a
  longer clip amortises).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def posed_landmarks(face, shape, exp, pose, cam):
    """(T, 68, 3) posed 3D landmarks + camera shift, mm; and (T, 68, 2) screen NDC."""
    import paddle

    t = lambda a: paddle.to_tensor(np.asarray(a, np.float32))  # noqa: E731
    T = len(exp)
    sh = np.asarray(shape, np.float32).reshape(-1, shape.shape[-1])
    sh = np.repeat(sh, T, 0) if len(sh) == 1 else sh
    with paddle.no_grad():
        dec = face.decode({"shape": t(sh), "exp": t(exp), "pose": t(pose), "cam": t(cam)}, vertices=False)
    L = dec["landmarks3d"].numpy().copy()
    L[..., :2] += np.asarray(cam)[:, None, 1:]
    return L * 1000.0, dec["landmarks2d"].numpy()


def jitter(L, static):
    ok = static[1:-1] & static[:-2] & static[2:]
    acc = np.linalg.norm(L[2:] - 2 * L[1:-1] + L[:-2], axis=-1).mean(-1)
    return float(acc[ok].mean()) if ok.any() else float("nan")


def nme(pred_px, gt_px, valid=None, points=slice(None)):
    d = np.linalg.norm(pred_px[:, points] - gt_px[:, points], axis=-1).mean(-1)
    io = np.linalg.norm(gt_px[:, 36] - gt_px[:, 45], axis=-1)
    r = d / io
    return float(100 * (r[valid] if valid is not None else r).mean())


def rot_angle_deg(a, b):
    from scipy.spatial.transform import Rotation as R

    return np.degrees((R.from_rotvec(a).inv() * R.from_rotvec(b)).magnitude())


def per_frame(fitter, clip_frames, det, T_clip):
    """Per-frame fits (own shape each) in the clip frame: dict of (T, ...) codes and fps."""
    from ppface3d.apps.track import CLIP_CROP
    from ppface3d.data.preprocess import FacePreprocessor
    from ppface3d.render.cameras import recrop_camera

    pre = FacePreprocessor()
    out = {k: [] for k in ("shape", "exp", "pose", "cam")}
    t0 = time.perf_counter()
    n = 0
    for i, frame in enumerate(clip_frames):
        r = pre(frame)
        if not r.ok:
            for k in out:
                out[k].append(out[k][-1] if out[k] else None)
            continue
        f = r.faces[0]
        c = fitter.fit(f)
        c["cam"] = recrop_camera(c["cam"], f.tform, f.image.shape[0], T_clip, CLIP_CROP)
        for k in out:
            out[k].append(c[k][0])
        n += 1
    dt = time.perf_counter() - t0
    first = next(x for x in out["exp"] if x is not None)
    for k in out:
        ref = next(x for x in out[k] if x is not None)
        out[k] = np.stack([x if x is not None else ref for x in out[k]])
    del first
    return out, len(clip_frames) / dt


def evaluate(kind, frames_n, seed, overrides, do_per_frame=True):
    import skimage.data

    from ppface3d.apps.track import CLIP_CROP, track_video
    from ppface3d.data.preprocess import FacePreprocessor, apply_transform
    from ppface3d.data.synthetic_clip import flame_clip, photo_clip, write_clip
    from ppface3d.face_model import FaceModel
    from ppface3d.losses.metrics import now_errors
    from ppface3d.render import ndc_to_pixels

    face = FaceModel(image_size=128)
    if kind == "flame":
        clip = flame_clip(T=frames_n, size=192, seed=seed, face=face)
    else:
        photo = skimage.data.astronaut()
        r = FacePreprocessor()(photo)
        clip = photo_clip(photo, T=frames_n, size=256, seed=seed, box=r.faces[0].bbox)
        clip["landmarks"] = np.stack([apply_transform(M, r.faces[0].landmarks_original) for M in clip["tforms"]])
    tmp = tempfile.mkdtemp(prefix="track_eval_")
    video = write_clip(os.path.join(tmp, "clip.mp4"), clip)
    t0 = time.perf_counter()
    stamps = {}
    files = track_video(video, os.path.join(tmp, "out"), overrides=overrides, show_progress=False,
                        progress=lambda s, d, n: stamps.setdefault(s, {}).update({d: time.perf_counter()}))
    total = time.perf_counter() - t0
    z = dict(np.load(files["tracking"]))
    T_clip = z["clip_tform"]
    fps_track = frames_n / (stamps["write"][min(stamps["write"])] - t0) if "write" in stamps else frames_n / total
    rows = []
    gt_px = clip["landmarks"]
    valid = z["found"]
    methods = {"tracked": ({k: z[k] for k in ("shape", "exp", "pose", "cam")}, fps_track)}
    if do_per_frame:
        from ppface3d.apps.fit import FaceFitter

        methods["per_frame"] = per_frame(FaceFitter(face, progress=False), clip["frames"], z, T_clip)
    Tinv = np.linalg.inv(T_clip)
    for name, (c, fps) in methods.items():
        L, l2 = posed_landmarks(face, c["shape"], c["exp"], c["pose"], c["cam"])
        px = apply_transform(Tinv, ndc_to_pixels(l2, CLIP_CROP))
        row = dict(clip=kind, seed=seed, frames=frames_n, method=name, nme=round(nme(px, gt_px, valid), 3),
                   nme_inner=round(nme(px, gt_px, valid, slice(17, 68)), 3),
                   jitter_mm=round(jitter(L, clip["static"]), 4), fps=round(fps, 2))
        if kind == "flame":
            n_exp = min(c["exp"].shape[1], clip["exp"].shape[1])
            row["rot_deg"] = round(float(rot_angle_deg(c["pose"][:, :3], clip["pose"][:, :3])[valid].mean()), 3)
            row["jaw_deg"] = round(float(np.degrees(np.abs(c["pose"][:, 3] - clip["pose"][:, 3]))[valid].mean()), 3)
            row["exp_rmse"] = round(float(np.sqrt(((c["exp"][:, :n_exp] - clip["exp"][:, :n_exp]) ** 2).mean())), 4)
            import paddle

            with paddle.no_grad():
                gt = face.neutral(paddle.to_tensor(clip["shape"][None]))
                shapes = np.asarray(c["shape"]).reshape(-1, c["shape"].shape[-1])
                errs = []
                for sh in shapes[:: max(1, len(shapes) // 8)]:
                    pr = face.neutral(paddle.to_tensor(sh[None].astype(np.float32)))
                    d, _ = now_errors(pr["vertices"].numpy()[0], pr["landmarks68"].numpy()[0],
                                      gt["vertices"].numpy()[0], gt["landmarks68"].numpy()[0], face.faces)
                    errs.append(np.median(d))
            row["shape_s2m_mm"] = round(float(np.mean(errs)), 3)
        if name == "tracked":
            row["fps_with_outputs"] = round(frames_n / total, 2)
            for st in ("detect", "track"):  # the stages' own throughput (the fixed costs left out)
                ts = stamps.get(st, {})
                if len(ts) > 1:
                    row[f"fps_{st}"] = round((max(ts) - min(ts)) / (ts[max(ts)] - ts[min(ts)]), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if do_per_frame:
        a, b = rows[0], rows[1]
        print(json.dumps(dict(clip=kind, seed=seed, jitter_ratio=round(a["jitter_mm"] / b["jitter_mm"], 3),
                              nme_ratio=round(a["nme"] / b["nme"], 3),
                              nme_inner_ratio=round(a["nme_inner"] / b["nme_inner"], 3))), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", choices=["flame", "astronaut", "both"], default="both")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("-o", "--override", action="append", default=[], help="tracking config override")
    ap.add_argument("--no-per-frame", action="store_true", help="skip the per-frame baseline (slow)")
    a = ap.parse_args(argv)
    from ppengine.quiet import quiet

    quiet()
    for kind in (("flame", "astronaut") if a.clip == "both" else (a.clip,)):
        for seed in a.seeds:
            evaluate(kind, a.frames, seed, a.override, not a.no_per_frame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
