"""FLAME forward and forward+backward: ppface3d (Paddle) vs smplx (torch), same model, same run.

    python bench/flame.py [--batches 1 16 128] [--threads 2] [--repeats 20]

Both run the generated FLAME-format model (5k vertices, 300 shape + 100 expression
coefficients, all poses, 68 landmarks with the yaw-dependent contour). Prints one JSON
line per case, then one per batch size with the ratios smplx_ms / ppface3d_ms (> 1: ppface3d faster).
"""
import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import numpy as np
    import paddle
    import torch

    torch.set_num_threads(a.threads)
    try:
        paddle.base.core.set_num_threads(a.threads)
    except AttributeError:
        pass
    import smplx

    from ppface3d.flame import FLAME, default_model_path

    folder = os.path.dirname(default_model_path())
    ours = FLAME.from_files(os.path.join(folder, "FLAME_NEUTRAL.pkl"), os.path.join(folder, "flame_static_embedding.pkl"))

    def timeit(cases):
        """Median ms of each case; the cases are interleaved so that machine load hits all alike."""
        for fn in cases.values():
            for _ in range(a.warmup):
                fn()
        ts = {k: [] for k in cases}
        for _ in range(a.repeats):
            for k, fn in cases.items():
                t = time.perf_counter()
                fn()
                ts[k].append((time.perf_counter() - t) * 1000)
        return {k: statistics.median(v) for k, v in ts.items()}

    for B in a.batches:
        rng = np.random.default_rng(0)
        inp = {"shape": rng.standard_normal((B, 300)), "expression": rng.standard_normal((B, 100)),
               "global_pose": rng.standard_normal((B, 3)) * 0.3, "neck_pose": rng.standard_normal((B, 3)) * 0.2,
               "jaw_pose": rng.standard_normal((B, 3)) * 0.2, "eye_pose": rng.standard_normal((B, 6)) * 0.2,
               "translation": rng.standard_normal((B, 3)) * 0.1}
        inp = {k: v.astype(np.float32) for k, v in inp.items()}
        ref = smplx.FLAME(model_path=folder, num_betas=300, num_expression_coeffs=100, use_face_contour=True,
                          batch_size=B)

        def pp_args(grad):
            return {k: paddle.to_tensor(v, stop_gradient=not grad) for k, v in inp.items()}

        def th_args(grad):
            t = {k: torch.tensor(v, requires_grad=grad) for k, v in inp.items()}
            return dict(betas=t["shape"], expression=t["expression"], global_orient=t["global_pose"],
                        neck_pose=t["neck_pose"], jaw_pose=t["jaw_pose"], leye_pose=t["eye_pose"][:, :3],
                        reye_pose=t["eye_pose"][:, 3:], transl=t["translation"])

        def pp_fwd():  # CPU ops run eagerly: the outputs exist when the call returns
            with paddle.no_grad():
                return ours(**pp_args(False))

        def th_fwd():
            with torch.no_grad():
                return ref(**th_args(False))

        def pp_bwd():
            out = ours(**pp_args(True))
            (out.vertices.sum() + out.landmarks.sum()).backward()

        def th_bwd():
            out = ref(**th_args(True))
            (out.vertices.sum() + out.joints.sum()).backward()

        res = timeit({("ppface3d", "forward"): pp_fwd, ("smplx", "forward"): th_fwd,
                      ("ppface3d", "forward_backward"): pp_bwd, ("smplx", "forward_backward"): th_bwd})
        for (impl, mode), ms in res.items():
            print(json.dumps({"bench": "flame", "impl": impl, "mode": mode, "batch": B, "median_ms": round(ms, 3),
                              "threads": a.threads, "repeats": a.repeats}), flush=True)
        print(json.dumps({"bench": "flame", "batch": B, "threads": a.threads,
                          "ratio_forward": round(res[("smplx", "forward")] / res[("ppface3d", "forward")], 3),
                          "ratio_forward_backward": round(res[("smplx", "forward_backward")]
                                                          / res[("ppface3d", "forward_backward")], 3)}), flush=True)


if __name__ == "__main__":
    main()
