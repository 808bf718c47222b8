"""The exportable components of ppldm's models, declared for :mod:`ppengine.export`.

LatentDiffusion (every configs/ldm task) and StableDiffusion (SD 2.x folders / single files):

=================  =============================================================  ==================
component          inputs -> outputs                                              apple role
=================  =============================================================  ==================
``unet``           sample (B, c, h, w), timestep (B,) float32,                    Unet
                   encoder_hidden_states (B, D, 1, L) [context models],
                   concat (B, cc, h, w) [inpainting, super-resolution]
                   -> noise_pred (B, c, h, w)   (B = 2 by default: the guidance pair)
``text_encoder``   input_ids (1, L) [+ attention_mask (1, L)] -> last_hidden_state  TextEncoder
                   (1, L, D) (SD: input_ids float32 as apple's, + pooled_outputs)
``class_embedder`` class_labels (1,) int64 (n_classes = the null class) -> context (1, 1, D)
``layout``         tokens (1, 3N) int64 (``tokenize_boxes``) -> context (1, 3N, D)
``vae_decoder``    z (1, c, h, w) unscaled latent -> image (1, C, H, W) in ~[-1, 1]  VAEDecoder
``vae_encoder``    x (1, C, H, W) in [-1, 1] -> latent: KL moments (1, 2c, h, w)     VAEEncoder
                   (mean, logvar), VQ pre-quantization latent (1, c, h, w)
=================  =============================================================  ==================

The UNet takes the context in apple/ml-stable-diffusion's (B, D, 1, L) layout: a conditioner's
(B, L, D) output transposed, ``context.transpose(0, 2, 1)[:, :, None, :]``.
``--attention split_einsum`` switches the model's attention to the Neural Engine form
(:func:`ppldm.models.attention.set_attention_type`; same numbers).
"""
from __future__ import annotations

import os

import numpy as np
import paddle
import paddle.nn as nn

from ppengine.errors import ExportError, InputError
from ppengine.export import Component, TensorSpec, register_components, register_pipeline_info

from .conditioners import ClassEmbedder, LayoutEmbedder, MiniLMEncoder, TextTransformer
from .models.attention import set_attention_type

APPLE_ROLES = {"unet": "Unet", "text_encoder": "TextEncoder", "vae_decoder": "VAEDecoder", "vae_encoder": "VAEEncoder"}


# --------------------------------------------------------------------------- graph layers
class _UNetGraph(nn.Layer):
    """The UNet with the context in (B, D, 1, L) layout; subclasses fix which inputs exist."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def run(self, sample, timestep, encoder_hidden_states, concat):
        ctx = None
        if encoder_hidden_states is not None:
            ctx = encoder_hidden_states.squeeze(2).transpose([0, 2, 1])
        return (self.unet(sample, timestep, ctx, None, concat),)


class UNetGraph(_UNetGraph):
    def forward(self, sample, timestep):
        return self.run(sample, timestep, None, None)


class UNetContextGraph(_UNetGraph):
    def forward(self, sample, timestep, encoder_hidden_states):
        return self.run(sample, timestep, encoder_hidden_states, None)


class UNetConcatGraph(_UNetGraph):
    def forward(self, sample, timestep, concat):
        return self.run(sample, timestep, None, concat)


class UNetContextConcatGraph(_UNetGraph):
    def forward(self, sample, timestep, encoder_hidden_states, concat):
        return self.run(sample, timestep, encoder_hidden_states, concat)


class DecoderGraph(nn.Layer):
    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, z):
        return (self.ae.decode(z),)


class EncoderGraph(nn.Layer):
    """``quant_conv(encoder(x))``: KL: the posterior's moments (mean | logvar, unclipped), as apple's
    VAEEncoder; VQ: the latent before quantization."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, x):
        return (self.ae.quant_conv(self.ae.encoder(x)),)


class ClassGraph(nn.Layer):
    def __init__(self, embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, class_labels):
        return (self.embedder.embedding(class_labels).unsqueeze(1),)


class TokenTransformerGraph(nn.Layer):
    """TextTransformer: ids + keep mask (1 = real token) into its TokenTransformer."""

    def __init__(self, conditioner):
        super().__init__()
        self.conditioner = conditioner

    def forward(self, input_ids, attention_mask):
        return (self.conditioner.transformer(input_ids, attention_mask.astype("bool")),)


class MiniLMGraph(nn.Layer):
    def __init__(self, conditioner):
        super().__init__()
        self.conditioner = conditioner

    def forward(self, input_ids, attention_mask):
        mask = ((1.0 - attention_mask.astype("float32")) * -1e4).unsqueeze([1, 2])
        out = self.conditioner.bert(input_ids, attention_mask=mask)
        h = out[0] if isinstance(out, (tuple, list)) else out
        if self.conditioner.proj is not None:
            h = self.conditioner.proj(h)
        return (h,)


