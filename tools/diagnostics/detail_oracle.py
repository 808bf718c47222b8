"""What a perfect detail branch could gain on the synthetic test set, with a given coarse model
(docs/deca_detail.md): the true displacement map placed on the coarse model's own mesh.

    python tools/diagnostics/detail_oracle.py -c configs/deca_detail.yml [-o model.coarse_weights=...] [-n 64]

For each test face of the config (SyntheticFaces with wrinkles and detail_gt) it renders, through
the normal-map path the metric uses (``DetailNormalMetric``), the normals of the coarse model's
fit with a zero displacement (``coarse``), of that fit carrying the ground-truth displacement
(``oracle``), and of the true coarse mesh with a zero displacement (``true_coarse``: the detail's
own deviation), and prints their mean angular error against the ground truth over the face
region as one JSON line; ``vertex_vs_flat`` is the mean angle between the true mesh's vertex
normals and its zero-displacement normal map (the flat triangles of DECA's displacement2normal).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(argv=None) -> int:
    from ppengine.quiet import quiet

    quiet()
    import paddle

    import ppface3d  # noqa: F401
    from ppengine.config import load_config
    from ppengine.trainer import build_dataset, build_model
    from ppface3d.losses.detail_metrics import normal_angles

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default="configs/deca_detail.yml")
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument("-n", type=int, default=64, help="test faces")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.override)
    model = build_model(cfg)
    model.eval()
    test = build_dataset(cfg, "test")
    face, t = model.face, paddle.to_tensor
    errs = {"coarse": [], "oracle": [], "true_coarse": [], "vertex_vs_flat": []}
    n = min(args.n, len(test))
    test.prepare(range(n))
    with paddle.no_grad():
        for i in range(n):
            s, c = test[i], test.sample_codes(i)
            codes = model.coarse.encode_test(t(s["image"]))
            pred = face.decode(codes)
            disp = t(test.detail.displacements([i], [c])[:, None])
            mask = test.detail.wrinkles.mask > 0.5
            true, cam = test.posed(c)
            true = face.place(true, t(cam))
            def normals(dec, d):
                return face.render(dec, mode="shape", normal_map=face.detail_normal_map(
                    d, dec["vertices"], mask, weighted=True))

            zero = disp * 0.0
            renders = {"coarse": normals(pred, zero), "oracle": normals(pred, disp), "true_coarse": normals(true, zero)}
            region = s["detail_region"] > 0.5
            for k, r in renders.items():
                m = region & (r["alpha_images"].numpy()[:, 0] > 0.5)
                errs[k].append(normal_angles(r["normal_images"].numpy(), s["normal_gt"])[m])
            vertex = face.render(true, mode="shape")["normal_images"].numpy()
            errs["vertex_vs_flat"].append(normal_angles(vertex, renders["true_coarse"]["normal_images"].numpy())[region])
    out = {k: round(float(np.concatenate(v).mean()), 3) for k, v in errs.items()}
    out["oracle_ratio"] = round(out["oracle"] / out["coarse"], 3)
    out["faces"] = n
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
