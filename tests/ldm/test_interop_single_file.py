"""Stable Diffusion single files (original CompVis / Stability key names): a diffusers-layout
pipeline made by ppdiffusers with random weights is written in the original names with
save_single_file, read back (as .safetensors, as a torch.save .ckpt, with the original YAML or
from the shapes) and its UNet / VAE / text outputs compared with ppdiffusers' own modules."""
import os
import re

import numpy as np
import paddle
import pytest
from random_weights import randomize, write_byte_level_tokenizer

from ppengine.errors import CheckpointError, InputError
from ppengine.safe_load import UnsafePickleError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




def make_pipeline(root, version):
    """SD 2.x (linear projections, 64-channel heads, OpenCLIP-style GELU text encoder) or 1.x
    (1x1-conv projections, 8 heads, CLIP quick-GELU) in the original structure at small width."""
    from paddlenlp.transformers import CLIPTokenizer
    from ppdiffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel

    from ppldm.diffusion import make_scheduler

    n = write_byte_level_tokenizer(str(root / "tok_src"))
    tokenizer = CLIPTokenizer(str(root / "tok_src" / "vocab.json"), str(root / "tok_src" / "merges.txt"))
    v2 = version == "v2"
    text = randomize(CLIPTextModel(CLIPTextConfig(
        vocab_size=n, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="gelu" if v2 else "quick_gelu")), 3)
    unet = randomize(UNet2DConditionModel(
        sample_size=8, block_out_channels=(64, 128), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(1, 2) if v2 else 8, cross_attention_dim=128, use_linear_projection=v2), 1)
    vae = randomize(AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
                                  layers_per_block=2, latent_channels=4), 2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler("ddim", prediction_type="v" if v2 else "eps",
                                                            steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(root / "pipe"))
    return root / "pipe", pipe


@pytest.fixture(scope="module", params=["v2", "v1"])
def converted(request, tmp_path_factory):
    from ppldm.interop import StableDiffusion, save_single_file

    root = tmp_path_factory.mktemp(f"sd_{request.param}")
    folder, pipe = make_pipeline(root, request.param)
    sd = StableDiffusion(folder=str(folder))
    path = save_single_file(sd, str(root / "model.safetensors"))
    return request.param, folder, pipe, path


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def check_parity(parts, pipe):
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.standard_normal((2, 4, 8, 8)).astype("float32"))
    t = paddle.to_tensor([10, 700])
    c = paddle.to_tensor(rng.standard_normal((2, 7, 128)).astype("float32"))
    errs = {"unet": rel_err(parts.unet(x, t, c).numpy(), pipe.unet(x, t, encoder_hidden_states=c).sample.numpy())}
    img = paddle.to_tensor(rng.uniform(-1, 1, (1, 3, 16, 16)).astype("float32"))
    errs["vae_mean"] = rel_err(parts.vae.encode(img).mean.numpy(), pipe.vae.encode(img).latent_dist.mean.numpy())
    z = paddle.to_tensor(rng.standard_normal((1, 4, 4, 4)).astype("float32"))
    errs["vae_decode"] = rel_err(parts.vae.decode(z).numpy(), pipe.vae.decode(z).sample.numpy())
    ids = paddle.to_tensor(rng.randint(0, 500, (2, 77)))
    errs["text"] = rel_err(parts.text_encoder(ids)[0].numpy(), pipe.text_encoder(ids)[0].numpy())
    assert max(errs.values()) <= 1e-4, errs
    print("relative errors:", {k: f"{v:.1e}" for k, v in errs.items()})
    return errs


