"""``make demo`` for ppldm: the generated data worlds and class-conditional latent diffusion on digits.

1. Writes a grid of shapes-world scenes with their captions, boxes and inpainting masks.
2. Class-to-image on sklearn digits: uses ``output/ldm/class2img_digits/final.safetensors``
   when a full training run (``configs/ldm/class2img_digits.yml``) has produced it; otherwise
   trains a *quick* first stage and LDM (a few hundred steps, a couple of minutes on a CPU;
   blurry samples, it only shows the pipeline end to end).
3. Samples four of each digit with classifier-free guidance to a PNG grid and reads them back
   with the independent digit classifier.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _shapes_panel(out: str) -> str:
    from ..data import ShapesWorld
    from .images import grid, save_png

    ds = ShapesWorld("val", size=32, num_samples=16)
    items = [ds[i] for i in range(16)]
    imgs = np.stack([it["image"] for it in items])
    masked = np.stack([it["masked_image"] for it in items])
    path = save_png(os.path.join(out, "shapes_world.png"), grid(np.concatenate([imgs, masked]), nrow=8, upscale=4))
    tmp = os.path.join(out, "shapes_world.json.tmp")
    with open(tmp, "w") as f:
        json.dump([{"caption": it["caption"], "boxes": it["boxes"][it["boxes"][:, 0] >= 0].round(3).tolist()}
                   for it in items], f, indent=1)
    os.replace(tmp, os.path.join(out, "shapes_world.json"))
    return path


def _train(config: str, out: str, overrides):
    from ppengine import Trainer, load_config

    cfg = load_config(os.path.join(ROOT, "configs", "ldm", config), list(overrides) + [f"train.output={out}"])
    Trainer(cfg).train()
    return os.path.join(out, "final.safetensors")


def demo(output_dir: str = "output/demo/ldm", quick_ae_iters: int = 150, quick_ldm_iters: int = 300) -> str:
    """Run the ppldm demo; returns a one-line summary of what was written."""
    import paddle

    import ppldm  # noqa: F401
    from ppengine import load_config
    from ppengine.checkpoint import load_weights
    from ppengine.trainer import build_model

    from ..metrics import digit_checker
    from .images import grid, save_png

    os.makedirs(output_dir, exist_ok=True)
    print(f"shapes world -> {_shapes_panel(output_dir)}")

    full = os.path.join(ROOT, "output", "ldm", "class2img_digits", "final.safetensors")
    cfg_path = os.path.join(ROOT, "configs", "ldm", "class2img_digits.yml")
    if os.path.isfile(full):
        weights, overrides = full, []
        print(f"using the trained model {full}")
    else:
        print("no trained class2img_digits model found: training a quick one "
              f"({quick_ae_iters} autoencoder + {quick_ldm_iters} diffusion steps)")
        quick = ["train.progress=true", "train.eval_interval=0", "train.save_interval=0", "train.log_interval=50"]
        ae = _train("ae_digits.yml", os.path.join(output_dir, "ae_digits"),
                    quick + [f"train.max_iters={quick_ae_iters}", "lr_scheduler.warmup_iters=10"])
        overrides = [f"model.autoencoder.weights={ae}"]
        weights = _train("class2img_digits.yml", os.path.join(output_dir, "class2img_digits"),
                         quick + overrides + [f"train.max_iters={quick_ldm_iters}", "lr_scheduler.warmup_iters=20",
                                              "train.ema_decay=null", "optimizer.lr=2.0e-3"])
    cfg = load_config(cfg_path, overrides)
    cfg["model"] = {**cfg["model"], "weights": None}
    model = build_model(cfg)
    load_weights(model, weights)
    model.eval()
    labels = np.repeat(np.arange(10), 4)
    t0 = time.time()
    x = model.generate({"label": paddle.to_tensor(labels)}, size=16, guidance_scale=3.0, seed=0, progress=True)
    dt = time.time() - t0
    path = save_png(os.path.join(output_dir, "digits_by_class.png"), grid(x, nrow=8, upscale=4))
    acc = float((digit_checker(16).predict((x.numpy() + 1) / 2) == labels).mean())
    print(f"40 digits (4 per class, guidance 3) in {dt:.1f} s -> {path}; independent classifier reads "
          f"{acc:.0%} of them as the class asked for")
    return f"{output_dir} (shapes_world.png/json, digits_by_class.png)"
