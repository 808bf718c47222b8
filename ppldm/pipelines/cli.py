"""``python tools/infer.py ldm --weights RUN [options]``: sample a trained latent-diffusion model.

Examples::

    tools/infer.py ldm --weights output/ldm/class2img_digits --class 0 1 2 3 -n 4
    tools/infer.py ldm --weights output/ldm/txt2img_shapes --prompt "a red circle left of a blue square"
    tools/infer.py ldm --weights output/ldm/layout2img_shapes --boxes boxes.json
    tools/infer.py ldm --weights output/ldm/inpaint_shapes --image photo.png --mask mask.png
    tools/infer.py ldm --weights output/ldm/sr_shapes --lowres small.png
    tools/infer.py ldm --weights output/ldm/uncond_digits -n 16
    tools/infer.py ldm -c configs/ldm/class2img_digits.yml --class 7      # weights: <train.output>
    tools/infer.py ldm -c configs/ldm/sd21_base.yml -o model.folder=/path/to/sd-2-1-base --prompt "an astronaut"
    tools/infer.py ldm --weights output/ldm/class2img_digits --class 3 --backend onnxruntime   # exported graphs

``--weights`` is a training run's folder (its ``config.yml`` rebuilds the model; the weights are
``final.safetensors``, else ``best.safetensors``, else the latest checkpoint) or a weights file
in one. ``-c`` gives the config explicitly (then ``--weights`` defaults to its ``train.output``).
``--backend onnxruntime`` / ``paddle-inference`` samples with the model's exported graphs (the same
sampler and guidance; the UNet, first stage and conditioner run as ONNX / Paddle Inference files):
from ``--export-dir`` (a folder written by tools/export.py with that target), or from a cache folder
exported once per weights + config. The dygraph model then samples too (``--no-compare`` skips it)
and the largest pixel difference between the two is printed.
``--output`` is a folder: ``grid.png`` (with the inputs beside the samples for inpainting and
super-resolution) and one ``sample_NNN.png`` per sample.
A boxes file is JSON: a list of ``[class, x0, y0, x1, y1]`` (coordinates in [0, 1]) where class
is an integer or, for the shapes world, a name such as ``"red circle"``; or ``{"boxes": [...]}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _parser():
    p = argparse.ArgumentParser(prog="tools/infer.py ldm", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="a training run folder (with config.yml) or a weights file in one")
    p.add_argument("-c", "--config", default=None,
                   help="the model's config (default: the run's config.yml), e.g. configs/ldm/sd21_base.yml")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. -o model.sampler.steps=50 (repeatable)")
    p.add_argument("--prompt", nargs="+", default=None, help="caption(s) for text-to-image")
    p.add_argument("--class", dest="classes", nargs="+", type=int, default=None, help="class label(s)")
    p.add_argument("--boxes", default=None, help="JSON file of boxes for layout-to-image")
    p.add_argument("--image", default=None, help="image to inpaint")
    p.add_argument("--mask", default=None, help="mask image for inpainting (white = fill in)")
    p.add_argument("--lowres", default=None, help="low-resolution image for super-resolution")
    p.add_argument("-n", "--num", type=int, default=4, help="samples per condition (default 4)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: model.sampler.steps)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--sampler", default=None, help="ddim | ddpm | pndm | plms | dpm_solver++ | euler | euler_a")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="paddle", choices=["paddle", "onnxruntime", "paddle-inference"],
                   help="run the networks in dygraph (paddle) or as exported graphs (default paddle)")
    p.add_argument("--export-dir", default=None,
                   help="exported folder for --backend (default: exported once into a cache folder)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per exported graph (default 1)")
    p.add_argument("--onednn", action="store_true", help="paddle-inference: use oneDNN kernels (check the output)")
    p.add_argument("--no-compare", dest="compare", action="store_false", default=True,
                   help="with --backend: do not also sample in dygraph to print the pixel difference")
    p.add_argument("--output", default="output/ldm_infer",
                   help="output folder: grid.png + sample_NNN.png (default output/ldm_infer)")
    return p


def parse_boxes(path: str, n_classes: int):
    """Read a boxes JSON file -> [N, 5] float32 (class, x0, y0, x1, y1)."""
    from ppengine.errors import InputError

    from ..data.shapes import COLOR_NAMES, SHAPES, class_id

    if not os.path.isfile(path):
        raise InputError(f"boxes file {path!r} not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"boxes file {path!r} is not valid JSON: {e}") from None
    if isinstance(data, dict):
        data = data.get("boxes")
    if not isinstance(data, list) or not data:
        raise InputError(f"boxes file {path!r}: expected a non-empty list of [class, x0, y0, x1, y1]")
    rows = []
    for i, b in enumerate(data):
        if not isinstance(b, (list, tuple)) or len(b) != 5:
            raise InputError(f"boxes file {path!r}: box {i} must be [class, x0, y0, x1, y1], got {b!r}")
        cls = b[0]
        if isinstance(cls, str):
            parts = cls.lower().split()
            if len(parts) != 2 or parts[0] not in COLOR_NAMES or parts[1] not in SHAPES:
                raise InputError(f"boxes file {path!r}: box {i} class {cls!r} is not '<colour> <shape>' "
                                 f"with colour in {COLOR_NAMES} and shape in {SHAPES}")
            cls = class_id(parts[0], parts[1])
        try:
            row = [float(cls)] + [float(v) for v in b[1:]]
        except (TypeError, ValueError):
            raise InputError(f"boxes file {path!r}: box {i} has a non-numeric entry: {b!r}") from None
        if not (0 <= row[1] < row[3] <= 1 and 0 <= row[2] < row[4] <= 1):
            raise InputError(f"boxes file {path!r}: box {i} needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {b!r}")
        if not 0 <= row[0] < n_classes or row[0] != int(row[0]):
            raise InputError(f"boxes file {path!r}: box {i} class {b[0]!r} is not in 0..{n_classes - 1}")
        rows.append(row)
    return np.asarray(rows, np.float32)


def build_batch(model, a, size: int):
    """The conditioning batch for the model's task from the command-line options -> (batch, nrow)."""
    import paddle

    from ppengine.errors import InputError

    from .images import read_image

    n = max(1, int(a.num))
    cond = model.conditioner
    batch = {}
    nrow = n
    if cond is not None:
        key = cond.key
        if key == "label":
            if not a.classes:
                raise InputError("this is a class-conditional model: give --class, e.g. --class 3 7")
            batch["label"] = paddle.to_tensor(np.repeat(np.asarray(a.classes, np.int64), n))
        elif key == "caption":
            if not a.prompt:
                raise InputError('this is a text-conditional model: give --prompt "a red circle left of a blue square"')
            batch["caption"] = [p for p in a.prompt for _ in range(n)]
        elif key == "boxes":
            if not a.boxes:
                raise InputError("this is a layout-conditional model: give --boxes FILE.json "
                                 '(e.g. [["red circle", 0.1, 0.1, 0.45, 0.45]])')
            b = parse_boxes(a.boxes, cond.n_classes)
            batch["boxes"] = paddle.to_tensor(np.repeat(b[None], n, axis=0))
    if model.concat == "inpaint":
        if not (a.image and a.mask):
            raise InputError("this is an inpainting model: give --image IMAGE and --mask MASK (white = fill in)")
        img = read_image(a.image, size, model.image_channels, "image")
        mask = (read_image(a.mask, size, 1, "mask") > 0).astype(np.float32)
        batch["image"] = paddle.to_tensor(np.repeat(img[None], n, 0))
        batch["mask"] = paddle.to_tensor(np.repeat(mask[None], n, 0))
    elif model.concat == "lowres":
        if not a.lowres:
            raise InputError("this is a super-resolution model: give --lowres IMAGE")
        lr = read_image(a.lowres, size // model.lowres_factor, model.image_channels, "low-resolution image")
        batch["lr"] = paddle.to_tensor(np.repeat(lr[None], n, 0))
    return batch, nrow


def write_samples(folder: str, samples, grid_images=None, nrow: int = 8, upscale: int = 1, pad: int = 1) -> list:
    """Samples (N, C, H, W) in [0, 1] -> ``folder/sample_NNN.png`` each and ``folder/grid.png``
    (of ``grid_images``, default the samples). Returns the paths written."""
    from ppengine.io import image_grid, save_png, to_uint8

    check_output(folder)
    os.makedirs(folder, exist_ok=True)
    paths = [save_png(os.path.join(folder, f"sample_{i:03d}.png"), im) for i, im in enumerate(to_uint8(samples))]
    sheet = image_grid(samples if grid_images is None else grid_images, nrow=nrow, upscale=upscale, pad=pad)
    return [save_png(os.path.join(folder, "grid.png"), sheet)] + paths


def check_output(folder: str):
    from ppengine.errors import InputError

    if folder.lower().endswith((".png", ".jpg", ".jpeg")) or os.path.isfile(folder):
        raise InputError(f"--output {folder!r}: --output is a folder (grid.png and sample_NNN.png go inside it)")


def load_model(a):
    """The model of ``--weights`` / ``-c`` -> (model, cfg)."""
    from ppengine import load_config, load_for_inference
    from ppengine.errors import InputError
    from ppengine.trainer import build_model

    cfg = load_config(a.config, a.override) if a.config else None
    if cfg is not None and (cfg.get("model") or {}).get("type") == "StableDiffusion" and not a.weights:
        if not (cfg["model"].get("folder") or cfg["model"].get("checkpoint") or cfg["model"].get("weights")):
            raise InputError(f"{a.config}: Stable Diffusion weights are not shipped: give the diffusers pipeline "
                             f"folder with -o model.folder=/path/to/stable-diffusion-2-1-base, or a single file with "
                             f"-o model.checkpoint=/path/to/v2-1_512-ema-pruned.safetensors")
        model = build_model(cfg)
        model.eval()
        return model, cfg
    weights = a.weights
    if weights is None:
        if cfg is None:
            raise InputError("give --weights RUN_FOLDER (a training run, e.g. output/ldm/class2img_digits) "
                             "or -c CONFIG (its train.output is used)")
        weights = (cfg.get("train") or {}).get("output", "output/ldm")
        if not os.path.exists(weights):
            raise InputError(f"{weights!r} not found: train first (python tools/train.py -c {a.config}) "
                             f"or pass --weights RUN_FOLDER")
    return load_for_inference(weights, a.override, config=a.config)


def run(a) -> list:
    """Sample the model of ``--weights`` / ``-c`` into the ``--output`` folder; returns the files."""
    import paddle
    import paddle.nn.functional as F

    from ppengine.errors import InputError

    check_output(a.output)
    model, cfg = load_model(a)
    if getattr(a, "backend", "paddle") != "paddle":
        return run_backend(model, cfg, a)
    if type(model).__name__ == "StableDiffusion":
        return run_stable_diffusion(model, a)
    if type(model).__name__ != "LatentDiffusion":
        raise InputError(f"{cfg.path}: model.type is {cfg['model'].get('type')!r}, not a LatentDiffusion model; "
                         f"give a diffusion run (e.g. output/ldm/class2img_digits)")
    size = model.sample_size
    batch, nrow = build_batch(model, a, size)
    t0 = time.time()
    x = _generate(model, batch, a)
    size = int(x.shape[-1])
    panels = None
    if "image" in batch and "mask" in batch:  # inpainting: masked input | result
        panels = [(batch["image"] * (1 - batch["mask"]) + 1) / 2, x]
    if "lr" in batch:
        panels = [(F.interpolate(batch["lr"], size=[size, size], mode="nearest") + 1) / 2, x]
    files = write_samples(a.output, x, paddle.concat(panels, 0) if panels else None, nrow=nrow,
                          upscale=max(1, 128 // size))
    print(f"wrote {files[0]} and {len(files) - 1} samples ({x.shape[0]} in {time.time() - t0:.1f} s)")
    return files


def _generate(model, batch, a):
    return model.generate(batch, n=a.num, guidance_scale=a.guidance, steps=a.steps, seed=a.seed,
                          sampler=a.sampler, paste=True, progress=True)


def _generate_sd(model, a):
    if not a.prompt:
        from ppengine.errors import InputError

        raise InputError('give --prompt "a photo of an astronaut riding a horse"')
    prompts = [p for p in a.prompt for _ in range(max(1, int(a.num)))]
    return model.generate(prompts, seed=a.seed, steps=a.steps, guidance_scale=a.guidance, sampler=a.sampler)


def run_backend(model, cfg, a) -> list:
    """Sample with the exported graphs on ``--backend``; with ``--compare`` also in dygraph, and print
    the largest pixel difference (0-255) between the two."""
    from ppengine.errors import InputError
    from ppengine.export.runtime import ExportedGraphs
    from ppengine.io import to_uint8

    from .backends import ensure_export, exported_networks

    kind = type(model).__name__
    if kind not in ("LatentDiffusion", "StableDiffusion"):
        raise InputError(f"{cfg.path}: --backend samples LatentDiffusion / StableDiffusion models, not {kind}")
    folder = ensure_export(model, cfg, a.export_dir)
    graphs = ExportedGraphs(folder, a.backend, threads=a.threads, onednn=a.onednn)
    if kind == "LatentDiffusion":
        batch, nrow = build_batch(model, a, model.sample_size)
        sample = (lambda: _generate(model, batch, a))
    else:
        nrow = max(1, int(a.num))
        sample = (lambda: _generate_sd(model, a))
    t0 = time.time()
    with exported_networks(model, graphs):
        x = sample()
    dt = time.time() - t0
    files = write_samples(a.output, x, nrow=nrow, upscale=max(1, 128 // int(x.shape[-1])))
    print(f"wrote {files[0]} and {len(files) - 1} samples ({x.shape[0]} in {dt:.1f} s on {a.backend}, {folder})")
    if a.compare:
        t0 = time.time()
        ref = sample()
        diff = int(np.abs(to_uint8(x).astype(np.int16) - to_uint8(ref).astype(np.int16)).max())
        print(f"max pixel difference vs dygraph: {diff}/255 (dygraph took {time.time() - t0:.1f} s)")
    return files


def run_stable_diffusion(model, a) -> list:
    """Text-to-image with Stable Diffusion 2.x weights given by path (``-o model.folder=...``)."""

    t0 = time.time()
    images = _generate_sd(model, a)
    files = write_samples(a.output, images, nrow=max(1, int(a.num)), pad=0)
    print(f"wrote {files[0]} and {len(files) - 1} images ({len(images)} in {time.time() - t0:.1f} s)")
    return files

def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    import ppldm  # noqa: F401  (registers models, datasets, conditioners)
    from ppengine.errors import PPError

    try:
        run(a)
    except PPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
