"""Multi-image fusion measured on synthetic subjects: shape error of the head fitted from K views.

    python tools/diagnostics/fuse_eval.py --subjects 12 --views 0 1 2 4 8 --set w_shape=2e-5   # 0: the mean head

Each subject of ``SyntheticFaces(split='test', K=8)`` (one FLAME shape, 8 images with their own
expression, jaw, head pose, light and framing; ground truth known) is fitted from its first K
images with :meth:`~ppface3d.apps.fit.FaceFitter.fit_views` on the rendered 68 landmarks (and
the images' photometric appearance); the error is the NoW-style median scan-to-mesh distance (mm)
from the ground-truth neutral head to the fitted neutral head. Prints one JSON line per K
(mean and median over subjects, and the ratio to K = 1).
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=16)
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--size", type=int, default=128, help="render / fit size")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FaceFitter argument")
    a = ap.parse_args(argv)
    from ppengine.quiet import quiet

    quiet()
    import paddle

    from ppface3d.apps.fit import FaceFitter
    from ppface3d.data.synthetic import SyntheticFaces
    from ppface3d.losses.metrics import now_errors
    from ppface3d.render import ndc_to_pixels

    kw = keyword_values(a.set)
    K = max(a.views)
    ds = SyntheticFaces(split="test", num_subjects=a.subjects, K=K, image_size=a.size, n_shape=100, n_exp=50,
                        n_tex=50, max_jaw=0.2)
    fitter = FaceFitter(ds.face, image_size=a.size, progress=False, **kw)
    face = ds.face
    errs = {k: [] for k in a.views}
    t0 = time.perf_counter()
    for i in range(a.subjects):
        s = ds[i]
        views = [{"image": s["image"][j].transpose(1, 2, 0),
                  "landmarks": ndc_to_pixels(s["landmark"][j, :, :2], a.size)} for j in range(K)]
        gt_v, gt_l = s["gt_verts_neutral"][0], s["gt_lmk3d_neutral"][0]
        for k in a.views:  # K = 0: the mean head (no fit), the reference a fit has to beat
            shape = fitter.fit_views(views[:k])["shape"] if k else np.zeros((1, face.code_sizes["shape"]), np.float32)
            with paddle.no_grad():
                pr = face.neutral(paddle.to_tensor(shape))
            d, _ = now_errors(pr["vertices"].numpy()[0], pr["landmarks68"].numpy()[0], gt_v, gt_l, face.faces)
            errs[k].append(float(np.median(d)))
    base = np.mean(errs[min(k for k in a.views if k > 0)])
    for k in a.views:
        e = np.asarray(errs[k])
        print(json.dumps(dict(views=k, subjects=a.subjects, s2m_median_mm_mean=round(float(e.mean()), 4),
                              s2m_median_mm_median=round(float(np.median(e)), 4),
                              ratio_to_single=round(float(e.mean() / base), 3))), flush=True)
    print(json.dumps(dict(seconds=round(time.perf_counter() - t0, 1))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
