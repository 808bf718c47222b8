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
    from ppengine.io import atomic_write_text, image_grid, save_png

    from ..data import ShapesWorld

    ds = ShapesWorld("val", size=32, num_samples=16)
    items = [ds[i] for i in range(16)]
    imgs = np.stack([it["image"] for it in items])
    masked = np.stack([it["masked_image"] for it in items])
    sheet = image_grid(np.concatenate([imgs, masked]), nrow=8, upscale=4, value_range=(-1, 1))
    path = save_png(os.path.join(out, "shapes_world.png"), sheet)
    atomic_write_text(os.path.join(out, "shapes_world.json"), json.dumps(
        [{"caption": it["caption"], "boxes": it["boxes"][it["boxes"][:, 0] >= 0].round(3).tolist()} for it in items],
        indent=1))
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
    from ppengine import load_for_inference
    from ppengine.io import image_grid, save_png

    from ..metrics import digit_checker

    os.makedirs(output_dir, exist_ok=True)
    print(f"shapes world -> {_shapes_panel(output_dir)}")

    full = os.path.join(ROOT, "output", "ldm", "class2img_digits", "final.safetensors")
    config = None  # the run's own config.yml
    if os.path.isfile(full):
        weights = full
        if not os.path.isfile(os.path.join(os.path.dirname(full), "config.yml")):  # a run from before config.yml
            config = os.path.join(ROOT, "configs", "ldm", "class2img_digits.yml")
        print(f"using the trained model {full}")
    else:
        print("no trained class2img_digits model found: training a quick one "
              f"({quick_ae_iters} autoencoder + {quick_ldm_iters} diffusion steps)")
        quick = ["train.progress=true", "train.eval_interval=0", "train.save_interval=0", "train.log_interval=50"]
        ae = _train("ae_digits.yml", os.path.join(output_dir, "ae_digits"),
                    quick + [f"train.max_iters={quick_ae_iters}", "lr_scheduler.warmup_iters=10"])
        weights = _train("class2img_digits.yml", os.path.join(output_dir, "class2img_digits"),
                         quick + [f"model.autoencoder.weights={ae}", f"train.max_iters={quick_ldm_iters}",
                                  "lr_scheduler.warmup_iters=20", "train.ema_decay=null", "optimizer.lr=2.0e-3"])
    model, _ = load_for_inference(weights, config=config)
    labels = np.repeat(np.arange(10), 4)
    t0 = time.time()
    x = model.generate({"label": paddle.to_tensor(labels)}, guidance_scale=3.0, seed=0, progress=True)  # [0, 1]
    dt = time.time() - t0
    path = save_png(os.path.join(output_dir, "digits_by_class.png"), image_grid(x, nrow=8, upscale=4))
    acc = float((digit_checker(16).predict(x.numpy()) == labels).mean())
    print(f"40 digits (4 per class, guidance 3) in {dt:.1f} s -> {path}; independent classifier reads "
          f"{acc:.0%} of them as the class asked for")
    return f"{output_dir} (shapes_world.png/json, digits_by_class.png)"
