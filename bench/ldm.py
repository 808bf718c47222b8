"""UNet forward speed and peak memory: ppldm against ppdiffusers with the same weights.

    OMP_NUM_THREADS=2 .venv/bin/python bench/ldm.py [--quick] [--cases small,sd]

Cases: ``small`` (2 levels 32/64, 16x16 latents, 1 transformer level) and ``sd`` (Stable
Diffusion 2.x layout at reduced width: 4 levels 64/128/128/128, cross-attention on the first
three, linear projections, 32-wide heads, 77x64 text context, 32x32 latents), each at batch 1
and 4, with ppldm's standard and split-einsum (ANE) attention. ppdiffusers' UNet2DConditionModel
gets the same random weights (the same names; the outputs are compared).

Speed: the three implementations (ppdiffusers, ppldm standard, ppldm split-einsum) run in one
process, called in turn, so load from elsewhere on the machine hits them alike (median of
``--iters`` calls after a warm-up). Memory: each implementation runs alone in a fresh process;
once the model and inputs are built, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``) and the peak resident memory over two forward passes, less the
resident memory before them, is reported (activations plus what the allocator keeps). Prints one JSON line per
(case, batch, attention) with steps/s, peak MB and the ppldm / ppdiffusers ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "small": dict(blocks=(32, 64), down=("CrossAttnDownBlock2D", "DownBlock2D"), heads=(2, 4), ctx=(8, 32),
                  size=16, layers=1),
    "sd": dict(blocks=(64, 128, 128, 128), down=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               heads=(2, 4, 4, 4), ctx=(77, 64), size=32, layers=2),
}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build(case: str, impls):
    """ppdiffusers' UNet and ppldm's (standard / split_einsum), all with the same random weights."""
    import numpy as np
    import paddle
    from ppdiffusers import UNet2DConditionModel

    sys.path.insert(0, ROOT)
    from ppldm.interop import unet_kwargs_from_diffusers
    from ppldm.models import UNet

    c = CASES[case]
    ref = UNet2DConditionModel(
        sample_size=c["size"], block_out_channels=c["blocks"], layers_per_block=c["layers"],
        down_block_types=c["down"],
        up_block_types=tuple("CrossAttnUpBlock2D" if d.startswith("CrossAttn") else "UpBlock2D"
                             for d in reversed(c["down"])),
        attention_head_dim=c["heads"], cross_attention_dim=c["ctx"][1], use_linear_projection=True)
    rng = np.random.RandomState(0)
    state = {k: paddle.to_tensor(rng.standard_normal(v.shape).astype("float32") * 0.05)
             for k, v in ref.state_dict().items()}
    fns = {}
    for impl in impls:
        if impl == "ppdiffusers":
            ref.set_state_dict(state)
            ref.eval()
            fns[impl] = lambda x, t, ctx, m=ref: m(x, t, encoder_hidden_states=ctx).sample
        else:
            m = UNet(**unet_kwargs_from_diffusers(dict(ref.config)), attention_type=impl.split(":")[1])
            m.set_state_dict(state)
            m.eval()
            fns[impl] = lambda x, t, ctx, m=m: m(x, t, ctx)
    if "ppdiffusers" not in impls:
        del ref
    return fns


def _inputs(case, batch):
    import numpy as np
    import paddle

    c = CASES[case]
    rng = np.random.RandomState(1)
    x = paddle.to_tensor(rng.standard_normal((batch, 4, c["size"], c["size"])).astype("float32"))
    ctx = paddle.to_tensor(rng.standard_normal((batch,) + c["ctx"]).astype("float32"))
    return x, paddle.to_tensor([500] * batch), ctx


IMPLS = ("ppdiffusers", "ppldm:standard", "ppldm:split_einsum")


def worker_time(case: str, batch: int, iters: int):
    """All three implementations in one process, called in turn, so that load from other
    processes on the machine hits them alike. Prints medians and max output differences."""
    import numpy as np
    import paddle

    fns = _build(case, IMPLS)
    x, t, ctx = _inputs(case, batch)
    times = {k: [] for k in fns}
    outs = {}
    with paddle.no_grad():
        for k, f in fns.items():                                  # warm-up
            outs[k] = f(x, t, ctx).numpy()
        for _ in range(iters):
            for k, f in fns.items():
                t0 = time.perf_counter()
                float(f(x, t, ctx).sum())
                times[k].append(time.perf_counter() - t0)
    res = {k: float(np.median(v)) for k, v in times.items()}
    res["diff"] = {k: float(np.abs(outs[k] - outs["ppdiffusers"]).max()) for k in fns}
    print(json.dumps(res))


def worker_mem(case: str, batch: int, impl: str):
    """One implementation alone: growth of peak resident memory over two forward passes (MB)."""
    import paddle

    fn = _build(case, [impl])[impl]
    x, t, ctx = _inputs(case, batch)
    with paddle.no_grad():
        rss0 = _status_mb("VmRSS")
        exact = _reset_peak()
        for _ in range(2):
            float(fn(x, t, ctx).sum())
    peak = (_status_mb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - rss0
    print(json.dumps({"peak_mb": max(peak, 0.0), "exact": exact}))


def _run(args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + [str(a) for a in args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"benchmark worker failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="small,sd")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--iters", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="small case, batch 1, 2 iterations")
    args = p.parse_args()
    cases = ["small"] if args.quick else args.cases.split(",")
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    iters = 2 if args.quick else args.iters
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    for case in cases:
        for batch in batches:
            tm = _run(["time", case, batch, iters])
            mem = {impl: _run(["mem", case, batch, impl])["peak_mb"] for impl in IMPLS}
            ref_s, ref_mb = tm["ppdiffusers"], mem["ppdiffusers"]
            for impl in IMPLS[1:]:
                print(json.dumps({
                    "bench": "ldm_unet_forward", "case": case, "batch": batch, "attention": impl.split(":")[1],
                    "threads": threads, "iters": iters,
                    "ppldm_steps_per_s": round(1 / tm[impl], 3), "ppdiffusers_steps_per_s": round(1 / ref_s, 3),
                    "speed_ratio": round(ref_s / tm[impl], 3),
                    "ppldm_peak_mb": round(mem[impl], 1), "ppdiffusers_peak_mb": round(ref_mb, 1),
                    "mem_ratio": round(mem[impl] / max(ref_mb, 1e-6), 3),
                    "max_abs_diff": tm["diff"][impl]}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        if sys.argv[2] == "time":
            worker_time(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        else:
            worker_mem(sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
