"""ppldm.interop: parity with ppdiffusers on random-weight models in Stable Diffusion 2.1's layout."""
import json
import os

import numpy as np
import paddle
import pytest
from random_weights import randomize

from ppengine.errors import CheckpointError, InputError
from ppldm.diffusion import make_scheduler, sample
from ppldm.interop import load_autoencoder, load_unet, save_autoencoder, save_unet


@pytest.fixture(scope="module")
def ref_unet():
    """SD 2.1's UNet layout, reduced width: 4 levels, cross-attention on the first 3, linear
    projections, 64-wide heads -> here 32-wide, context from a 32-wide text encoder."""
    from ppdiffusers import UNet2DConditionModel

    return randomize(UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 64, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(1, 2, 2, 2), cross_attention_dim=32, use_linear_projection=True,
        upcast_attention=True), seed=0)


@pytest.fixture(scope="module")
def ref_vae():
    from ppdiffusers import AutoencoderKL

    return randomize(AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64), layers_per_block=2, latent_channels=4, sample_size=32), seed=1)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.RandomState(5)
    return (paddle.to_tensor(rng.standard_normal((2, 4, 16, 16)).astype("float32")), paddle.to_tensor([10, 700]),
            paddle.to_tensor(rng.standard_normal((2, 7, 32)).astype("float32")))