def test_written_names_are_the_original_ones(converted):
    from safetensors import safe_open

    version, _, _, path = converted
    with safe_open(path, framework="np") as f:
        shapes = {k: f.get_tensor(k).shape for k in f.keys()}
        assert (f.metadata() or {}).get("format") == "pt"
    u = "model.diffusion_model."
    assert {k.split(".")[0] for k in shapes} == {"model", "first_stage_model", "cond_stage_model"}
    # UNet: input_blocks (resnet .0, attention .1, downsample .0.op), middle_block, output_blocks
    # whose level without attention holds its upsampler at .1 and the others at .2
    assert shapes[u + "input_blocks.0.0.weight"] == (64, 4, 3, 3)
    assert shapes[u + "time_embed.0.weight"] == (256, 64) and shapes[u + "out.2.weight"] == (4, 64, 3, 3)
    assert shapes[u + "input_blocks.1.1.proj_in.weight"] == ((64, 64) if version == "v2" else (64, 64, 1, 1))
    assert u + "input_blocks.3.0.op.weight" in shapes and u + "input_blocks.4.1.norm.weight" not in shapes
    assert shapes[u + "input_blocks.4.0.skip_connection.weight"] == (128, 64, 1, 1)
    assert shapes[u + "input_blocks.4.0.emb_layers.1.weight"] == (128, 256)
    assert shapes[u + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (128, 128)
    assert u + "middle_block.2.out_layers.3.weight" in shapes
    assert u + "output_blocks.2.1.conv.weight" in shapes and u + "output_blocks.2.2.conv.weight" not in shapes
    assert u + "output_blocks.3.1.proj_out.weight" in shapes and u + "output_blocks.5.2.conv.weight" not in shapes
    # VAE: encoder.down.{i}.block.{j}, decoder.up.{i} numbered from the lowest resolution, 1x1-conv attention
    v = "first_stage_model."
    assert v + "encoder.down.0.downsample.conv.weight" in shapes and v + "encoder.down.1.downsample.conv.weight" not in shapes
    assert v + "decoder.up.1.upsample.conv.weight" in shapes and v + "decoder.up.0.upsample.conv.weight" not in shapes
    assert shapes[v + "decoder.up.0.block.2.conv1.weight"] == (32, 32, 3, 3)  # decoder: 3 resnets per level
    assert shapes[v + "decoder.up.0.block.0.nin_shortcut.weight"] == (32, 64, 1, 1)
    assert shapes[v + "encoder.mid.attn_1.q.weight"] == (64, 64, 1, 1) and v + "encoder.norm_out.weight" in shapes
    assert v + "decoder.mid.block_2.conv2.weight" in shapes and shapes[v + "quant_conv.weight"] == (8, 8, 1, 1)
    if version == "v2":  # OpenCLIP text tower, a fused in_proj, and one extra zero block
        c = "cond_stage_model.model."
        assert shapes[c + "transformer.resblocks.0.attn.in_proj_weight"] == (384, 128)
        assert shapes[c + "positional_embedding"] == (77, 128) and c + "ln_final.weight" in shapes
        assert shapes[c + "transformer.resblocks.0.mlp.c_fc.weight"] == (256, 128)
        assert c + "transformer.resblocks.2.ln_1.weight" in shapes and c + "transformer.resblocks.3.ln_1.weight" not in shapes
    else:
        c = "cond_stage_model.transformer.text_model."
        assert shapes[c + "encoder.layers.1.self_attn.q_proj.weight"] == (128, 128)
        assert shapes[c + "embeddings.position_ids"] == (1, 77)


def test_sd21_structure_at_full_depth():
    """SD 2.1's UNet structure (4 levels, 2 resnets, attention on levels 0-2) and VAE (4 levels)
    at reduced width: the block indices of the original files."""
    from ppldm.interop.single_file import single_file_arrays
    from ppldm.models import AutoencoderKL, UNet

    class M:
        unet = UNet(block_channels=[32, 64, 96, 96], layers_per_block=2, attention_resolutions=[1, 2, 4],
                    head_channels=16, context_dim=32, use_linear_projection=True)
        vae = AutoencoderKL(block_channels=[32, 32, 64, 64], layers_per_block=2)
        text_encoder = None

    keys = single_file_arrays(M())
    blocks = {m.group(1) for k in keys for m in [re.match(r"model\.diffusion_model\.((?:input|output)_blocks\.\d+\.\d+)", k)] if m}
    expect_in = {"0.0", "1.0", "1.1", "2.0", "2.1", "3.0", "4.0", "4.1", "5.0", "5.1", "6.0", "7.0", "7.1", "8.0",
                 "8.1", "9.0", "10.0", "11.0"}
    expect_out = {f"{i}.0" for i in range(12)} | {f"{i}.1" for i in range(3, 12)} | {"2.1", "5.2", "8.2"}
    assert blocks == {"input_blocks." + b for b in expect_in} | {"output_blocks." + b for b in expect_out}
    assert "model.diffusion_model.input_blocks.9.0.op.weight" in keys
    assert "model.diffusion_model.input_blocks.7.0.skip_connection.weight" in keys
    assert "model.diffusion_model.input_blocks.10.0.skip_connection.weight" not in keys
    assert "model.diffusion_model.output_blocks.8.2.conv.weight" in keys
    vae = {k for k in keys if k.startswith("first_stage_model.")}
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in vae
    assert "first_stage_model.encoder.down.2.downsample.conv.weight" in vae
    assert not any(k.startswith(("first_stage_model.encoder.down.3.downsample", "first_stage_model.decoder.up.0.upsample"))
                   for k in vae)


def test_safetensors_from_shapes_matches_ppdiffusers(converted, tmp_path):
    """A file as other tools write it (no ppldm metadata, no YAML): the networks come from the shapes."""
    from safetensors.numpy import load_file, save_file

    from ppldm.interop import load_single_file

    version, _, pipe, path = converted
    bare = str(tmp_path / "bare.safetensors")
    save_file(load_file(path), bare)
    parts = load_single_file(bare)
    assert parts.settings["text"]["format"] == ("openclip" if version == "v2" else "clip")
    assert parts.settings["text"]["layers"] == 2  # OpenCLIP: the zero block is the dropped last one
    assert parts.unet.config["use_linear_projection"] == (version == "v2")
    check_parity(parts, pipe)
    check_parity(load_single_file(path), pipe)  # our own file: its metadata gives the same settings


def test_ckpt_with_original_yaml_matches_ppdiffusers(converted, tmp_path):
    """The same weights as a Lightning-style .ckpt written by torch.save, read with the original
    inference YAML (v2-inference-v.yaml / v1-inference.yaml layout at this width)."""
    import torch
    from safetensors.numpy import load_file

    from ppldm.interop import load_single_file

    version, _, pipe, path = converted
    sd = {k: torch.from_numpy(v.copy()) for k, v in load_file(path).items()}
    sd["model_ema.decay"] = torch.tensor(0.9999)  # EMA bookkeeping and schedule buffers are not networks
    sd["alphas_cumprod"] = torch.linspace(1, 0.01, 1000)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 110000, "epoch": 3}, ckpt)
    yml = tmp_path / "inference.yaml"
    unet_heads = "num_head_channels: 64\n        use_linear_in_transformer: True" if version == "v2" else "num_heads: 8"
    cond = ("ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n      params:\n        freeze: True\n"
            "        layer: \"penultimate\"" if version == "v2" else "ldm.modules.encoders.modules.FrozenCLIPEmbedder")
    yml.write_text(f"""model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    {'parameterization: "v"' if version == 'v2' else ''}
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    scale_factor: 0.18215
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        in_channels: 4
        out_channels: 4
        model_channels: 64
        attention_resolutions: [ 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2 ]
        {unet_heads}
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: 128
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [ 1, 2 ]
          num_res_blocks: 2
          attn_resolutions: []
    cond_stage_config:
      target: {cond}
""")
    parts = load_single_file(str(ckpt), original_config=str(yml))
    assert parts.settings["prediction_type"] == ("v" if version == "v2" else "eps")
    assert {"model_ema.decay", "alphas_cumprod"} <= set(parts.ignored)  # not networks: left aside, no error
    assert not any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in parts.ignored)
    check_parity(parts, pipe)
    # a YAML that does not describe these weights: a CheckpointError naming missing keys
    yml.write_text(yml.read_text().replace("num_res_blocks: 2\n        channel_mult", "num_res_blocks: 1\n        channel_mult"))
    with pytest.raises(CheckpointError, match="missing key"):
        load_single_file(str(ckpt), original_config=str(yml))


