"""LatentDiffusion: a frozen first-stage autoencoder, a UNet denoiser and an optional conditioner.

One class serves every task of the LDM paper, chosen by configuration, not by code paths:

=================  ======================================  ===============================
task               conditioner (cross-attention)           concat (channels into the UNet)
=================  ======================================  ===============================
unconditional      none                                    none
class-to-image     ClassEmbedder                           none
text-to-image      TextTransformer / MiniLMEncoder         none
layout-to-image    LayoutEmbedder                          none
inpainting         none                                    ``inpaint``: mask + masked-image latent
super-resolution   none                                    ``lowres``: low-res image at latent size
=================  ======================================  ===============================

Training: ``forward(batch)`` encodes ``batch['image']`` (no gradient; per-item latents cached
when ``cache_latents`` and the batch carries ``index``), scales the latent (fixed factor or
1/std of the first batch), drops the condition with probability ``cond_drop_prob`` (for
classifier-free guidance) and returns the diffusion objective. ``eval_step`` samples images
for the metrics (in the data's [-1, 1]); :meth:`generate` is the inference entry point and
returns float32 images (N, C, H, W) in [0, 1], like ``StableDiffusion.generate``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppengine.errors import ConfigError, InputError
from ppengine.io import image_grid
from ppengine.registry import MODELS, check_kwargs

from ..conditioners import CONDITIONERS
from ..diffusion import GaussianDiffusion, LatentScale, sample
from .autoencoder_trainer import build_autoencoder
from .unet import UNet

CONCAT_MODES = (None, "inpaint", "lowres")


class IdentityFirstStage(nn.Layer):
    """A pass-through "first stage" (f = 1): diffusion in pixel space (``autoencoder: {type:
    identity, in_channels: 3}``). ``encode`` / ``decode`` return their input."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.config = {"in_channels": int(in_channels), "embed_dim": int(in_channels)}
        self.downsample_factor = 1

    def encode(self, x):
        return x

    def decode(self, z):
        return z


def load_autoencoder_weights(ae: nn.Layer, path: str):
    """Load autoencoder weights from a safetensors file written by AutoencoderTrainer (keys
    ``ae.*``) or holding the bare autoencoder (keys without prefix)."""
    from ppengine.checkpoint import load_tensors, load_weights

    arrays = load_tensors(path)
    if any(k.startswith("ae.") for k in arrays):
        arrays = {k[3:]: v for k, v in arrays.items() if k.startswith("ae.")}
    load_weights(ae, arrays)


