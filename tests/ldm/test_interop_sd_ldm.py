"""StableDiffusion (ppldm UNet + VAE + CLIP text encoder from a pipeline folder) against
ppdiffusers' StableDiffusionPipeline, and the SD 2.1 configs."""
import os

import numpy as np
import paddle
import pytest
from random_weights import make_sd_pipeline

from ppengine.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from pathlib import Path

    folder, pipe = make_sd_pipeline(str(tmp_path_factory.mktemp("sd")))
    return Path(folder), pipe


def test_prompt_to_image_matches_pipeline(sd_folder):
    from ppldm.interop import StableDiffusion

    folder, pipe = sd_folder
    noise = paddle.to_tensor(np.random.RandomState(0).standard_normal((1, 4, 16, 16)).astype("float32"))
    expected = pipe(prompt="a red square", negative_prompt="", latents=noise, num_inference_steps=3,
                    guidance_scale=7.5, height=32, width=32, output_type="np").images
    sd = StableDiffusion(folder=str(folder), diffusion={"prediction_type": "v"})
    ctx = sd.encode_prompt("a red square")
    assert ctx.shape == [1, 77, 32]
    img = sd.generate("a red square", latents=noise, steps=3, guidance_scale=7.5, height=32, width=32,
                      sampler="ddim", progress=False).numpy().transpose(0, 2, 3, 1)  # (B, 3, H, W) in [0, 1]
    assert img.std() > 0.01
    np.testing.assert_allclose(img, expected, atol=1e-4)
    # the same pipeline written in diffusers' PyTorch layout (text encoder included)
    pipe.save_pretrained(str(folder) + "_pt", to_diffusers=True)
    sd_pt = StableDiffusion(folder=str(folder) + "_pt", diffusion={"prediction_type": "v"})
    np.testing.assert_allclose(sd_pt.generate("a red square", latents=noise, steps=3, guidance_scale=7.5, height=32,
                                              width=32, progress=False).numpy().transpose(0, 2, 3, 1), expected,
                               atol=1e-4)
    # fine-tuning step: the diffusion loss through the loaded UNet, VAE and text encoder frozen
    out = sd({"image": paddle.uniform([2, 3, 32, 32], min=-1, max=1), "caption": ["a", "b"]})
    out["loss"].backward()
    assert sd.unet.conv_in.weight.grad is not None and sd.vae.encoder.conv_in.weight.grad is None


def test_sd21_configs_build_at_reduced_width():
    import ppldm  # noqa: F401  (registers StableDiffusion)
    from ppengine.config import load_config
    from ppengine.registry import MODELS

    small = ["model.unet.block_channels=[32,64,64,64]", "model.unet.head_channels=16", "model.unet.context_dim=24",
             "model.vae.block_channels=[32,32,32,32]", "model.vae.layers_per_block=1"]
    for name, pred in (("sd21.yml", "v"), ("sd21_base.yml", "eps")):
        cfg = load_config(os.path.join(ROOT, "configs", "ldm", name), small)
        sd = MODELS.build(cfg["model"], "model", cfg)
        assert sd.diffusion.prediction_type == pred and sd.vae.downsample_factor == 8
        assert [a.transformer_blocks[0].attn1.heads for a in sd.unet.down_blocks[0].attentions] == [2, 2]
        ctx = paddle.randn([1, 5, 24])
        assert sd.sampler_cfg["type"] == "dpm_solver++" and sd.sample_size == (768 if pred == "v" else 512)
        img = sd.generate(context=ctx, uncond_context=paddle.zeros_like(ctx), seed=0, progress=False,
                          height=64, width=64, steps=2)  # the other sampler settings: model.sampler
        assert img.shape == [1, 3, 64, 64] and img.dtype == paddle.float32
        with pytest.raises(InputError, match="text encoder"):
            sd.generate("a prompt", height=64, width=64, steps=1, progress=False)
    full = load_config(os.path.join(ROOT, "configs", "ldm", "sd21.yml"))["model"]
    assert full["unet"]["block_channels"] == [320, 640, 1280, 1280] and full["unet"]["context_dim"] == 1024
    with pytest.raises(InputError, match="does not exist"):
        MODELS.build(dict(full, folder="/nonexistent/sd"))


def test_infer_cli_runs_stable_diffusion_from_a_folder(sd_folder, tmp_path, capsys):
    """tools/infer.py ldm with an SD config and -o model.folder=...: a PNG sheet of the prompts."""
    from ppldm.pipelines.cli import main

    folder, _ = sd_folder
    out = tmp_path / "sd"
    cfg = os.path.join(ROOT, "configs", "ldm", "sd21.yml")
    rc = main(["-c", cfg, "-o", f"model.folder={folder}", "-o", "model.sample_size=32",
               "--prompt", "a red square", "a blue circle", "-n", "2", "--steps", "2", "--output", str(out)])
    assert rc == 0
    import imageio.v2 as imageio
    sheet = imageio.imread(str(out / "grid.png"))
    assert sheet.shape == (64, 64, 3) and sheet.std() > 1
    assert sorted(os.listdir(out)) == ["grid.png"] + [f"sample_{i:03d}.png" for i in range(4)]
    # no folder: a clear error, not a random-weight model
    rc = main(["-c", cfg, "--prompt", "x", "--output", str(tmp_path / "none")])
    assert rc == 2 and "model.folder" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
