"""Super-resolution wiring: the low-res condition matches the target's range and the latent's
size, the checker compares samples with the HR image, and the pixel-space residual model
(identity first stage, ``residual: true``) trains on and decodes from HR - bicubic(LR)."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import ppldm  # noqa: F401
from ppengine.errors import ConfigError
from ppldm.data.pairs import SuperResPairs
from ppldm.metrics.restoration import SuperResQuality
from ppldm.models.ldm import LatentDiffusion

TINY_UNET = {"block_channels": [16, 32], "layers_per_block": 1, "attention_resolutions": [], "head_channels": 16,
             "norm_groups": 8}


def _pairs(n=4):
    ds = SuperResPairs({"type": "ShapesWorld", "split": "val", "size": 32, "num_samples": n}, factor=4)
    items = [ds[i] for i in range(n)]
    return {k: paddle.to_tensor(np.stack([it[k] for it in items])) for k in ("image", "lr")}


def _pixel_model(prediction_type="v"):
    paddle.seed(0)
    return LatentDiffusion(autoencoder={"type": "identity", "in_channels": 3}, unet=TINY_UNET, concat="lowres",
                           lowres_factor=4, residual=True, scale_factor=1.0,
                           diffusion={"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0015,
                                      "beta_end": 0.0195, "prediction_type": prediction_type})


def test_lowres_condition_range_and_size_match_the_target():
    b = _pairs()
    x, lr = b["image"].numpy(), b["lr"].numpy()
    assert lr.shape == (4, 3, 8, 8)
    # same [-1, 1] range and the area average of the target (not [0, 1], not another image)
    np.testing.assert_allclose(lr, x.reshape(4, 3, 8, 4, 8, 4).mean(axis=(3, 5)), atol=1e-6)
    # the f = 4 latent model concatenates the LR at the latent's 8x8, unchanged
    m = LatentDiffusion(autoencoder={"type": "kl", "in_channels": 3, "out_channels": 3, "block_channels": [8, 8, 8],
                                     "layers_per_block": 1, "latent_channels": 4, "norm_groups": 4,
                                     "mid_attention": False}, unet=TINY_UNET, concat="lowres")
    assert m.f == 4 and m.lowres_factor == 4
    np.testing.assert_array_equal(m.concat_input(b, 8, 8).numpy(), lr)


def test_checker_compares_samples_with_the_hr_image():
    b = _pairs()
    met = SuperResQuality()
    met.update(b, {"samples": b["image"]})
    r = met.compute()
    assert r["psnr"] == 100.0 and r["ssim"] > 0.999 and 15 < r["bicubic_psnr"] < 40
    met.reset()
    met.update(b, {"samples": -b["image"]})
    assert met.compute()["psnr"] < 15


def test_pixel_residual_trains_on_hr_minus_bicubic():
    b = _pairs()
    m = _pixel_model()
    assert m.f == 1 and m.unet.concat_channels == 3
    res = m(b)
    a = paddle.gather(m.diffusion.alphas_cumprod, res["t"]).reshape([-1, 1, 1, 1])
    x0 = (res["x_t"] - (1 - a).sqrt() * res["noise"]) / a.sqrt()
    up = F.interpolate(b["lr"], size=[32, 32], mode="bicubic", align_corners=False).clip(-1, 1)
    np.testing.assert_allclose(x0.numpy(), (b["image"] - up).numpy(), atol=1e-4)


def test_pixel_residual_generate_adds_the_sample_to_bicubic():
    b = {"lr": _pairs()["lr"]}
    m = _pixel_model("x0")
    m.unet.forward = lambda x, t, **kw: paddle.zeros_like(x)  # predicts a zero residual
    x = m.generate(b, steps=3, sampler="ddpm")  # DDPM ends exactly at the predicted x0
    assert x.shape == [4, 3, 32, 32]  # size from lr * lowres_factor
    up = F.interpolate(b["lr"], size=[32, 32], mode="bicubic", align_corners=False).clip(-1, 1)
    np.testing.assert_allclose(x.numpy(), (up.numpy() + 1) / 2, atol=1e-5)  # generate(): [0, 1]


def test_residual_needs_lowres():
    with pytest.raises(ConfigError):
        LatentDiffusion(autoencoder={"type": "identity"}, unet=TINY_UNET, residual=True)


def test_sr_diagnose_runs(tmp_path, capsys):
    import os

    from diagnostics_loader import load_tool

    from ppengine import load_config
    from ppengine.checkpoint import save_weights
    from ppengine.trainer import build_model

    main = load_tool("sr_diagnose").main

    cfg_path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "ldm", "sr_shapes_pixel.yml")
    opts = ["data.val.base.num_samples=2"]
    save_weights(str(tmp_path / "w.safetensors"), build_model(load_config(cfg_path, opts)))
    assert main(["-c", cfg_path, "--weights", str(tmp_path / "w.safetensors"), "-n", "2", "--steps", "2"]
                + [x for o in opts for x in ("-o", o)]) == 0
    out = capsys.readouterr().out
    assert "bicubic PSNR" in out and "first-stage reconstruction PSNR" in out and "final sample PSNR" in out
