"""Stable Diffusion 2.x as a ppldm model: ppldm UNet + AutoencoderKL + a CLIP text encoder.

    sd = StableDiffusion(folder="stable-diffusion-2-1")           # a diffusers pipeline folder
    sd = StableDiffusion(checkpoint="v2-1_768-ema-pruned.safetensors",  # or an SD single file
                         tokenizer="stable-diffusion-2-1/tokenizer")     # (+ original_config=YAML)
    images = sd.generate("a photo of an astronaut", steps=30, sampler="dpm_solver++", seed=0)  # (B, 3, H, W) in [0, 1]

The UNet and VAE are ppldm models loaded with :func:`load_unet` / :func:`load_autoencoder`;
the text encoder is ppdiffusers' ``CLIPTextModel`` (a paddlenlp ``PretrainedModel`` with
transformers' names, which reads the diffusers ``text_encoder/`` folder, PyTorch safetensors
included) with paddlenlp's ``CLIPTokenizer``. Without ``folder`` the architecture is built from
the config with random weights (for tests and shape checks) and prompts must be given as
embeddings (``context``).

A single file (:mod:`ppldm.interop.single_file`) holds no tokenizer: give a CLIP BPE tokenizer
folder (``vocab.json`` + ``merges.txt``, e.g. the ``tokenizer/`` of the matching diffusers
pipeline) as ``tokenizer`` to encode prompts; without one, prompts must come as ``context``.

Configs: ``configs/ldm/sd21.yml`` (768x768, v-prediction) and ``configs/ldm/sd21_base.yml``
(512x512, eps-prediction).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

import paddle
import paddle.nn as nn

from ppengine.errors import ConfigError, InputError
from ppengine.registry import MODELS

from ..diffusion import GaussianDiffusion, drop_condition, sample
from ..models import AutoencoderKL, UNet
from .diffusers import load_autoencoder, load_unet


def _load_tokenizer(folder: str):
    from paddlenlp.transformers import CLIPTokenizer

    if not os.path.isdir(folder) or not os.path.isfile(os.path.join(folder, "vocab.json")):
        raise InputError(f"tokenizer {folder!r}: expected a CLIP tokenizer folder with vocab.json and merges.txt "
                         "(e.g. the tokenizer/ folder of the matching diffusers pipeline)")
    try:
        return CLIPTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{folder}: could not load the CLIP tokenizer ({type(e).__name__}: {e})") from e


def _text_encoder_from_torch_bin(te: str, bin_path: str):
    """transformers' ``pytorch_model.bin`` (a torch.save file), read through the allow-list, never torch.load."""
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel

    from ppengine.safe_load import load_torch_checkpoint, torch_state_dict

    from .weights import load_arrays_into, to_paddle_layout

    try:
        encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(te))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{te}: could not read the CLIP text encoder's config.json ({type(e).__name__}: {e})") from e
    own = encoder.state_dict()
    arrays = {k: v for k, v in torch_state_dict(load_torch_checkpoint(bin_path), bin_path).items()
              if k in own or not k.endswith("position_ids")}
    load_arrays_into(encoder, to_paddle_layout(encoder, arrays, "pt"), bin_path)
    encoder.eval()
    return encoder


def _load_text_encoder(folder: str):
    te, tok = os.path.join(folder, "text_encoder"), os.path.join(folder, "tokenizer")
    if not os.path.isdir(te) or not os.path.isdir(tok):
        return None, None
    from ppdiffusers.transformers import CLIPTextModel

    bin_path = os.path.join(te, "pytorch_model.bin")
    if os.path.isfile(bin_path) and not any(f.endswith((".safetensors", ".pdparams")) for f in os.listdir(te)):
        return _text_encoder_from_torch_bin(te, bin_path), _load_tokenizer(tok)
    # diffusers' text_encoder/model.safetensors is PyTorch layout (metadata format "pt"); ppdiffusers
    # writes Paddle layout under the same name; let paddlenlp decide for anything else.
    from_torch = None
    st = os.path.join(te, "model.safetensors")
    if os.path.isfile(st):
        from safetensors import safe_open

        try:
            with safe_open(st, framework="np") as f:
                from_torch = True if (f.metadata() or {}).get("format") == "pt" else None
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{st}: cannot be read as safetensors ({e}); the file may be truncated") from e
    try:
        encoder = CLIPTextModel.from_pretrained(te, from_diffusers=from_torch)
    except Exception as e:  # noqa: BLE001 - report which folder failed and why
        raise InputError(f"{te}: could not load the CLIP text encoder / tokenizer ({type(e).__name__}: {e})") from e
    encoder.eval()
    return encoder, _load_tokenizer(tok)


