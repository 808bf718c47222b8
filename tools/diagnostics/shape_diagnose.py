"""How much of the synthetic test set's face shape the 2D landmarks can tell, and how precise
they must be: an upper bound for any landmark-driven shape estimate (docs/deca.md).

    python tools/diagnostics/shape_diagnose.py -c configs/deca.yml [-o k=v] [--train-subjects 3000] [--noise 0 0.01 0.02 0.04]

For the config's training distribution it computes the ground-truth 2D landmarks (FLAME +
the dataset's camera framing, no rendering), normalises each set for translation and scale,
fits a ridge regression and an MLP (scikit-learn) from them to the shape code, and scores the
predicted shapes on the config's test set with the same NoW-style scan-to-mesh metric as
``tools/eval.py``, as a ratio to the mean-shape baseline. With ``--noise s`` Gaussian noise
of s x the inter-ocular distance is added to the landmarks (train and test), i.e. what a
landmark detector of that accuracy would allow.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def landmark_sets(ds, n: int):
    """(n*K, 68, 2) screen-NDC landmarks and (n*K, n_shape) shapes of ``ds``'s first n subjects."""
    import paddle

    L, S = [], []
    with paddle.no_grad():
        for i in range(n):
            c = ds.sample_codes(i)
            geo, cam = ds.posed(c)
            L.append(ds.face.place(geo, paddle.to_tensor(cam))["landmarks2d"].numpy())
            S.append(np.tile(c["shape"][None], (len(cam), 1)))
    return np.concatenate(L), np.concatenate(S)


def normalise(L: np.ndarray) -> np.ndarray:
    """Remove translation and scale of each (68, 2) set; flatten."""
    L = L - L.mean(1, keepdims=True)
    return (L / np.sqrt((L ** 2).sum((1, 2), keepdims=True))).reshape(len(L), -1)


def s2m_ratio(face, test, shapes: np.ndarray) -> Dict[str, float]:
    """Median scan-to-mesh error of predicted neutral shapes (on the FaceModel ``face``) vs the
    mean shape, on ``test``."""
    import paddle

    from ppface3d.losses.metrics import FaceReconstructionMetric

    metric = FaceReconstructionMetric(icp_iters=2)
    t = paddle.to_tensor
    with paddle.no_grad():
        mean = face.neutral(paddle.zeros([1, shapes.shape[1]]))
        for i in range(len(shapes)):
            s = test[i]
            pred = face.neutral(t(shapes[i:i + 1].astype(np.float32)))
            metric.update({"gt_verts_neutral": s["gt_verts_neutral"][:1], "gt_lmk3d_neutral": s["gt_lmk3d_neutral"][:1],
                           "landmark": s["landmark"][:1]},
                          {"verts_neutral": pred["vertices"], "lmk3d_neutral": pred["landmarks68"],
                           "faces": face.faces, "verts_mean": mean["vertices"][0], "lmk3d_mean": mean["landmarks68"][0],
                           "landmarks2d": s["landmark"][:1, :, :2]})
    r = metric.compute()
    return {"s2m_median": r["s2m_median"], "baseline_s2m_median": r["baseline_s2m_median"],
            "ratio": r["s2m_median_ratio"]}


def main(argv=None) -> int:
    import ppface3d  # noqa: F401  (registers)
    from ppengine.config import load_config
    from ppengine.registry import DATASETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", default="configs/deca.yml")
    ap.add_argument("-o", "--override", action="append", default=[], help="config override key=value")
    ap.add_argument("--train-subjects", type=int, default=3000)
    ap.add_argument("--test-subjects", type=int, default=64)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.04])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor

    cfg = load_config(a.config, a.override)
    train_cfg = dict(cfg["data"]["train"], num_subjects=a.train_subjects)
    test_cfg = dict(cfg["data"]["test"], num_subjects=a.test_subjects)
    train, test = DATASETS.build(train_cfg), DATASETS.build(test_cfg)
    n_vary = train.shape_components or train.n_shape
    Ltr, Str = landmark_sets(train, a.train_subjects)
    Lte, Ste = landmark_sets(test, a.test_subjects)
    Str, Ste = Str[:, :n_vary], Ste[:, :n_vary]
    iod = float(np.linalg.norm(Lte[:, 36] - Lte[:, 45], axis=-1).mean())
    face = train.face
    pad = lambda p: np.concatenate([p, np.zeros((len(p), train.n_shape - n_vary))], 1)  # noqa: E731
    rng = np.random.default_rng(0)
    results = {"config": a.config, "rows": []}
    for noise in a.noise:
        Xtr = normalise(Ltr + rng.normal(size=Ltr.shape) * iod * noise)
        Xte = normalise(Lte + rng.normal(size=Lte.shape) * iod * noise)
        fits = {"ridge": Ridge(alpha=1e-4).fit(Xtr, Str),
                "mlp": MLPRegressor(hidden_layer_sizes=(256, 256), max_iter=300, random_state=0).fit(Xtr * 10, Str)}
        for name, f in fits.items():
            p = f.predict(Xte * (10 if name == "mlp" else 1))
            r = s2m_ratio(face, test, pad(p))
            row = {"noise_iod": noise, "regressor": name, **r,
                   "r2": np.round(r2_score(Ste, p, multioutput="raw_values"), 2).tolist()}
            results["rows"].append(row)
            print(f"landmark noise {noise:.3f} IOD  {name:5s}  s2m median {r['s2m_median']:.3f} mm "
                  f"(baseline {r['baseline_s2m_median']:.3f})  ratio {r['ratio']:.3f}  R2 {row['r2']}", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