@pytest.mark.parametrize("to_diffusers", [False, True])
def test_unet_parity_both_layouts(ref_unet, inputs, tmp_path, to_diffusers):
    x, t, c = inputs
    ref_unet.save_pretrained(str(tmp_path), to_diffusers=to_diffusers)
    name = "diffusion_pytorch_model.safetensors" if to_diffusers else "diffusion_paddle_model.safetensors"
    assert os.path.isfile(tmp_path / name)
    unet = load_unet(str(tmp_path))
    expected = ref_unet(x, t, encoder_hidden_states=c).sample.numpy()
    np.testing.assert_allclose(unet(x, t, c).numpy(), expected, atol=1e-4)
    unet2 = load_unet(str(tmp_path), attention_type="split_einsum")
    np.testing.assert_allclose(unet2(x, t, c).numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("layout", ["pt", "pd"])
def test_unet_save_back_loads_in_ppdiffusers(ref_unet, inputs, tmp_path, layout):
    from ppdiffusers import UNet2DConditionModel

    x, t, c = inputs
    ref_unet.save_pretrained(str(tmp_path / "a"))
    save_unet(load_unet(str(tmp_path / "a")), str(tmp_path / "b"), layout=layout)
    back = UNet2DConditionModel.from_pretrained(str(tmp_path / "b"), from_diffusers=layout == "pt")
    back.eval()
    np.testing.assert_allclose(back(x, t, encoder_hidden_states=c).sample.numpy(),
                               ref_unet(x, t, encoder_hidden_states=c).sample.numpy(), atol=1e-4)


@pytest.mark.parametrize("to_diffusers", [False, True])
def test_autoencoder_parity(ref_vae, tmp_path, to_diffusers):
    from ppdiffusers import AutoencoderKL

    ref_vae.save_pretrained(str(tmp_path / "a"), to_diffusers=to_diffusers)
    vae = load_autoencoder(str(tmp_path / "a"))
    x = paddle.to_tensor(np.random.RandomState(3).uniform(-1, 1, (1, 3, 32, 32)).astype("float32"))
    post_ref, post = ref_vae.encode(x).latent_dist, vae.encode(x)
    np.testing.assert_allclose(post.mean.numpy(), post_ref.mean.numpy(), atol=1e-4)
    np.testing.assert_allclose(post.logvar.numpy(), post_ref.logvar.numpy(), atol=1e-4)
    z = post_ref.mean
    np.testing.assert_allclose(vae.decode(z).numpy(), ref_vae.decode(z).sample.numpy(), atol=1e-4)
    save_autoencoder(vae, str(tmp_path / "b"), layout="pt")
    back = AutoencoderKL.from_pretrained(str(tmp_path / "b"), from_diffusers=True)
    np.testing.assert_allclose(back.decode(z).sample.numpy(), ref_vae.decode(z).sample.numpy(), atol=1e-4)


def test_whole_sampling_loop_matches_ppdiffusers_pipeline(ref_unet, ref_vae, tmp_path):
    """StableDiffusionPipeline (v-prediction DDIM as SD 2.1, guidance 7.5) vs ppldm's loop."""
    from ppdiffusers import StableDiffusionPipeline

    rng = np.random.RandomState(7)
    cond = paddle.to_tensor(rng.standard_normal((1, 7, 32)).astype("float32"))
    uncond = paddle.to_tensor(rng.standard_normal((1, 7, 32)).astype("float32"))
    noise = paddle.to_tensor(rng.standard_normal((1, 4, 8, 8)).astype("float32"))
    kw = dict(prediction_type="v", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=ref_vae, text_encoder=None, tokenizer=None, unet=ref_unet,
                                   scheduler=make_scheduler("ddim", **kw), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise, num_inference_steps=4,
                    guidance_scale=7.5, height=32, width=32, output_type="np").images
    ref_unet.save_pretrained(str(tmp_path / "unet"))
    ref_vae.save_pretrained(str(tmp_path / "vae"), to_diffusers=True)
    unet, vae = load_unet(str(tmp_path)), load_autoencoder(str(tmp_path))   # the pipeline-folder form
    z = sample(unet, make_scheduler("ddim", **kw), [1, 4, 8, 8], cond={"context": cond},
               uncond={"context": uncond}, guidance_scale=7.5, num_inference_steps=4, latents=noise,
               progress=False)
    img = (vae.decode(z / vae.scaling_factor) / 2 + 0.5).clip(0, 1).transpose([0, 2, 3, 1]).numpy()
    assert img.std() > 0.01
    np.testing.assert_allclose(img, expected, atol=1e-4)


def test_mismatched_and_truncated_checkpoints(ref_unet, tmp_path):
    from safetensors.numpy import load_file, save_file

    ref_unet.save_pretrained(str(tmp_path / "ok"))
    folder = tmp_path / "ok"
    path = folder / "diffusion_paddle_model.safetensors"
    arrays = load_file(str(path))
    # a key missing and one unexpected
    bad = dict(arrays)
    bad.pop("mid_block.attentions.0.proj_in.weight")
    bad["extra.weight"] = np.zeros(3, "float32")
    os.makedirs(tmp_path / "bad")
    save_file(bad, str(tmp_path / "bad" / path.name), metadata={"format": "pd"})
    (tmp_path / "bad" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(CheckpointError) as e:
        load_unet(str(tmp_path / "bad"))
    msg = str(e.value)
    assert "missing keys (1)" in msg and "mid_block.attentions.0.proj_in.weight" in msg
    assert "unexpected keys (1)" in msg and "extra.weight" in msg
    # a config that does not belong to the weights: shape mismatches are listed
    cfg = json.loads((folder / "config.json").read_text())
    cfg["cross_attention_dim"] = 16
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    save_file(arrays, str(tmp_path / "bad" / path.name), metadata={"format": "pd"})
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatches .*attn2.to_k.weight"):
        load_unet(str(tmp_path / "bad"))
    # a truncated file
    (tmp_path / "bad" / "config.json").write_text((folder / "config.json").read_text())
    data = path.read_bytes()
    (tmp_path / "bad" / path.name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_unet(str(tmp_path / "bad"))
    with pytest.raises(InputError, match="not a folder"):
        load_unet(str(tmp_path / "nowhere"))
    # only an fp16 variant present: a hint, then it loads (cast to float32) with variant="fp16"
    os.makedirs(tmp_path / "half")
    (tmp_path / "half" / "config.json").write_text((folder / "config.json").read_text())
    save_file({k: v.astype("float16") for k, v in arrays.items()},
              str(tmp_path / "half" / "diffusion_paddle_model.fp16.safetensors"), metadata={"format": "pd"})
    with pytest.raises(InputError, match="variant"):
        load_unet(str(tmp_path / "half"))
    half = load_unet(str(tmp_path / "half"), variant="fp16")
    assert half.conv_in.weight.dtype == paddle.float32
    np.testing.assert_allclose(half.conv_in.weight.numpy(), arrays["conv_in.weight"], atol=1e-3)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(InputError, match="no config.json"):
        load_unet(str(tmp_path / "empty"))


def test_legacy_vae_names_and_pdparams(ref_vae, tmp_path):
    """Old diffusers VAE files name the mid attention query/key/value/proj_attn; ppdiffusers
    can also write pickled Paddle weights (read here without running pickle code)."""
    from safetensors.numpy import load_file, save_file

    ref_vae.save_pretrained(str(tmp_path / "new"), to_diffusers=True)
    arrays = load_file(str(tmp_path / "new" / "diffusion_pytorch_model.safetensors"))
    old = {}
    for k, v in arrays.items():
        for new, legacy in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                            (".to_out.0.", ".proj_attn.")):
            k = k.replace(new, legacy)
        old[k] = v
    assert "encoder.mid_block.attentions.0.query.weight" in old
    os.makedirs(tmp_path / "old")
    save_file(old, str(tmp_path / "old" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    z = paddle.to_tensor(np.random.RandomState(0).standard_normal((1, 4, 8, 8)).astype("float32"))
    expected = ref_vae.decode(z).sample.numpy()
    np.testing.assert_allclose(load_autoencoder(str(tmp_path / "old")).decode(z).numpy(), expected, atol=1e-4)
    ref_vae.save_pretrained(str(tmp_path / "pd"), safe_serialization=False)
    assert os.path.isfile(tmp_path / "pd" / "model_state.pdparams")
    np.testing.assert_allclose(load_autoencoder(str(tmp_path / "pd")).decode(z).numpy(), expected, atol=1e-4)


def test_unet_parity_sd1_layout_class_and_concat(tmp_path):
    """Other config paths: 1x1-conv projections and a fixed head count (SD 1.x), two transformer
    blocks per level, class embeddings, and extra concat input channels (inpainting-style)."""
    from ppdiffusers import UNet2DConditionModel

    ref = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
        transformer_layers_per_block=2, cross_attention_dim=16, use_linear_projection=False,
        num_class_embeds=5), seed=4)
    ref.save_pretrained(str(tmp_path), to_diffusers=True)
    unet = load_unet(str(tmp_path))
    assert unet.concat_channels == 3 and unet.in_channels == 4
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.standard_normal((2, 7, 8, 8)).astype("float32"))
    c = paddle.to_tensor(rng.standard_normal((2, 3, 16)).astype("float32"))
    t, y = paddle.to_tensor([1, 999]), paddle.to_tensor([0, 4])
    expected = ref(x, t, encoder_hidden_states=c, class_labels=y).sample.numpy()
    out = unet(x[:, :4], t, c, class_labels=y, concat=x[:, 4:])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)
