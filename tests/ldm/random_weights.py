"""Non-trivial random weights for parity tests (fresh LayerNorm/GroupNorm defaults can hide
export and conversion bugs, so every parity test fills every tensor with noise), the tiny
real CLIP tokenizer the Stable Diffusion tests share, and the tiny SD 2.x pipeline folder they
load (and export)."""
import json
import os

import numpy as np
import paddle


def randomize(model, seed=0, scale=0.1, eval=True):
    """Fill every tensor of ``model``'s state with N(0, scale^2) noise from ``seed``."""
    rng = np.random.RandomState(seed)
    model.set_state_dict({k: paddle.to_tensor(rng.standard_normal(v.shape).astype("float32") * scale)
                          for k, v in model.state_dict().items()})
    if eval:
        model.eval()
    return model


def write_byte_level_tokenizer(folder):
    """A CLIP BPE vocabulary of the 256 byte symbols (no merges): a real, tiny tokenizer.
    Returns its vocabulary size."""
    from paddlenlp.transformers.clip.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return len(vocab)


def make_sd_pipeline(root, prediction_type="v"):
    """A tiny Stable Diffusion 2.x pipeline (CLIP text encoder, UNet 32/64 with linear projections,
    VAE 32/32) with random weights and the byte-level tokenizer, saved as a diffusers folder
    ``root/pipe`` by ppdiffusers. Returns (that folder, the pipeline)."""
    from paddlenlp.transformers import CLIPTokenizer
    from ppdiffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel

    from ppldm.diffusion import make_scheduler

    n = write_byte_level_tokenizer(os.path.join(root, "tok_src"))
    tokenizer = CLIPTokenizer(os.path.join(root, "tok_src", "vocab.json"), os.path.join(root, "tok_src", "merges.txt"))
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
                                   scheduler=make_scheduler("ddim", prediction_type=prediction_type, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    folder = os.path.join(root, "pipe")
    pipe.save_pretrained(folder)
    return folder, pipe
