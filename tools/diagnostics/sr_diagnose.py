"""Diagnostics for a trained super-resolution LatentDiffusion (docs/ldm_tasks.md):

    python tools/diagnostics/sr_diagnose.py --weights output/ldm/sr_shapes [-n 32]

On ``n`` validation pairs it prints: the value ranges of ``image`` and ``lr``; the first stage's
own reconstruction PSNR on the HR images (the ceiling of any latent-space SR); bicubic PSNR; the
PSNR of the decoded one-step x0 prediction from the true latent noised to several t (does the
model use the condition?); the DDIM trajectory from pure noise (x0-prediction PSNR and the std
of x_t per step); and the final sample PSNR.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diag_common import load, parser  # noqa: E402


def _psnr(a, b):
    import numpy as np

    from ppldm.metrics.common import images_01

    a, b = images_01(a), images_01(b)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def main(argv=None) -> int:
    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from ppengine.errors import ConfigError
    from ppengine.trainer import build_dataset

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=32, help="validation pairs")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    a = p.parse_args(argv)
    paddle.seed(0)

    def sr_model(m, cfg):
        if getattr(m, "concat", None) != "lowres":
            raise ConfigError(f"{cfg.path}: sr_diagnose needs a super-resolution model (model.concat: lowres)")

    m, cfg = load(a, sr_model)
    ds = build_dataset(cfg, "val")
    if ds is None:
        raise ConfigError(f"{cfg.path}: sr_diagnose needs data.val (pairs of image and lr)")
    items = [ds[i] for i in range(min(a.n, len(ds)))]
    batch = {k: paddle.to_tensor(np.stack([it[k] for it in items])) for k in ("image", "lr")}
    x, lr = batch["image"], batch["lr"]
    size = int(x.shape[-1])
    print(f"image range [{float(x.min()):.3f}, {float(x.max()):.3f}], lr range [{float(lr.min()):.3f}, "
          f"{float(lr.max()):.3f}], lr {list(lr.shape)}, f={m.f}, lowres_factor={m.lowres_factor}, "
          f"residual={m.residual}, scale={float(m.scale.scale_factor):.4f}")
    up = F.interpolate(lr, size=[size, size], mode="bicubic", align_corners=False).clip(-1, 1)
    print(f"bicubic PSNR {_psnr(up, x):.2f} dB")
    z_raw = m.encode(x)
    print(f"first-stage reconstruction PSNR on HR {_psnr(m.ae.decode(z_raw).clip(-1, 1), x):.2f} dB")
    base = m.lowres_base(batch, size) if m.residual else None
    z0 = m.scale.scale(z_raw - base if base is not None else z_raw)
    h = int(z0.shape[-1])
    cat = m.concat_input(batch, h, h)
    d = m.diffusion
    ac = d.alphas_cumprod.numpy()
    rng = np.random.RandomState(1)
    for t in (20, 50, 100, 200, 400, 600, 999):
        tt = paddle.full([len(x)], t, dtype="int64")
        noise = paddle.to_tensor(rng.standard_normal(z0.shape).astype("float32"))
        xt = d.q_sample(z0, tt, noise)
        x0 = d.predict_x0(xt, tt, m.unet(xt, tt.astype("float32"), concat=cat))
        print(f"t={t:4d} abar={ac[t]:.4f}: one-step x0 prediction PSNR {_psnr(m.decode(x0, base), x):.2f} dB")
    s = d.scheduler("ddim")
    s.set_timesteps(a.steps)
    xt = paddle.to_tensor(rng.standard_normal(z0.shape).astype("float32"))
    for i, t in enumerate(s.timesteps):
        tt = paddle.full([len(x)], int(t), dtype="int64")
        out = m.unet(xt, tt.astype("float32"), concat=cat)
        if i % max(1, a.steps // 6) == 0 or i == a.steps - 1:
            x0 = d.predict_x0(xt, tt, out)
            print(f"DDIM t={int(t):4d}: x_t std {float(xt.std()):.3f}, x0-prediction PSNR "
                  f"{_psnr(m.decode(x0, base), x):.2f} dB, latent MSE {float(((x0 - z0) ** 2).mean()):.3f}")
        xt = s.step(out, t, xt, eta=0.0).prev_sample
    print(f"final sample PSNR {_psnr(m.decode(xt, base), x):.2f} dB (x_0 std {float(xt.std()):.3f}; data "
          f"latent std {float(z0.std()):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
