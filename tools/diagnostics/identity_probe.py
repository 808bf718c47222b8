"""How much a face-recognition network's features say about the synthetic faces' shape; and
warming the feature cache ahead of training.

    python tools/diagnostics/identity_probe.py -c configs/mica.yml [-o data.train.num_subjects=800] [--split train]
    python tools/diagnostics/identity_probe.py -c configs/mica.yml --warm --shard 0/2 &    # two processes share
    python tools/diagnostics/identity_probe.py -c configs/mica.yml --warm --shard 1/2      # the training features

``--warm`` only computes (and caches) the split's features, one shard of its chunks (chunk c when
c % N == I), each chunk written atomically to the cache the training run reads, and prints the
chunks done and the seconds; a run started afterwards computes only what is missing.

On the identity features of a split of ``IdentitySyntheticFaces`` (computed and cached as for
training, K >= 2 images per subject) it prints one JSON line with:

* ``within``: mean distance of an image's (unit) feature to its subject's mean feature;
  ``between``: mean distance of the subjects' mean features to the overall mean. A network
  that sees identity has ``within`` well below ``between``.
* ``--ambient-light``: the synthetic lights keep only their ambient term (no directional part),
  with the other variations as configured (e.g. ``-o data.train.max_yaw=0``); such features go to
  a temporary cache, never the training cache.
* ``ridge_r2``: a linear probe (ridge regression, 80 % of the subjects to fit, 20 % held out)
  from one image's feature to the subject's shape coefficients: R^2 per coefficient (1 = the
  coefficient is read perfectly, 0 = no better than its mean). A ceiling check for MICA's
  mapping network on the same features.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from ppengine.quiet import quiet  # noqa: E402

quiet()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default=os.path.join(ROOT, "configs", "mica.yml"))
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument("--split", default="train")
    p.add_argument("--alpha", type=float, default=1.0, help="ridge regularisation")
    p.add_argument("--ambient-light", action="store_true", help="lights without their directional part")
    p.add_argument("--warm", action="store_true", help="only compute and cache the features (see --shard)")
    p.add_argument("--shard", default="0/1", help="with --warm, I/N: the chunks c with c %% N == I")
    a = p.parse_args(argv)
    overrides = list(a.override)
    tmp = None
    if a.ambient_light:
        import tempfile

        import ppface3d.data.synthetic as synthetic

        tmp = tempfile.TemporaryDirectory()
        overrides.append(f"data.{a.split}.feature_cache={tmp.name}")  # never mixed with real features
        random_sh = synthetic.random_sh

        def ambient(rng, n):
            sh = random_sh(rng, n)  # the same draws, so the rest of the sample is unchanged
            sh[:, 1:] = 0.0
            return sh

        synthetic.random_sh = ambient

    import numpy as np

    import ppface3d  # noqa: F401
    from ppengine.config import load_config
    from ppengine.trainer import build_dataset

    ds = build_dataset(load_config(a.config, overrides), a.split)
    if a.warm:
        import time

        i, n = (int(v) for v in a.shard.split("/"))
        chunks = -(-len(ds) // ds.chunk)
        mine = [c for c in range(chunks) if c % n == i]
        t = time.time()
        for c in mine:
            ds.chunk_features(c)
        print(json.dumps({"split": a.split, "folder": ds.folder, "chunks_here": len(mine), "chunks": chunks,
                          "seconds": round(time.time() - t, 1)}))
        return 0
    n = len(ds)
    feats = np.stack([ds.identity(i) for i in range(n)])  # (n, K, D)
    comps = ds.shape_components or ds.n_shape
    shapes = np.stack([ds.sample_codes(i)["shape"][:comps] for i in range(n)])
    mean = feats.mean(1, keepdims=True)
    within = float(np.linalg.norm(feats - mean, axis=-1).mean())
    between = float(np.linalg.norm(mean[:, 0] - mean[:, 0].mean(0), axis=-1).mean())
    cut = int(0.8 * n)
    X, Y = feats[:cut].reshape(-1, feats.shape[-1]), np.repeat(shapes[:cut], feats.shape[1], 0)
    Xt, Yt = feats[cut:].reshape(-1, feats.shape[-1]), np.repeat(shapes[cut:], feats.shape[1], 0)
    Xm = np.concatenate([X, np.ones((len(X), 1))], 1)
    W = np.linalg.solve(Xm.T @ Xm + a.alpha * np.eye(Xm.shape[1]), Xm.T @ Y)
    P = np.concatenate([Xt, np.ones((len(Xt), 1))], 1) @ W
    r2 = 1.0 - ((P - Yt) ** 2).mean(0) / Yt.var(0)
    print(json.dumps({"split": a.split, "subjects": n, "K": int(feats.shape[1]), "dim": int(feats.shape[2]),
                      "network": ds.features, "ambient_light": a.ambient_light, "within": round(within, 4), "between": round(between, 4),
                      "ridge_r2": [round(float(v), 3) for v in r2]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
