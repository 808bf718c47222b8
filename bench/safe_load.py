"""Reading a PyTorch checkpoint: ppengine.safe_load (no torch) vs torch.load(weights_only=True).

    python bench/safe_load.py [--values 25557032] [--tensors 161] [--repeats 3]

Writes a state dict of float32 tensors (default: ResNet-50's 25.6 M values in 161 tensors,
102 MB) with torch.save in the zip and the legacy format, reads it with both loaders, checks
the arrays are equal, and prints one JSON line per format with the median seconds.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=25_557_032)
    ap.add_argument("--tensors", type=int, default=161)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import numpy as np
    import torch

    from ppengine.safe_load import load_torch_checkpoint

    torch.manual_seed(0)
    each = a.values // a.tensors
    sizes = [each] * (a.tensors - 1) + [a.values - each * (a.tensors - 1)]
    sd = {f"layer{i}.weight": torch.randn(n) for i, n in enumerate(sizes)}
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("zip", "legacy"):
            path = os.path.join(d, f"ckpt_{fmt}.pth")
            torch.save(sd, path, _use_new_zipfile_serialization=fmt == "zip")
            ours, ref = [], []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                got = load_torch_checkpoint(path)
                ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                want = torch.load(path, weights_only=True)
                ref.append(time.perf_counter() - t0)
            assert all(np.array_equal(got[k], want[k].numpy()) for k in sd)
            print(json.dumps({"format": fmt, "mb": round(os.path.getsize(path) / 1e6, 1), "tensors": a.tensors,
                              "safe_load_s": round(statistics.median(ours), 3),
                              "torch_load_weights_only_s": round(statistics.median(ref), 3)}))


if __name__ == "__main__":
    main()
