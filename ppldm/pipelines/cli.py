"""``python tools/infer.py ldm -c CONFIG [options]``: sample a trained latent-diffusion model to a PNG grid.

Examples::

    tools/infer.py ldm -c configs/ldm/class2img_digits.yml --class 0 1 2 3 -n 4
    tools/infer.py ldm -c configs/ldm/txt2img_shapes.yml --prompt "a red circle left of a blue square"
    tools/infer.py ldm -c configs/ldm/layout2img_shapes.yml --boxes boxes.json
    tools/infer.py ldm -c configs/ldm/inpaint_shapes.yml --image photo.png --mask mask.png
    tools/infer.py ldm -c configs/ldm/sr_shapes.yml --lowres small.png
    tools/infer.py ldm -c configs/ldm/uncond_digits.yml -n 16
    tools/infer.py ldm -c configs/ldm/sd21_base.yml -o model.folder=/path/to/sd-2-1-base --prompt "an astronaut"

The weights are ``--weights`` or, by default, ``<train.output>/final.safetensors`` of the config.
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
    p = argparse.ArgumentParser(prog="tools/infer.py ldm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="an LDM task config, e.g. configs/ldm/txt2img_shapes.yml")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--weights", default=None, help="LatentDiffusion safetensors (default: <train.output>/final.safetensors)")
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
    p.add_argument("--out", default=None, help="output PNG (default: <train.output>/infer_<time>.png)")
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

    from ..pipelines.images import read_image

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


def run(a) -> str:
    import paddle

    from ppengine import load_config
    from ppengine.checkpoint import load_weights
    from ppengine.errors import InputError
    from ppengine.trainer import build_model

    from .images import grid, save_png

    cfg = load_config(a.config, a.override)
    out_dir = (cfg.get("train") or {}).get("output", "output/ldm")
    if (cfg.get("model") or {}).get("type") == "StableDiffusion":
        return run_stable_diffusion(cfg, a, out_dir)
    weights = a.weights or (cfg.get("model") or {}).get("weights") or os.path.join(out_dir, "final.safetensors")
    if not os.path.isfile(weights):
        raise InputError(f"weights {weights!r} not found: train first (python tools/train.py -c {a.config}) "
                         f"or pass --weights PATH")
    cfg["model"] = {**cfg["model"], "weights": None}
    model = build_model(cfg)
    if type(model).__name__ != "LatentDiffusion":
        raise InputError(f"{a.config} does not describe a LatentDiffusion model (model.type is "
                         f"{cfg['model'].get('type')!r}); give a task config such as configs/ldm/txt2img_shapes.yml")
    load_weights(model, weights)
    model.eval()
    val = (cfg.get("data") or {}).get("val") or (cfg.get("data") or {}).get("train") or {}
    size = int(val.get("size", (val.get("base") or {}).get("size", 32)))
    batch, nrow = build_batch(model, a, size)
    t0 = time.time()
    x = model.generate(batch, n=a.num, size=size, guidance_scale=a.guidance, steps=a.steps, seed=a.seed,
                       sampler=a.sampler, paste=True, progress=True)
    panels = [x]
    if "image" in batch and "mask" in batch:  # inpainting: input | masked | result
        panels = [batch["image"] * (1 - batch["mask"]), x]
    if "lr" in batch:
        import paddle.nn.functional as F

        panels = [F.interpolate(batch["lr"], size=[size, size], mode="nearest"), x]
    img = grid(paddle.concat(panels, 0) if len(panels) > 1 else x, nrow=nrow, upscale=max(1, 128 // size))
    out = a.out or os.path.join(out_dir, f"infer_{time.strftime('%Y%m%d_%H%M%S')}.png")
    save_png(out, img)
    print(f"wrote {out} ({x.shape[0]} samples in {time.time() - t0:.1f} s)")
    return out


def run_stable_diffusion(cfg, a, out_dir: str) -> str:
    """Text-to-image with Stable Diffusion 2.x weights given by path (``-o model.folder=...``)."""
    from ppengine.errors import InputError
    from ppengine.trainer import build_model

    from .images import save_png

    if not (cfg["model"].get("folder") or cfg["model"].get("weights")):
        raise InputError(f"{a.config}: Stable Diffusion weights are not shipped: give the diffusers pipeline "
                         f"folder with -o model.folder=/path/to/stable-diffusion-2-1-base")
    if not a.prompt:
        raise InputError('give --prompt "a photo of an astronaut riding a horse"')
    infer = dict(cfg.get("infer") or {})
    for key, val in (("steps", a.steps), ("guidance_scale", a.guidance), ("sampler", a.sampler)):
        if val is not None:
            infer[key] = val
    model = build_model(cfg)
    model.eval()
    prompts = [p for p in a.prompt for _ in range(max(1, int(a.num)))]
    t0 = time.time()
    images = model.generate(prompts, seed=a.seed, **infer)  # (B, H, W, 3) uint8
    n = len(images)
    cols = max(1, int(a.num))
    rows = (n + cols - 1) // cols
    h, w = images.shape[1:3]
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        sheet[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    out = a.out or os.path.join(out_dir, f"sd_{time.strftime('%Y%m%d_%H%M%S')}.png")
    save_png(out, sheet)
    print(f"wrote {out} ({n} images in {time.time() - t0:.1f} s)")
    return out


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