class LayoutGraph(nn.Layer):
    def __init__(self, conditioner):
        super().__init__()
        self.conditioner = conditioner

    def forward(self, tokens):
        c = self.conditioner
        extra = paddle.nn.functional.embedding(tokens, c.coord_table) if c.coord_encoding else None
        return (c.transformer(tokens, extra=extra),)


class CLIPTextGraph(nn.Layer):
    """ppdiffusers' CLIPTextModel on float32 token ids (apple's TextEncoder input)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        out = self.text_encoder(input_ids.astype("int64"), return_dict=False)
        return (out[0], out[1])


# --------------------------------------------------------------------------- declarations
def _context_len(cond) -> int:
    if isinstance(cond, ClassEmbedder):
        return 1
    if isinstance(cond, LayoutEmbedder):
        return 3 * cond.max_objects
    if isinstance(cond, (TextTransformer, MiniLMEncoder)):
        return cond.tokenizer.max_length
    raise ExportError(f"conditioner {type(cond).__name__} declares no export component")


def conditioner_component(cond) -> Component:
    """The conditioner's graph: class labels / token ids / box tokens -> context (1, L, D)."""
    d, L = cond.out_dim, _context_len(cond)
    if isinstance(cond, ClassEmbedder):
        return Component("class_embedder", ClassGraph(cond),
                         [TensorSpec("class_labels", (1,), "int64", f"class index 0..{cond.n_classes - 1}; "
                                     f"{cond.n_classes} = the null class (classifier-free guidance)",
                                     range=(0, cond.n_classes + 1))],
                         [TensorSpec("context", (1, 1, d), description="the UNet's context (B, L, D)")],
                         "class label -> cross-attention context")
    if isinstance(cond, LayoutEmbedder):
        return Component("layout", LayoutGraph(cond),
                         [TensorSpec("tokens", (1, L), "int64", "box tokens (class, top-left cell, bottom-right "
                                     f"cell) per box on a {cond.grid}x{cond.grid} grid, see manifest pipeline",
                                     range=(0, cond.vocab_size))],
                         [TensorSpec("context", (1, L, d), description="the UNet's context (B, L, D)")],
                         "layout tokens -> cross-attention context")
    ids = TensorSpec("input_ids", (1, L), "int64", "WordPiece token ids (tokenizer/vocab.txt), padded",
                     range=(0, cond.tokenizer.vocab_size))
    mask = TensorSpec("attention_mask", (1, L), "int64", "1 for real tokens, 0 for padding", range=(0, 2))
    layer = MiniLMGraph(cond) if isinstance(cond, MiniLMEncoder) else TokenTransformerGraph(cond)
    return Component("text_encoder", layer, [ids, mask],
                     [TensorSpec("last_hidden_state", (1, L, d), description="the UNet's context (B, L, D)")],
                     f"caption tokens -> context ({type(cond).__name__})", extra={"apple_role": "TextEncoder"})


def unet_component(unet, batch: int, latent_channels: int, h: int, context: tuple = None,
                   concat_channels: int = 0, num_train_timesteps: int = 1000) -> Component:
    if unet.config.get("num_classes"):
        raise ExportError("UNet num_classes (ADM-style class embedding) is not exportable yet; use a ClassEmbedder "
                          "conditioner (configs/ldm/class2img_digits.yml)")
    b = int(batch)
    ins = [TensorSpec("sample", (b, latent_channels, h, h), description="the noisy latent being denoised "
                      "(the scheduler's scaled model input)"),
           TensorSpec("timestep", (b,), description="the scheduler's timestep for each sample",
                      range=(0, num_train_timesteps - 1))]
    if context is not None:
        L, D = context
        ins.append(TensorSpec("encoder_hidden_states", (b, D, 1, L), description="the conditioner's context "
                              "(B, L, D) transposed to (B, D, 1, L), unconditional first for guidance"))
    if concat_channels:
        ins.append(TensorSpec("concat", (b, concat_channels, h, h), description="channels concatenated to the "
                              "sample (inpainting: mask + masked-image latent; super-resolution: low-res image)"))
    cls = {(False, False): UNetGraph, (True, False): UNetContextGraph, (False, True): UNetConcatGraph,
           (True, True): UNetContextConcatGraph}[(context is not None, bool(concat_channels))]
    return Component("unet", cls(unet), ins,
                     [TensorSpec("noise_pred", (b, latent_channels, h, h),
                                 description="the model's prediction (eps / v / x0, see manifest pipeline)")],
                     "denoising UNet", extra={"apple_role": "Unet"})


