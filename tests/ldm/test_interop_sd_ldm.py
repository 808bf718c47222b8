"""StableDiffusion (ppldm UNet + VAE + CLIP text encoder from a pipeline folder) against
ppdiffusers' StableDiffusionPipeline, and the SD 2.1 configs."""
import os

import numpy as np
import paddle
import pytest
from random_weights import randomize, write_byte_level_tokenizer

from ppengine.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from paddlenlp.transformers import CLIPTokenizer
    from ppdiffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel

    from ppldm.diffusion import make_scheduler

    root = tmp_path_factory.mktemp("sd")
    n = write_byte_level_tokenizer(str(root / "tok_src"))
    tokenizer = CLIPTokenizer(str(root / "tok_src" / "vocab.json"), str(root / "tok_src" / "merges.txt"))
    paddle.seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu"))
    text = randomize(text, 3)
    unet = randomize(UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(1, 2), cross_attention_dim=32, use_linear_projection=True), 1)
    vae = randomize(AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
                                  layers_per_block=1, latent_channels=4), 2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler("ddim", prediction_type="v", steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(root / "pipe"))
    return root / "pipe", pipe


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
