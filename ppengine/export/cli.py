"""``python tools/export.py``: export a model's components to Paddle Inference, ONNX and Core ML.

    python tools/export.py -c configs/ldm/class2img_digits.yml --weights output/ldm/class2img_digits --target onnx
    python tools/export.py --weights output/ldm/class2img_digits --target paddle onnx --output out/digits
    python tools/export.py -c configs/ldm/sd21_base.yml -o model.folder=/path/to/sd-2-1-base --target coreml \\
        --precision fp16 --attention split_einsum --chunk 2
    python tools/export.py -c configs/deca.yml --weights output/deca --component encoder flame --target onnx

``--weights`` is a training run's folder (its config.yml rebuilds the model) or a weights file
(with ``-c``). Models whose config names their own weights (``model.weights``, ``model.folder``,
``model.checkpoint``: Stable Diffusion folders and single files, DECA's released checkpoint) need no
``--weights``. Nothing is exported from random weights. The output folder (default
``output/export/<name>``) is written under a temporary name and renamed when every file passed its
check (see docs/export.md); it holds ``manifest.json`` with every input, output, file and check.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import InputError, PPError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/export.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=None, help="the model's config (default: the run's config.yml)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry (repeatable), e.g. -o model.folder=/path/to/sd-2-1-base")
    p.add_argument("--weights", default=None, help="a training run folder (with config.yml) or a weights file")
    p.add_argument("--target", nargs="+", default=["onnx"], metavar="{paddle,onnx,coreml}",
                   help="what to write: paddle (Paddle Inference program), onnx, coreml (default onnx)")
    p.add_argument("--component", nargs="+", default=["all"], metavar="NAME",
                   help="components to export (default all), e.g. unet vae_decoder")
    p.add_argument("--output", default=None, help="output folder (default output/export/<name>)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="Core ML compute precision")
    p.add_argument("--attention", default="standard", choices=["standard", "split_einsum"],
                   help="UNet attention form (split_einsum: the Neural Engine form, same numbers)")
    p.add_argument("--compress", default="none", choices=["none", "palettize6", "palettize4", "int8"],
                   help="Core ML weight compression")
    p.add_argument("--chunk", type=int, default=0, help="2: the Core ML UNet in two packages (apple's --chunk-unet)")
    p.add_argument("--batch", type=int, default=None,
                   help="graph batch: the UNet's (default 2, the guidance pair) / the face components' (default 1)")
    p.add_argument("--check", dest="check", action="store_true", default=True,
                   help="compare every file with the dygraph model (default)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the numerical comparison")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    return p


def has_own_weights(cfg) -> bool:
    m = cfg.get("model") or {}
    return any(m.get(k) for k in ("weights", "folder", "checkpoint"))


def load_model(config, overrides, weights):
    """(model, cfg, name) from ``--weights`` and/or ``-c``; never random weights."""
    from ..config import load_config
    from ..inference import load_for_inference
    from ..trainer import build_model

    if weights:
        model, cfg = load_for_inference(weights, overrides, config=config)
        name = os.path.basename(os.path.normpath(weights if os.path.isdir(weights) else os.path.dirname(weights)))
        return model, cfg, name
    if not config:
        raise InputError("give --weights RUN_FOLDER (a training run) or -c CONFIG with the model's weights")
    cfg = load_config(config, overrides)
    if not has_own_weights(cfg):
        out = (cfg.get("train") or {}).get("output")
        hint = f" (e.g. --weights {out})" if out else ""
        raise InputError(f"{config}: no trained weights to export: give --weights RUN_FOLDER_OR_FILE{hint}, or "
                         "-o model.weights=FILE (exporting random weights is refused)")
    model = build_model(cfg)
    model.eval()
    return model, cfg, os.path.splitext(os.path.basename(config))[0]


def run(a) -> dict:
    from .pipeline import check_options, check_output, export
    from .spec import ExportOptions

    check_options(a.target, a.precision, a.compress, a.chunk)
    if a.batch is not None and a.batch < 1:
        raise InputError(f"--batch {a.batch}: must be >= 1")
    if a.output:
        check_output(a.output)
    model, cfg, name = load_model(a.config, a.override, a.weights)
    output = a.output or os.path.join("output", "export", name)
    print(f"exporting {type(model).__name__} ({name}) -> {output} [{', '.join(a.target)}]")
    manifest = export(model, cfg, output, targets=a.target, components=a.component,
                      options=ExportOptions(batch=a.batch, attention=a.attention), precision=a.precision,
                      compress=a.compress, chunk=a.chunk, check=a.check, seed=a.seed)
    failed = manifest.get("failed") or []
    print(f"wrote {output}/manifest.json ({len(manifest['components'])} components"
          + (f"; below their floor, in coreml/failed/: {', '.join(failed)}" if failed else "") + ")")
    return manifest


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        manifest = run(a)
    except PPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    return 1 if manifest.get("failed") else 0