@pytest.mark.parametrize("converted", ["v2"], indirect=True)  # v1 parity is covered module by module
def test_stable_diffusion_from_single_file_generates_like_the_pipeline(converted):
    """StableDiffusion(checkpoint=..., tokenizer=...) through the sd21 config: prompt -> image as
    ppdiffusers' StableDiffusionPipeline on the diffusers folder."""
    import ppldm  # noqa: F401
    from ppengine.config import load_config
    from ppengine.trainer import build_model

    _, folder, pipe, path = converted
    noise = paddle.to_tensor(np.random.RandomState(0).standard_normal((1, 4, 4, 4)).astype("float32"))
    expected = pipe(prompt="a red square", negative_prompt="", latents=noise, num_inference_steps=3,
                    guidance_scale=7.5, height=16, width=16, output_type="np").images
    cfg = load_config(os.path.join(ROOT, "configs", "ldm", "sd21.yml"),
                      [f"model.checkpoint={path}", f"model.tokenizer={folder / 'tokenizer'}"])
    sd = build_model(cfg)
    img = sd.generate("a red square", latents=noise, steps=3, guidance_scale=7.5, height=16, width=16,
                      sampler="ddim", progress=False)  # float (B, 3, H, W) in [0, 1]
    img = img.numpy().transpose(0, 2, 3, 1)
    assert img.std() > 0.01
    np.testing.assert_allclose(img, expected, atol=1e-4)
    # without a tokenizer: a clear error for prompts, embeddings still work
    bare = build_model(load_config(os.path.join(ROOT, "configs", "ldm", "sd21.yml"), [f"model.checkpoint={path}"]))
    with pytest.raises(InputError, match="tokenizer"):
        bare.encode_prompt("a red square")