def vae_components(ae, latent_channels: int, image_channels: int, h: int, f: int, kind: str):
    size = h * f
    dec = Component("vae_decoder", DecoderGraph(ae),
                    [TensorSpec("z", (1, latent_channels, h, h), description="the latent divided by the scale "
                                "factor (manifest pipeline.latent.scale_factor)")],
                    [TensorSpec("image", (1, image_channels, size, size),
                                description="the image in [-1, 1] (clip it)")],
                    "first-stage decoder", extra={"apple_role": "VAEDecoder"})
    moments = 2 * latent_channels if kind == "kl" else latent_channels
    enc = Component("vae_encoder", EncoderGraph(ae),
                    [TensorSpec("x", (1, image_channels, size, size), description="an image in [-1, 1]",
                                range=(-1.0, 1.0))],
                    [TensorSpec("latent", (1, moments, h, h), description="KL: mean and log-variance of the "
                                "posterior (mean = first half); VQ: the latent before quantization")],
                    "first-stage encoder", extra={"apple_role": "VAEEncoder"})
    return [dec, enc]


def _attention(model_unet, options):
    if options.attention != "standard":
        set_attention_type(model_unet, options.attention)


@register_components("LatentDiffusion")
def latent_diffusion_components(model, options):
    _attention(model.unet, options)
    size = int(options.image_size or model.sample_size)
    f = model.f * model.unet.downsample_factor
    if size % f:
        raise InputError(f"image size {size} must be divisible by {f} for this model")
    h = size // model.f
    cond = model.conditioner
    comps = []
    if cond is not None:
        comps.append(conditioner_component(cond))
    concat_ch = {None: 0, "inpaint": model.latent_channels + 1, "lowres": model.image_channels}[model.concat]
    ctx = (_context_len(cond), cond.out_dim) if cond is not None else None
    comps.insert(0, unet_component(model.unet, options.batch or 2, model.latent_channels, h, ctx, concat_ch,
                                   model.diffusion.num_train_timesteps))
    if model.ae_kind != "identity":
        comps += vae_components(model.ae, model.latent_channels, model.image_channels, h, model.f, model.ae_kind)
    return comps


@register_components("StableDiffusion")
def stable_diffusion_components(model, options):
    _attention(model.unet, options)
    size = int(options.image_size or model.sample_size)
    f = model.vae.downsample_factor
    if size % (f * model.unet.downsample_factor):
        raise InputError(f"image size {size} must be a multiple of {f * model.unet.downsample_factor}")
    h = size // f
    c = model.unet.in_channels
    comps = [unet_component(model.unet, options.batch or 2, c, h, (model.max_length, model.unet.context_dim),
                            0, model.diffusion.num_train_timesteps)]
    if model.text_encoder is not None:
        te = model.text_encoder
        L, D = model.max_length, te.config.hidden_size
        comps.insert(0, Component(
            "text_encoder", CLIPTextGraph(te),
            [TensorSpec("input_ids", (1, L), "float32", "CLIP BPE token ids as float32 (apple's TextEncoder input), "
                        "padded with the end token", range=(0, te.config.vocab_size))],
            [TensorSpec("last_hidden_state", (1, L, D), description="the UNet's context (B, L, D)"),
             TensorSpec("pooled_outputs", (1, D), description="the end token's state")],
            "CLIP text encoder", extra={"apple_role": "TextEncoder"}))
    comps += vae_components(model.vae, c, 3, h, f, "kl")
    return comps


# --------------------------------------------------------------------------- manifest facts
def scheduler_facts(diffusion, sampler_cfg: dict, **kw) -> dict:
    sched = diffusion.scheduler(sampler_cfg.get("type", "ddim"), **kw)
    return {"class": type(sched).__name__, "config": {k: v for k, v in dict(sched.config).items()
                                                      if not k.startswith("_")},
            "steps": int(sampler_cfg.get("steps", 50)), "guidance_scale": float(sampler_cfg.get("guidance_scale", 1.0)),
            "eta": float(sampler_cfg.get("eta", 0.0)),
            "prediction_type": diffusion.prediction_type}


GUIDANCE = ("unet batch = [unconditional; conditional]; pred = pred_u + guidance_scale * (pred_c - pred_u)")


def _tokenizer_facts(cond) -> tuple:
    if isinstance(cond, (TextTransformer, MiniLMEncoder)):
        tok = cond.tokenizer
        files = {"tokenizer/vocab.txt": tok.vocab_file}
        return ({"type": "wordpiece", "vocab": "tokenizer/vocab.txt", "lowercase": tok.lowercase,
                 "max_length": cond.tokenizer.max_length, "pad_id": int(cond.tokenizer.pad_id),
                 "null_caption": ""}, files)
    if isinstance(cond, ClassEmbedder):
        return ({"null_label": cond.n_classes, "n_classes": cond.n_classes}, {})
    if isinstance(cond, LayoutEmbedder):
        return ({"grid": cond.grid, "n_classes": cond.n_classes, "max_objects": cond.max_objects,
                 "pad_token": cond.grid ** 2 + cond.n_classes,
                 "tokens": "per box (grid^2 + class, cell(x0, y0), cell(x1, y1)), cell(x, y) = "
                           "round(y (grid-1)) * grid + round(x (grid-1)); padding boxes: 3 pad tokens; "
                           "the null layout: all padding"}, {})
    return ({}, {})


