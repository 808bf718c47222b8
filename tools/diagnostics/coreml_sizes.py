"""Core ML packages of one model at every precision / compression: size on disk and parity (PSNR,
largest error) against the dygraph model, as measured by the NumPy ML Program evaluator. Prints a
Markdown table (docs/export.md, "Core ML") and one JSON line per setting.

    python tools/diagnostics/coreml_sizes.py --weights output/ldm/class2img_digits --output /tmp/coreml_sizes
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ppengine.quiet import quiet  # noqa: E402

SETTINGS = [  # (precision, attention, compress, chunk)
    ("fp32", "standard", "none", 0),
    ("fp16", "standard", "none", 0),
    ("fp16", "split_einsum", "none", 0),
    ("fp16", "standard", "int8", 0),
    ("fp16", "standard", "palettize6", 0),
    ("fp16", "standard", "palettize4", 0),
    ("fp16", "split_einsum", "palettize6", 2),
]


def main(argv=None) -> int:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a training run folder (config.yml + weights)")
    p.add_argument("--output", required=True, help="scratch folder for the exports")
    p.add_argument("--only", type=int, nargs="*", default=None, help="indices of SETTINGS to run")
    a = p.parse_args(argv)

    from ppengine import load_for_inference
    from ppengine.export import ExportOptions, export

    rows = []
    for i, (precision, attention, compress, chunk) in enumerate(SETTINGS):
        if a.only is not None and i not in a.only:
            continue
        model, cfg = load_for_inference(a.weights)
        model.eval()
        out = os.path.join(a.output, f"{precision}_{attention}_{compress}_{chunk}")
        t = time.time()
        m = export(model, cfg, out, targets=["coreml"], options=ExportOptions(attention=attention),
                   precision=precision, compress=compress, chunk=chunk, log=lambda s: None)
        seconds = time.time() - t
        for name, e in m["components"].items():
            c = e["coreml"]
            row = dict(component=name, precision=precision, attention=attention, compress=compress, chunk=chunk,
                       files=[os.path.basename(f) for f in c["files"]], size_bytes=c["size_bytes"],
                       psnr_db={k: v["psnr"] for k, v in c["parity"].items()},
                       max_abs_err={k: v["max_abs_err"] for k, v in c["parity"].items()},
                       floor_db=c["floor_db"], failed=bool(c.get("failed")), export_seconds=round(seconds, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| component | precision | attention | compress | chunk | size | PSNR vs dygraph (dB) | max abs err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        psnrs = ", ".join(f"{k} {v:.1f}" for k, v in r["psnr_db"].items())
        errs = ", ".join(f"{v:.1e}" for v in r["max_abs_err"].values())
        print(f"| {r['component']} | {r['precision']} | {r['attention']} | {r['compress']} | {r['chunk'] or ''} | "
              f"{r['size_bytes'] / 1024:.0f} KiB | {psnrs}{' FAILED' if r['failed'] else ''} | {errs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
