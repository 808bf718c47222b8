"""How much of the synthetic test set's face shape the 2D landmarks can tell, and how precise
they must be: an upper bound for any landmark-driven shape estimate (docs/deca.md).

    python -m ppface3d.apps.shape_diagnose -c configs/deca.yml [--train-subjects 3000] [--noise 0 0.01 0.02 0.04]

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
import sys
from typing import Dict

import numpy as np


def landmark_sets(ds, n: int):
    """(n*K, 68, 2) screen-NDC landmarks and (n*K, n_shape) shapes of ``ds``'s first n subjects."""
    import paddle

    from ..render import OrthographicCamera

    L, S = [], []
    with paddle.no_grad():
        for i in range(n):
            c = ds.sample_codes(i)
            fo, cam = ds.posed(c)
            L.append(OrthographicCamera(paddle.to_tensor(cam)).project(fo.landmarks).numpy())
            S.append(np.tile(c["shape"][None], (len(cam), 1)))
    return np.concatenate(L), np.concatenate(S)


def normalise(L: np.ndarray) -> np.ndarray:
    """Remove translation and scale of each (68, 2) set; flatten."""
    L = L - L.mean(1, keepdims=True)
    return (L / np.sqrt((L ** 2).sum((1, 2), keepdims=True))).reshape(len(L), -1)


def s2m_ratio(flame, test, shapes: np.ndarray) -> Dict[str, float]:
    """Median scan-to-mesh error of predicted neutral shapes vs the mean shape, on ``test``."""
    import paddle

    from ..losses.metrics import FaceReconstructionMetric
    from ..models.deca import DECA

    lm = DECA._lmk68
    metric = FaceReconstructionMetric(icp_iters=2)
    t = paddle.to_tensor
    with paddle.no_grad():
        mean = flame(shape=paddle.zeros([1, shapes.shape[1]]))
        for i in range(len(shapes)):
            s = test[i]
            pred = flame(shape=t(shapes[i:i + 1].astype(np.float32)))
            metric.update({"gt_verts_neutral": s["gt_verts_neutral"][:1], "gt_lmk3d_neutral": s["gt_lmk3d_neutral"][:1],
                           "landmark": s["landmark"][:1]},
                          {"verts_neutral": pred.vertices, "lmk3d_neutral": lm(pred), "faces": flame.faces,
                           "verts_mean": mean.vertices[0], "lmk3d_mean": lm(mean)[0],
                           "landmarks2d": s["landmark"][:1, :, :2]})
    r = metric.compute()
    return {"s2m_median": r["s2m_median"], "baseline_s2m_median": r["baseline_s2m_median"],
            "ratio": r["s2m_median_ratio"]}


def main(argv=None) -> int:
    from ppengine.config import load_config
    from ppengine.registry import DATASETS

    import ppface3d  # noqa: F401  (registers)

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", default="configs/deca.yml")
    ap.add_argument("--train-subjects", type=int, default=3000)
    ap.add_argument("--test-subjects", type=int, default=64)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.04])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor

    cfg = load_config(a.config)
    train_cfg = dict(cfg["data"]["train"], num_subjects=a.train_subjects)
    test_cfg = dict(cfg["data"]["test"], num_subjects=a.test_subjects)
    train, test = DATASETS.build(train_cfg), DATASETS.build(test_cfg)
    n_vary = train.shape_components or train.n_shape
    Ltr, Str = landmark_sets(train, a.train_subjects)
    Lte, Ste = landmark_sets(test, a.test_subjects)
    Str, Ste = Str[:, :n_vary], Ste[:, :n_vary]
    iod = float(np.linalg.norm(Lte[:, 36] - Lte[:, 45], axis=-1).mean())
    flame = train._parts()[0]
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
            r = s2m_ratio(flame, test, pad(p))
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