@register_pipeline_info("LatentDiffusion")
def latent_diffusion_info(model, components, options):
    cond = model.conditioner
    size = int(options.image_size or model.sample_size)
    facts, files = _tokenizer_facts(cond)
    names = [c.name for c in components]
    conditioner = next((n for n in names if n in ("text_encoder", "class_embedder", "layout")), None)
    pipeline = {
        "kind": "latent_diffusion",
        "scheduler": scheduler_facts(model.diffusion, model.sampler_cfg),
        "guidance": GUIDANCE,
        "latent": {"channels": model.latent_channels, "size": size // model.f,
                   "scale_factor": float(model.scale.scale_factor), "first_stage": model.ae_kind,
                   "downsample_factor": model.f},
        "image": {"channels": model.image_channels, "size": size, "range": [-1, 1]},
        "concat": model.concat,
        "residual": bool(model.residual),
        "conditioner": None if cond is None else dict(facts, type=type(cond).__name__, component=conditioner,
                                                      output=components[names.index(conditioner)].outputs[0].name
                                                      if conditioner else None),
    }
    return {"pipeline": pipeline, "files": files, "metadata": {"license": "the model's weights' licence",
                                                              "description": "latent diffusion (ppldm)"}}


@register_pipeline_info("StableDiffusion")
def stable_diffusion_info(model, components, options):
    size = int(options.image_size or model.sample_size)
    f = model.vae.downsample_factor
    sampler = dict(model.sampler_cfg)
    kw = {"steps_offset": 1} if sampler.get("type", "ddim") in ("ddim", "pndm", "plms", "ddpm") else {}
    files = {}
    tok = model.tokenizer
    if tok is not None:
        for name in ("vocab.json", "merges.txt"):
            src = _tokenizer_file(tok, name)
            if src:
                files[f"tokenizer/{name}"] = src
    pipeline = {
        "kind": "stable_diffusion",
        "scheduler": scheduler_facts(model.diffusion, sampler, **kw),
        "guidance": GUIDANCE,
        "negative_prompt": sampler.get("negative_prompt", ""),
        "latent": {"channels": model.unet.in_channels, "size": size // f,
                   "scale_factor": float(model.vae.scaling_factor), "first_stage": "kl", "downsample_factor": f},
        "image": {"channels": 3, "size": size, "range": [-1, 1]},
        "conditioner": {"type": "CLIPTextModel", "component": "text_encoder" if model.text_encoder is not None
                        else None, "output": "last_hidden_state",
                        "tokenizer": {"type": "clip_bpe", "vocab": "tokenizer/vocab.json",
                                      "merges": "tokenizer/merges.txt", "max_length": model.max_length}},
    }
    return {"pipeline": pipeline, "files": files,
            "coreml_files": {f"coreml/{os.path.basename(k)}": v for k, v in files.items()},
            "metadata": {"license": "the Stable Diffusion weights' licence (CreativeML Open RAIL++-M for SD 2.x)",
                         "description": "Stable Diffusion 2.x (ppldm), apple/ml-stable-diffusion layout"}}


def _tokenizer_file(tok, name: str):
    key = {"vocab.json": "vocab_file", "merges.txt": "merges_file"}[name]
    path = getattr(tok, key, None) or (getattr(tok, "init_kwargs", {}) or {}).get(key)
    return path if path and os.path.isfile(path) else None


def graph_feeds(cond, values) -> dict:
    """A conditioner's raw values (labels, captions, boxes) -> its graph's inputs (NumPy), the same
    preprocessing its ``encode`` does."""
    from .conditioners.base import to_numpy
    from .conditioners.layout import tokenize_boxes
    from .conditioners.text import as_captions

    if isinstance(cond, ClassEmbedder):
        v = to_numpy(values).astype(np.int64).reshape(-1)
        if np.any(v >= cond.n_classes) or np.any(v < -1):
            raise InputError(f"class label out of range: this model knows classes 0..{cond.n_classes - 1}")
        return {"class_labels": np.where(v < 0, cond.n_classes, v)}
    if isinstance(cond, LayoutEmbedder):
        b = cond._fit(to_numpy(values).astype(np.float32))
        return {"tokens": tokenize_boxes(b, cond.n_classes, cond.grid)}
    ids, keep = cond.tokenizer(as_captions(values))
    return {"input_ids": ids, "attention_mask": keep.astype(np.int64)}