def test_malicious_ckpt_is_refused(tmp_path):
    import torch

    from ppldm.interop import StableDiffusion

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
                "callbacks": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafePickleError, match="evil.ckpt: refused to load.*system"):
        StableDiffusion(checkpoint=str(tmp_path / "evil.ckpt"))
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="unknown checkpoint type"):
        StableDiffusion(checkpoint=str(tmp_path / "x.onnx"))
    with pytest.raises(InputError, match="not found"):
        StableDiffusion(checkpoint=str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("converted", ["v2"], indirect=True)
def test_pipeline_folder_of_bin_files_is_read(converted, tmp_path):
    """A diffusers pipeline saved without safetensors (unet/ vae/ diffusion_pytorch_model.bin,
    text_encoder/pytorch_model.bin: torch.save files) loads through the allow-list."""
    import shutil

    import torch
    from safetensors.numpy import load_file

    from ppldm.interop import StableDiffusion

    _, folder, pipe, _ = converted
    pipe.save_pretrained(str(tmp_path / "pt"), to_diffusers=True)
    for sub, st, binname in (("unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                             ("vae", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                             ("text_encoder", "model.safetensors", "pytorch_model.bin")):
        d = tmp_path / "pt" / sub
        sd = load_file(str(d / st))
        torch.save({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, d / binname)
        os.remove(d / st)
    shutil.rmtree(tmp_path / "pt" / "scheduler", ignore_errors=True)
    sd = StableDiffusion(folder=str(tmp_path / "pt"))
    rng = np.random.RandomState(1)
    ids = paddle.to_tensor(rng.randint(0, 500, (1, 77)))
    assert rel_err(sd.text_encoder(ids)[0].numpy(), pipe.text_encoder(ids)[0].numpy()) <= 1e-4
    x, c = (paddle.to_tensor(rng.standard_normal(s).astype("float32")) for s in ((1, 4, 8, 8), (1, 7, 128)))
    t = paddle.to_tensor([500])
    assert rel_err(sd.unet(x, t, c).numpy(), pipe.unet(x, t, encoder_hidden_states=c).sample.numpy()) <= 1e-4


def test_diffusers_bin_folder_is_read(tmp_path):
    """A diffusers folder holding only diffusion_pytorch_model.bin (torch.save) loads, safely."""
    import torch
    from ppdiffusers import AutoencoderKL

    from ppldm.interop import load_autoencoder

    ref = randomize(AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
                                  layers_per_block=1, latent_channels=4), 4)
    ref.save_pretrained(str(tmp_path / "st"), to_diffusers=True)
    from safetensors.numpy import load_file

    sd = load_file(str(tmp_path / "st" / "diffusion_pytorch_model.safetensors"))
    os.makedirs(tmp_path / "bin")
    os.replace(tmp_path / "st" / "config.json", tmp_path / "bin" / "config.json")
    torch.save({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, tmp_path / "bin" / "diffusion_pytorch_model.bin")
    vae = load_autoencoder(str(tmp_path / "bin"))
    z = paddle.to_tensor(np.random.RandomState(0).standard_normal((1, 4, 4, 4)).astype("float32"))
    assert rel_err(vae.decode(z).numpy(), ref.decode(z).sample.numpy()) <= 1e-4


def test_written_yaml_reads_back(converted):
    """save_single_file writes <name>.yaml in Stability's layout: read back with it, same numbers."""
    import yaml

    from ppldm.interop import load_single_file

    version, _, pipe, path = converted
    yml = path[: -len(".safetensors")] + ".yaml"
    cfg = yaml.safe_load(open(yml))
    p = cfg["model"]["params"]
    assert cfg["model"]["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"
    assert p["unet_config"]["params"]["channel_mult"] == [1, 2] and p["unet_config"]["params"]["context_dim"] == 128
    assert p["first_stage_config"]["params"]["ddconfig"]["ch_mult"] == [1, 2]
    assert p.get("parameterization") is None  # StableDiffusion(folder=...) here uses eps
    assert ("FrozenOpenCLIPEmbedder" if version == "v2" else "FrozenCLIPEmbedder") in p["cond_stage_config"]["target"]
    check_parity(load_single_file(path, original_config=yml), pipe)


def test_latent_diffusion_trained_here_round_trips(tmp_path):
    """A LatentDiffusion of this library (GroupNorm 16/8, not SD's 32) is refused by default, and
    with strict=False written and read back exactly through the file's ppldm metadata."""
    import ppldm  # noqa: F401
    from ppengine.config import load_config
    from ppengine.trainer import build_model
    from ppldm.interop import load_single_file, save_single_file

    cfg = load_config(os.path.join(ROOT, "configs", "ldm", "txt2img_shapes_plain.yml"),
                      [f"model.autoencoder.weights={tmp_path / 'none.safetensors'}"])
    model = randomize(build_model(cfg), 7)
    path = str(tmp_path / "shapes.safetensors")
    with pytest.raises(InputError, match="norm_groups=16"):
        save_single_file(model, path)
    assert not os.path.exists(path)
    save_single_file(model, path, strict=False)
    parts = load_single_file(path)
    assert parts.text_encoder is None and parts.unet.config["norm_groups"] == 16
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.standard_normal((1, 4, 16, 16)).astype("float32"))
    c = paddle.to_tensor(rng.standard_normal((1, 5, model.unet.context_dim)).astype("float32"))
    t = paddle.to_tensor([300])
    np.testing.assert_array_equal(parts.unet(x, t, c).numpy(), model.unet(x, t, c).numpy())
    z = paddle.to_tensor(rng.standard_normal((1, 4, 8, 8)).astype("float32"))
    np.testing.assert_array_equal(parts.vae.decode(z).numpy(), model.ae.decode(z).numpy())