@MODELS.register()
class StableDiffusion(nn.Layer):
    """Text-to-image latent diffusion in Stable Diffusion 2.x's layout.

    Args:
        folder: a diffusers / ppdiffusers pipeline folder (``unet/``, ``vae/``, ``text_encoder/``,
            ``tokenizer/``). Its ``config.json`` files define the networks; ``unet``/``vae`` below
            are then ignored. None: build ``unet``/``vae`` from the arguments, random weights.
        checkpoint: instead of ``folder``, a Stable Diffusion single file with the original key
            names (``.safetensors`` or ``.ckpt``; see :mod:`ppldm.interop.single_file`).
        original_config: the checkpoint's inference YAML (``v2-inference-v.yaml`` ...); None
            infers the networks from the shapes. Its ``parameterization`` and schedule override
            ``diffusion``.
        tokenizer: a CLIP tokenizer folder for ``checkpoint`` (a single file holds none).
        unet: :class:`ppldm.models.UNet` keyword arguments.
        vae: :class:`ppldm.models.AutoencoderKL` keyword arguments.
        diffusion: :class:`ppldm.diffusion.GaussianDiffusion` keyword arguments (schedule,
            ``prediction_type``: ``v`` for SD 2.1 768, ``eps`` for SD 2.1-base).
        attention_type: ``standard`` or ``split_einsum``.
        cond_drop_prob: probability of training with the empty prompt (classifier-free guidance).
        max_length: tokens per prompt (77).
        train_text_encoder: when False (default) the text encoder and VAE are frozen.
        sampler: sampling defaults of :meth:`generate`: ``{type: ddim, steps: 50, guidance_scale: 7.5,
            negative_prompt: ""}``.
        sample_size: image side :meth:`generate` samples by default (768 for SD 2.1, 512 for 2.1-base).

    ``forward(batch)`` (fine-tuning the UNet): ``batch["image"]`` (B, 3, H, W) in [-1, 1] and
    ``batch["caption"]`` (B strings) or ``batch["context"]`` (B, 77, D) -> the diffusion loss.
    """

    def __init__(self, folder: Optional[str] = None, unet: Optional[Dict] = None, vae: Optional[Dict] = None,
                 diffusion: Optional[Dict] = None, attention_type: str = "standard", cond_drop_prob: float = 0.1,
                 max_length: int = 77, train_text_encoder: bool = False, sampler: Optional[Dict] = None,
                 sample_size: int = 768, checkpoint: Optional[str] = None,
                 original_config: Optional[str] = None, tokenizer: Optional[str] = None):
        super().__init__()
        self.sampler_cfg = {"type": "ddim", "steps": 50, "guidance_scale": 7.5, "negative_prompt": ""}
        unknown = set(sampler or {}) - set(self.sampler_cfg)
        if unknown:
            raise ConfigError(f"model.sampler: unknown key(s) {sorted(unknown)}; valid: {sorted(self.sampler_cfg)}")
        self.sampler_cfg.update(sampler or {})
        self.sample_size = int(sample_size)
        diffusion = dict(diffusion or {})
        if folder is not None and checkpoint is not None:
            raise InputError("StableDiffusion: give either folder (a diffusers pipeline) or checkpoint (a single "
                             "file), not both")
        if checkpoint is not None:
            from .single_file import load_single_file

            parts = load_single_file(checkpoint, original_config, attention_type=attention_type)
            self.unet, self.vae, self.text_encoder = parts.unet, parts.vae, parts.text_encoder
            self.tokenizer = _load_tokenizer(tokenizer) if tokenizer else None
            for key, val in (("prediction_type", "prediction_type"), ("beta_start", "beta_start"),
                             ("beta_end", "beta_end"), ("num_train_timesteps", "num_train_timesteps")):
                if original_config and val in parts.settings:
                    diffusion[key] = parts.settings[val]
        elif folder is not None:
            if not os.path.isdir(folder):
                raise InputError(f"StableDiffusion: folder {folder!r} does not exist. Give the path of a "
                                 "diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/).")
            self.unet = load_unet(folder, attention_type=attention_type)
            self.vae = load_autoencoder(folder)
            self.text_encoder, self.tokenizer = _load_text_encoder(folder)
        else:
            self.unet = UNet(**dict(unet or {}), attention_type=attention_type)
            self.vae = AutoencoderKL(**dict(vae or {}))
            self.text_encoder, self.tokenizer = None, None
        self.diffusion = GaussianDiffusion(**diffusion)
        self.cond_drop_prob = cond_drop_prob
        self.max_length = max_length
        for p in self.vae.parameters():
            p.stop_gradient = True
        if self.text_encoder is not None and not train_text_encoder:
            for p in self.text_encoder.parameters():
                p.stop_gradient = True

    # ------------------------------------------------------------------ text
    @property
    def can_encode_prompts(self) -> bool:
        """True when both a text encoder and a tokenizer are loaded."""
        return self.text_encoder is not None and self.tokenizer is not None

    def encode_prompt(self, prompts: Union[str, Sequence[str]]) -> paddle.Tensor:
        """Prompts -> (B, max_length, D) last hidden states of the CLIP text encoder."""
        if self.text_encoder is None or self.tokenizer is None:
            what = "tokenizer (give tokenizer=FOLDER with vocab.json + merges.txt)" if self.text_encoder is not None \
                else "text encoder (give `folder` with text_encoder/ and tokenizer/, or a checkpoint holding one)"
            raise InputError(f"StableDiffusion: no {what}, or pass prompt embeddings as `context`")
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pd").input_ids
        return self.text_encoder(ids)[0]

    # ------------------------------------------------------------------ training
    def forward(self, batch: Dict) -> Dict:
        image = batch["image"]
        with paddle.no_grad():
            z = self.vae.encode(image).sample() * self.vae.scaling_factor
        if "context" in batch:
            ctx = batch["context"]
        else:
            ctx = self.encode_prompt(list(batch["caption"]))
        if self.training and self.cond_drop_prob > 0:
            null = self.encode_prompt([""]) if self.can_encode_prompts else paddle.zeros_like(ctx[:1])
            ctx = drop_condition(ctx, null[0], self.cond_drop_prob)
        return self.diffusion.training_losses(self.unet, z, context=ctx)

    def losses(self, batch: Dict, outputs: Dict) -> Dict:
        return {"loss": outputs["loss"]}

    # ------------------------------------------------------------------ sampling
    @paddle.no_grad()
    def generate(self, prompt: Union[str, List[str], None] = None, negative_prompt: Union[str, List[str]] = None,
                 context: Optional[paddle.Tensor] = None, uncond_context: Optional[paddle.Tensor] = None,
                 height: int = None, width: int = None, steps: int = None, guidance_scale: float = None,
                 sampler: str = None, seed: Optional[int] = None, latents: Optional[paddle.Tensor] = None,
                 progress: bool = True, **sampler_kwargs) -> paddle.Tensor:
        """Sample images: float32 (B, 3, H, W) in [0, 1] (write them with ``ppengine.io.to_uint8``).

        Args:
            prompt / negative_prompt: text (needs the text encoder), or ``context`` /
                ``uncond_context`` embeddings (B, M, D) directly.
            height, width: image size (default ``sample_size``); height / 8 and width / 8 must be
                divisible by the UNet's downsampling (8 for SD), i.e. multiples of 64.
            steps, guidance_scale, sampler (ddim, plms, dpm_solver++, ddpm, ...): default
                ``model.sampler``; seed.
            latents: initial noise (B, 4, height/8, width/8) instead of drawing it from ``seed``.
        """
        sc = self.sampler_cfg
        negative_prompt = sc["negative_prompt"] if negative_prompt is None else negative_prompt
        height = self.sample_size if height is None else height
        width = self.sample_size if width is None else width
        steps = int(sc["steps"] if steps is None else steps)
        guidance_scale = float(sc["guidance_scale"] if guidance_scale is None else guidance_scale)
        sampler = sc["type"] if sampler is None else sampler
        if context is None:
            if prompt is None:
                raise InputError("generate: give a prompt or a context")
            context = self.encode_prompt(prompt)
        b = context.shape[0]
        if guidance_scale != 1.0 and uncond_context is None:
            neg = [negative_prompt] * b if isinstance(negative_prompt, str) else list(negative_prompt)
            uncond_context = self.encode_prompt(neg) if self.can_encode_prompts else paddle.zeros_like(context)
        f = self.vae.downsample_factor
        if height % f or width % f:
            raise InputError(f"generate: height and width must be multiples of {f}, got {height}x{width}")
        shape = [b, self.unet.in_channels, height // f, width // f]
        steps_offset = {"steps_offset": 1} if sampler in ("ddim", "pndm", "plms", "ddpm") else {}
        steps_offset.update(sampler_kwargs)
        sched = self.diffusion.scheduler(sampler, **steps_offset)
        z = sample(self.unet, sched, shape, cond={"context": context},
                   uncond={"context": uncond_context} if uncond_context is not None else None,
                   guidance_scale=guidance_scale, num_inference_steps=steps, seed=seed, latents=latents,
                   progress=progress)
        return (self.vae.decode(z / self.vae.scaling_factor) / 2 + 0.5).clip(0, 1).astype("float32")
