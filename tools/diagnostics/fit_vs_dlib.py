"""The per-image fit on every real photo at hand, measured against an independent detector.

    python tools/diagnostics/fit_vs_dlib.py                       # default FaceFitter
    python tools/diagnostics/fit_vs_dlib.py --set w_dense=0 --set landmark_iters=150
    python tools/diagnostics/fit_vs_dlib.py --landmarks mediapipe    # the fit's 68 via the dense embedding

For each photo (skimage's astronaut and cameraman, matplotlib's Grace Hopper): dlib's HOG face
detector + iBUG 68-point shape predictor (face-recognition-models) give the reference; the
error of mediapipe's own 68 points (what the fit is given) and of the fit's projected 68
landmarks is the mean distance over the 51 inner points (17-67: no jaw line), in original
pixels and as NME (% of dlib's outer-eye-corner distance). Prints a markdown table and one JSON
line per photo; the fit time is the wall time of ``FaceFitter.fit`` (one face, default settings).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diag_common import keyword_values  # noqa: E402


def real_photos():
    """name -> (H, W, 3) uint8: the real face photos that ship inside installed packages."""
    import imageio.v3 as iio
    import matplotlib
    import skimage.data

    cam = skimage.data.camera()
    return {
        "astronaut (skimage)": skimage.data.astronaut(),
        "cameraman (skimage)": np.repeat(cam[..., None], 3, -1),
        "grace_hopper (matplotlib)": iio.imread(os.path.join(matplotlib.get_data_path(), "sample_data",
                                                             "grace_hopper.jpg")),
    }


def dlib_landmarks(image):
    """(68, 2) dlib iBUG landmarks of the best-scoring face, or None."""
    import dlib
    import face_recognition_models as frm

    det = dlib.get_frontal_face_detector()
    pred = dlib.shape_predictor(frm.pose_predictor_model_location())
    rects, scores, _ = det.run(image, 1, -0.5)
    if not len(rects):
        return None
    r = rects[int(np.argmax(scores))]
    s = pred(image, r)
    return np.array([[s.part(i).x, s.part(i).y] for i in range(68)], np.float64)


def inner_error(pts, ref):
    """(mean px over points 17-67, NME % of the outer-eye-corner distance)."""
    d = np.linalg.norm(np.asarray(pts)[17:] - ref[17:], axis=1).mean()
    return d, 100.0 * d / np.linalg.norm(ref[36] - ref[45])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FaceFitter argument")
    ap.add_argument("--landmarks", choices=["model", "mediapipe"], default="model",
                    help="the fit's 68 points: the model's landmark embedding, or mediapipe's points "
                         "MEDIAPIPE_TO_68 read through the model's mediapipe embedding")
    a = ap.parse_args(argv)
    from ppengine.quiet import quiet

    quiet()
    import paddle

    from ppface3d.apps.fit import FaceFitter
    from ppface3d.data.preprocess import MEDIAPIPE_TO_68, FacePreprocessor
    from ppface3d.render import ndc_to_pixels

    kw = keyword_values(a.set)
    fitter = FaceFitter(progress=False, **kw)
    pre = FacePreprocessor()
    rows = []
    for name, img in real_photos().items():
        ref = dlib_landmarks(img)
        r = pre(img)
        if ref is None or not r.ok:
            print(f"{name}: no face ({'dlib' if ref is None else 'mediapipe'})")
            continue
        face = r.faces[0]
        fitter.fit(face)  # warm-up (the first fit also builds/loads the dense embedding)
        t = time.perf_counter()
        codes = fitter.fit(face)
        dt = time.perf_counter() - t
        lm = face.to_original(ndc_to_pixels(fitter.render(codes)["landmarks2d"].numpy()[0], face.image.shape[0]))
        if a.landmarks == "mediapipe":  # the 68 read through the model's mediapipe embedding
            out = fitter.render(codes)
            pts = fitter.dense_embedding().points(out["vertices"], fitter.face.faces)
            l2 = fitter.face.camera(paddle.to_tensor(codes["cam"])).project(pts).numpy()[0][MEDIAPIPE_TO_68]
            lm = face.to_original(ndc_to_pixels(l2, face.image.shape[0]))
        mp_px, mp_nme = inner_error(face.landmarks_original, ref)
        fit_px, fit_nme = inner_error(lm, ref)
        row = dict(photo=name, mediapipe_px=round(mp_px, 2), mediapipe_nme=round(mp_nme, 2), fit_px=round(fit_px, 2),
                   fit_nme=round(fit_nme, 2), ratio=round(fit_px / mp_px, 3), seconds=round(dt, 2))
        rows.append(row)
        print(json.dumps(row))
    if rows:
        print("\n| photo | mediapipe vs dlib (px / NME %) | fit vs dlib (px / NME %) | ratio | fit time (s) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['photo']} | {r['mediapipe_px']:.2f} / {r['mediapipe_nme']:.2f} | {r['fit_px']:.2f} / "
                  f"{r['fit_nme']:.2f} | {r['ratio']:.2f} | {r['seconds']:.2f} |")
        mp = np.mean([r["mediapipe_px"] for r in rows])
        ft = np.mean([r["fit_px"] for r in rows])
        print(f"| mean | {mp:.2f} | {ft:.2f} | {ft / mp:.2f} | {np.mean([r['seconds'] for r in rows]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