@MODELS.register()
class LatentDiffusion(nn.Layer):
    """Latent diffusion model (see the module docstring for the task table).

    Args:
        autoencoder: ``{type: kl|vq, weights: path, ...}``: the first stage (frozen). ``weights``
            is the ``final.safetensors`` / ``best.safetensors`` of an AutoencoderTrainer run; it
            may be absent when ``model.weights`` (a full LatentDiffusion checkpoint) is given.
            ``{type: identity, in_channels: 3}`` diffuses in pixel space (f = 1, no weights).
        unet: UNet arguments; ``in_channels``/``out_channels``/``concat_channels``/``context_dim``
            are filled in from the autoencoder, ``concat`` and the conditioner.
        conditioner: a conditioner config (``type: ClassEmbedder`` ...) or null.
        concat: null, ``inpaint`` or ``lowres``.
        diffusion: GaussianDiffusion arguments (T, beta schedule, prediction type, loss).
        scale_factor: latent scale; null = 1/std of the first training batch (LDM's scale_by_std).
        cond_drop_prob: probability of training a sample with the null condition.
        sampler: defaults for sampling: ``{type: ddim, steps: 50, guidance_scale: 1.0, eta: 0.0,
            paste: false}`` (``paste``: inpainting keeps the known pixels exactly).
        sample_size: side in pixels of the images the model samples when no input image fixes it
            (the training images' size; saved in the run's config.yml, so inference needs no data
            section). Default 32.
        cache_latents: cache the first stage's posterior per ``batch['index']`` (in memory), and for
            inpainting the masked image's; the images and masks of an index must not change.
        lowres_factor: super-resolution factor (HR side / ``lr`` side); default: the first stage's
            ``f`` (the low-res image then has the latent's size).
        residual: super-resolution only: diffuse the difference between the HR latent and the
            latent of the bicubic-upsampled ``lr`` (SR3 / ResShift style; with an identity first
            stage, the pixel residual over bicubic); samples are decoded from base + residual.
        grounding: text-to-image only: ``{token: w1, pixel: w2}``, the weights of the token and
            pixel grounding losses (:mod:`ppldm.models.grounding`) on the cross-attention maps of
            the caption's object phrases; the training batches then need ``phrases`` and
            ``phrase_masks`` (``ShapesWorld`` / ``ImageFolderJSONL`` with ``grounding: true``). null
            (default) or zero weights: off.
    """

    def __init__(self, autoencoder: dict, unet: dict = None, conditioner: dict = None, concat: str = None,
                 diffusion: dict = None, scale_factor: Optional[float] = None, cond_drop_prob: float = 0.1,
                 sampler: dict = None, cache_latents: bool = True, lowres_factor: Optional[int] = None,
                 residual: bool = False, grounding: dict = None, sample_size: Optional[int] = None):
        super().__init__()
        if concat not in CONCAT_MODES:
            raise ConfigError(f"model.concat must be one of {CONCAT_MODES}, got {concat!r}")
        spec = dict(autoencoder or {})
        if "kind" in spec:
            raise ConfigError("model.autoencoder.kind was renamed: use model.autoencoder.type (kl, vq or identity)")
        self.ae_kind = spec.get("type", "kl")
        weights = spec.get("weights")
        if self.ae_kind == "identity":
            unknown = set(spec) - {"type", "weights", "in_channels"}
            if unknown:
                raise ConfigError(f"model.autoencoder (type identity) takes only in_channels, got {sorted(unknown)}")
            self.ae = IdentityFirstStage(spec.get("in_channels", 3))
        else:
            self.ae = build_autoencoder(spec)
        for p in self.ae.parameters():
            p.stop_gradient = True
        self.register_buffer("ae_ready", paddle.to_tensor([1.0 if self.ae_kind == "identity" else 0.0]))
        if weights and self.ae_kind != "identity":
            if os.path.isfile(weights):
                load_autoencoder_weights(self.ae, weights)
                self.ae_ready.set_value(paddle.to_tensor([1.0]))
            elif not os.path.exists(weights):
                self._missing_ae = weights
        self.image_channels = self.ae.config["in_channels"]
        self.latent_channels = (self.ae.config["latent_channels"] if self.ae_kind == "kl"
                                else self.ae.config["embed_dim"])
        self.f = self.ae.downsample_factor

        if residual and concat != "lowres":
            raise ConfigError("model.residual is for super-resolution (concat: lowres) only")
        self.residual = bool(residual)
        self.lowres_factor = int(lowres_factor) if lowres_factor else self.f
        if self.lowres_factor < 1:
            raise ConfigError(f"model.lowres_factor must be >= 1, got {lowres_factor}")
        self.conditioner = CONDITIONERS.build(conditioner, "model.conditioner") if conditioner else None
        self.concat = concat
        ucfg = dict(unet or {})
        for k in ("in_channels", "out_channels", "concat_channels", "context_dim"):
            ucfg.pop(k, None)
        concat_ch = {None: 0, "inpaint": self.latent_channels + 1, "lowres": self.image_channels}[concat]
        ucfg.update(in_channels=self.latent_channels, out_channels=self.latent_channels,
                    concat_channels=concat_ch,
                    context_dim=self.conditioner.out_dim if self.conditioner is not None else None)
        check_kwargs(UNet, ucfg, "model.unet", what="UNet")
        self.unet = UNet(**ucfg)
        dcfg = dict(diffusion or {})
        check_kwargs(GaussianDiffusion, dcfg, "model.diffusion", what="diffusion")
        self.diffusion = GaussianDiffusion(**dcfg)
        self.scale = LatentScale(scale_factor if scale_factor is not None else 1.0, scale_by_std=scale_factor is None)
        if not 0.0 <= float(cond_drop_prob) <= 1.0:
            raise ConfigError(f"model.cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
        self.cond_drop_prob = float(cond_drop_prob)
        self.sample_size = int(sample_size or 32)
        if sample_size and self.sample_size % (self.f * self.unet.downsample_factor):
            raise ConfigError(f"model.sample_size {sample_size} must be divisible by "
                              f"{self.f * self.unet.downsample_factor} (first stage x UNet downsampling)")
        self.sampler_cfg = {"type": "ddim", "steps": 50, "guidance_scale": 1.0, "eta": 0.0, "paste": False}
        if "name" in (sampler or {}):
            raise ConfigError("model.sampler.name was renamed: use model.sampler.type (ddim, ddpm, dpm_solver++, ...)")
        unknown = set(sampler or {}) - set(self.sampler_cfg)
        if unknown:
            raise ConfigError(f"model.sampler: unknown key(s) {sorted(unknown)}; valid: {sorted(self.sampler_cfg)}")
        self.sampler_cfg.update(sampler or {})
        self.cache_latents = bool(cache_latents)
        self.grounding = {"token": 0.0, "pixel": 0.0}
        unknown = set(grounding or {}) - set(self.grounding)
        if unknown:
            raise ConfigError(f"model.grounding: unknown key(s) {sorted(unknown)}; valid: token, pixel (loss weights)")
        self.grounding.update({k: float(v) for k, v in (grounding or {}).items()})
        if min(self.grounding.values()) < 0:
            raise ConfigError(f"model.grounding: the loss weights must be >= 0, got {grounding}")
        if any(self.grounding.values()) and not hasattr(self.conditioner, "tokenizer"):
            raise ConfigError("model.grounding needs a text conditioner (TextTransformer or MiniLMEncoder), "
                              f"got {type(self.conditioner).__name__ if self.conditioner is not None else None}")
        self._latent_cache: Dict[int, np.ndarray] = {}
        self._masked_cache: Dict[int, np.ndarray] = {}  # inpainting: moments of the masked images
        self._eval_calls = 0

    # ------------------------------------------------------------------ first stage
    def _check_ready(self):
        if float(self.ae_ready) == 0.0:
            where = getattr(self, "_missing_ae", None)
            raise InputError(
                "LatentDiffusion: the autoencoder has no trained weights"
                + (f" ({where!r} does not exist)" if where else "")
                + ". Train the first stage (python tools/train.py -c configs/ldm/ae_<data>.yml) and set "
                  "model.autoencoder.weights to its final.safetensors, or give model.weights of a trained LDM.")

    @paddle.no_grad()
    def _moments(self, images: paddle.Tensor) -> paddle.Tensor:
        """Images (B, C, H, W) -> first-stage moments: KL (B, 2c, h, w) mean+logvar; VQ (B, c, h, w)."""
        if self.ae_kind == "kl":
            post = self.ae.encode(images)
            return paddle.concat([post.mean, post.logvar], axis=1)
        return self.ae.encode(images)

    def _latent_from_moments(self, m: paddle.Tensor, sample_posterior: bool) -> paddle.Tensor:
        if self.ae_kind != "kl":
            return m
        mean, logvar = paddle.chunk(m, 2, axis=1)
        if not sample_posterior:
            return mean
        return mean + paddle.exp(0.5 * logvar) * paddle.randn(mean.shape, dtype=mean.dtype)

    @paddle.no_grad()
    def encode(self, images: paddle.Tensor, index=None, sample_posterior: bool = False) -> paddle.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, c, H/f, W/f)."""
        self._check_ready()
        return self._latent_from_moments(self._cached_moments(images, index, self._latent_cache), sample_posterior)

    def _cached_moments(self, images: paddle.Tensor, index, cache: Dict[int, np.ndarray]) -> paddle.Tensor:
        """First-stage moments of ``images``, kept in ``cache`` by dataset index when
        ``cache_latents`` is on (the images of an index must not change between epochs)."""
        if index is None or not self.cache_latents:
            return self._moments(images)
        idx = [int(i) for i in np.asarray(index.numpy() if hasattr(index, "numpy") else index).reshape(-1)]
        todo = [j for j, i in enumerate(idx) if i not in cache]
        if todo:
            m = self._moments(paddle.gather(images, paddle.to_tensor(todo))).numpy()
            for j, mm in zip(todo, m):
                cache[idx[j]] = mm
        return paddle.to_tensor(np.stack([cache[i] for i in idx]))

    @paddle.no_grad()
    def decode(self, z: paddle.Tensor, base: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """Scaled latents (B, c, h, w) -> images (B, C, h*f, w*f) in [-1, 1] (clipped). ``base``: the
        unscaled latent the (residual) sample is added to."""
        z = self.scale.unscale(z)
        if base is not None:
            z = z + base
        return self.ae.decode(z).clip(-1.0, 1.0)

    def lowres_base(self, batch, size: int) -> paddle.Tensor:
        """Residual super-resolution: the unscaled first-stage latent (B, c, size/f, size/f) of
        ``batch['lr']`` bicubic-upsampled to ``size`` pixels, the base the diffused residual is
        added to (``decode(z, base)``)."""
        lr = batch["lr"].astype("float32")
        up = F.interpolate(lr, size=[size, size], mode="bicubic", align_corners=False).clip(-1.0, 1.0)
        return self._latent_from_moments(self._moments(up), False)

    # ------------------------------------------------------------------ conditioning
    def _cond(self, batch, b: int, drop: Optional[np.ndarray] = None, null: bool = False) -> dict:
        kw = {}
        if self.conditioner is not None:
            key = self.conditioner.key
            if null:
                values = self.conditioner.null(b)
            else:
                if key not in batch:
                    raise InputError(f"this model is conditioned on {key!r}, which the batch lacks "
                                     f"(keys: {', '.join(batch)})")
                values = batch[key]
            kw["context"] = self.conditioner(values, drop=drop)
        return kw

    def concat_input(self, batch, h: int, w: int) -> Optional[paddle.Tensor]:
        """The channels concatenated to the UNet's input at latent size ``h`` x ``w``, or None:
        inpainting: the mask pooled to (B, 1, h, w) + the scaled latent of ``batch['masked_image']``;
        super-resolution: ``batch['lr']`` (B, C, h, w) (resized when its size differs)."""
        if self.concat is None:
            return None
        if self.concat == "inpaint":
            for k in ("mask", "masked_image"):
                if k not in batch:
                    raise InputError(f"inpainting needs batch[{k!r}] (keys: {', '.join(batch)})")
            mask = batch["mask"].astype("float32")
            m_lat = F.adaptive_avg_pool2d(mask, [h, w])
            # training batches carry their dataset index: the masked image's moments are cached like
            # the image's (a dataset's mask is fixed per index); sampling always encodes
            index = batch.get("index") if self.training else None
            moments = self._cached_moments(batch["masked_image"], index, self._masked_cache)
            masked = self.scale.scale(self._latent_from_moments(moments, False))
            return paddle.concat([m_lat, masked], axis=1)
        if "lr" not in batch:
            raise InputError(f"super-resolution needs batch['lr'], the low-resolution image (keys: {', '.join(batch)})")
        lr = batch["lr"].astype("float32")
        if list(lr.shape[2:]) != [h, w]:
            lr = F.interpolate(lr, size=[h, w], mode="bilinear", align_corners=False)
        return lr

    # ------------------------------------------------------------------ engine contract
    def forward(self, batch):
        x = batch["image"]
        z = self.encode(x, batch.get("index"), sample_posterior=True)
        if self.residual:
            if "lr" not in batch:
                raise InputError(f"super-resolution needs batch['lr'] (keys: {', '.join(batch)})")
            z = z - self.lowres_base(batch, int(x.shape[-1]))
        if self.training:
            self.scale.fit(z)
        z = self.scale.scale(z)
        b, _, h, w = z.shape
        drop = None
        if self.conditioner is not None and self.training and self.cond_drop_prob > 0:
            drop = np.random.rand(b) < self.cond_drop_prob
        kw = self._cond(batch, b, drop)
        cat = self.concat_input(batch, h, w)
        if cat is not None:
            kw["concat"] = cat
        if not (self.training and any(self.grounding.values())):
            return self.diffusion.training_losses(self.unet, z, **kw)
        return self._grounded_losses(batch, z, kw, drop)

    def _grounded_losses(self, batch, z, kw, drop):
        """The diffusion loss plus the weighted token and pixel grounding losses."""
        from .grounding import grounding_loss, grounding_pixel_loss, keep_cross_attention, phrase_token_mask

        for k in ("phrases", "phrase_masks"):
            if k not in batch:
                raise InputError(f"model.grounding needs batch[{k!r}] (keys: {', '.join(batch)}); "
                                 "use a dataset that provides them, e.g. ShapesWorld with grounding: true")
        masks = batch["phrase_masks"].astype("float32")
        tokens = phrase_token_mask(self.conditioner.tokenizer, batch[self.conditioner.key], batch["phrases"],
                                   int(masks.shape[1]))
        if drop is not None:
            tokens[np.asarray(drop, bool)] = 0.0
        tokens = paddle.to_tensor(tokens)
        with keep_cross_attention(self.unet) as layers:
            out = self.diffusion.training_losses(self.unet, z, **kw)
            probs = [layer.probs for layer in layers]
            if not probs or any(p is None for p in probs):
                raise ConfigError("model.grounding needs the UNet's cross-attention maps: train with "
                                  "model.unet.attention_type: standard and a text conditioner (context_dim set)")
            out["diffusion_loss"] = out["loss"]
            for name, fn in (("token", grounding_loss), ("pixel", grounding_pixel_loss)):
                if self.grounding[name] > 0:
                    out[f"grounding_{name}"] = fn(probs, tokens, masks)
                    out["loss"] = out["loss"] + self.grounding[name] * out[f"grounding_{name}"]
        return out

    def losses(self, batch, outputs):
        extra = {k: outputs[k] for k in ("diffusion_loss", "grounding_token", "grounding_pixel") if k in outputs}
        return {"loss": outputs["loss"], **extra}

    @paddle.no_grad()
    def generate(self, batch: dict = None, n: int = None, size: int = None, guidance_scale: float = None,
                 steps: int = None, seed: int = 0, sampler: str = None, paste: bool = None,
                 progress: bool = False) -> paddle.Tensor:
        """Sample images: float32 (B, C, H, W) in [0, 1] (write them with ``ppengine.io.to_uint8``).

        ``batch`` holds the conditioning (``label`` / ``caption`` / ``boxes`` / ``mask`` +
        ``image`` or ``masked_image`` / ``lr``, inputs in [-1, 1] like the training data); B is
        taken from it, or from ``n`` for unconditional models. ``size``: image side (default: from
        ``batch``'s image, mask or lr, else ``sample_size``). Other arguments default to
        ``model.sampler``.
        """
        x = self.sample(batch, n=n, size=size, guidance_scale=guidance_scale, steps=steps, seed=seed,
                        sampler=sampler, paste=paste, progress=progress)
        return ((x + 1.0) * 0.5).clip(0.0, 1.0).astype("float32")

    @paddle.no_grad()
    def sample(self, batch: dict = None, n: int = None, size: int = None, guidance_scale: float = None,
               steps: int = None, seed: int = 0, sampler: str = None, paste: bool = None,
               progress: bool = False) -> paddle.Tensor:
        """As :meth:`generate`, in the data's range: images (B, C, H, W) in [-1, 1]."""
        self._check_ready()
        sc = dict(self.sampler_cfg)
        g = float(sc["guidance_scale"] if guidance_scale is None else guidance_scale)
        steps = int(sc["steps"] if steps is None else steps)
        paste = bool(sc["paste"] if paste is None else paste)
        batch = dict(batch or {})
        if self.concat == "inpaint" and "masked_image" not in batch and "image" in batch and "mask" in batch:
            batch["masked_image"] = batch["image"] * (1 - batch["mask"])
        b = self._batch_size(batch, n)
        if size is None:
            size = self._image_size(batch)
        if size % (self.f * self.unet.downsample_factor):
            raise InputError(f"image size {size} must be divisible by {self.f * self.unet.downsample_factor} for this model")
        h = w = size // self.f
        cond = self._cond(batch, b)
        cat = self.concat_input(batch, h, w)
        if cat is not None:
            cond["concat"] = cat
        uncond = self._cond(batch, b, null=True) if (self.conditioner is not None and g != 1.0) else None
        name = sampler or sc["type"]
        sched = self.diffusion.scheduler(name)
        kwargs = {"eta": float(sc["eta"])} if name == "ddim" else {}
        was_training = self.training
        self.eval()
        z = sample(self.unet, sched, [b, self.latent_channels, h, w], cond=cond, uncond=uncond, guidance_scale=g,
                   num_inference_steps=steps, seed=seed, progress=progress, **kwargs)
        if was_training:
            self.train()
        x = self.decode(z, self.lowres_base(batch, size) if self.residual else None)
        if self.concat == "inpaint" and paste:
            m = batch["mask"].astype(x.dtype)
            known = batch["image"] if "image" in batch else batch["masked_image"]
            x = m * x + (1 - m) * known.astype(x.dtype)
        return x

    def _batch_size(self, batch, n):
        for k in ("label", "caption", "boxes", "mask", "lr", "image"):
            if k in batch:
                v = batch[k]
                return len(v) if isinstance(v, (list, tuple)) else int(v.shape[0])
        if n is None:
            raise InputError("generate: give a batch with the conditioning, or n for an unconditional model")
        return int(n)

    def _image_size(self, batch):
        for k in ("image", "masked_image", "mask"):
            if k in batch:
                return int(batch[k].shape[-1])
        if "lr" in batch:
            return int(batch["lr"].shape[-1]) * (self.lowres_factor if self.concat == "lowres" else 1)
        return self.sample_size

    def eval_step(self, batch):
        """Samples conditioned like the batch (``outputs['samples']``, (B, C, H, W) in [-1, 1])."""
        self._eval_calls += 1
        cond_batch = {k: v for k, v in batch.items() if k != "image" or self.concat is not None}
        size = int(batch["image"].shape[-1])
        x = self.sample(cond_batch, size=size, seed=1000 + self._eval_calls)
        return {"samples": x}

    def visuals(self, batch, outputs):
        return {"samples": image_grid(outputs["samples"][:16], nrow=8, upscale=2, value_range=(-1, 1))}
