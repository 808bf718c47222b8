"""Training wrapper for the first stage: an autoencoder (KL or VQ) with reconstruction, a
perceptual-style loss and an optional patch discriminator (as latent-diffusion's
``LPIPSWithDiscriminator`` / ``VQLPIPSWithDiscriminator``).

Offline there are no ImageNet-pretrained VGG weights for LPIPS, so the perceptual-style loss
compares unit-normalised activations of a *fixed, randomly initialised* convolutional feature
network (seeded, never trained) at three scales, plus image gradients: it rewards matching local
structure and edges rather than only pixel values.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppengine.errors import ConfigError
from ppengine.io import image_grid
from ppengine.registry import MODELS

from .autoencoder_kl import AutoencoderKL
from .vq import VQModel

AUTOENCODERS = {"kl": AutoencoderKL, "vq": VQModel}


def build_autoencoder(spec: dict) -> nn.Layer:
    """``{type: kl|vq, ...constructor args}`` -> AutoencoderKL / VQModel (``weights`` is ignored here)."""
    spec = dict(spec or {})
    spec.pop("weights", None)
    if "kind" in spec:
        raise ConfigError("model.autoencoder.kind was renamed: use model.autoencoder.type (kl or vq)")
    kind = spec.pop("type", "kl")
    if kind not in AUTOENCODERS:
        raise ConfigError(f"model.autoencoder.type must be one of {list(AUTOENCODERS)}, got {kind!r}")
    from ppengine.registry import check_kwargs

    check_kwargs(AUTOENCODERS[kind], spec, "model.autoencoder", what=f"autoencoder {kind!r}")
    return AUTOENCODERS[kind](**spec)


class RandomFeaturePerceptual(nn.Layer):
    """Perceptual-style distance: images (B, C, H, W) in [-1, 1] -> (B,) distance.

    Three fixed random conv stages (stride 1, 2, 2; widths 32, 64, 64) with LeakyReLU; at each
    the features are normalised over channels and the squared difference is averaged, as in LPIPS
    without learned channel weights; plus the L1 difference of horizontal/vertical image gradients.
    """

    def __init__(self, in_channels: int = 3, seed: int = 1234):
        super().__init__()
        rng = np.random.default_rng(seed)
        chans = [in_channels, 32, 64, 64]
        self.convs = nn.LayerList()
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            conv = nn.Conv2D(a, b, 3, stride=1 if i == 0 else 2, padding=1)
            w = rng.normal(0, np.sqrt(2.0 / (a * 9)), size=(b, a, 3, 3)).astype("float32")
            conv.weight.set_value(w)
            conv.bias.set_value(np.zeros(b, "float32"))
            conv.weight.stop_gradient = True
            conv.bias.stop_gradient = True
            self.convs.append(conv)

    def forward(self, x, y):
        d = 0.0
        hx, hy = x, y
        for conv in self.convs:
            hx, hy = F.leaky_relu(conv(hx), 0.2), F.leaky_relu(conv(hy), 0.2)
            nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-6)
            ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-6)
            d = d + (nx - ny).pow(2).sum(1).mean([1, 2])
        gx = lambda t: t[:, :, :, 1:] - t[:, :, :, :-1]  # noqa: E731
        gy = lambda t: t[:, :, 1:, :] - t[:, :, :-1, :]  # noqa: E731
        d = d + (gx(x) - gx(y)).abs().mean([1, 2, 3]) + (gy(x) - gy(y)).abs().mean([1, 2, 3])
        return d


class PatchDiscriminator(nn.Layer):
    """PatchGAN discriminator: (B, C, H, W) -> (B, 1, H', W') real/fake logits per patch.

    ``layers`` stride-2 4x4 convolutions (widths ``channels * 2**i``, capped at 8x) with GroupNorm
    and LeakyReLU, then a stride-1 4x4 conv to one channel.
    """

    def __init__(self, in_channels: int = 3, channels: int = 32, layers: int = 2):
        super().__init__()
        mods = [nn.Conv2D(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers):
            nc = channels * min(2 ** i, 8)
            mods += [nn.Conv2D(c, nc, 4, 2, 1), nn.GroupNorm(min(8, nc), nc), nn.LeakyReLU(0.2)]
            c = nc
        mods += [nn.Conv2D(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


@MODELS.register()
class AutoencoderTrainer(nn.Layer):
    """First-stage training: ``batch['image']`` (B, C, H, W) in [-1, 1].

    Loss of the autoencoder step: ``L1(x, x̂) + perceptual_weight * perceptual(x, x̂)
    + kl_weight * KL`` (KL kind) or ``+ vq_weight * codebook/commitment`` (VQ kind), and from
    ``disc_start`` on ``+ adaptive_weight * disc_weight * (-D(x̂))`` (LDM's adaptive weight: the
    ratio of the reconstruction and GAN gradient norms at the decoder's last layer).
    Discriminator step (hinge loss) when ``disc`` is set. Optimizers: ``ae`` (params: ae) and,
    with a discriminator, ``disc`` (params: disc).

    Args:
        autoencoder: ``{type: kl|vq, ...}`` constructor arguments of AutoencoderKL / VQModel.
        kl_weight, vq_weight, perceptual_weight: loss weights.
        disc: null (no GAN) or ``{start: step, weight: 0.5, channels: 32, layers: 2}``.
    """

    def __init__(self, autoencoder: dict = None, kl_weight: float = 1e-6, vq_weight: float = 1.0,
                 perceptual_weight: float = 0.5, disc: dict = None):
        super().__init__()
        self.spec = dict(autoencoder or {"type": "kl"})
        self.kind = self.spec.get("type", "kl")
        self.ae = build_autoencoder(self.spec)
        in_ch = self.ae.config["in_channels"]
        self.kl_weight, self.vq_weight, self.perceptual_weight = float(kl_weight), float(vq_weight), float(perceptual_weight)
        self.perceptual = RandomFeaturePerceptual(in_ch) if self.perceptual_weight > 0 else None
        self.disc_cfg = None
        self.disc = None
        if disc:
            dc = {"start": 0, "weight": 0.5, "channels": 32, "layers": 2}
            unknown = set(disc) - set(dc)
            if unknown:
                raise ConfigError(f"model.disc: unknown key(s) {sorted(unknown)}; valid: {sorted(dc)}")
            dc.update(disc)
            self.disc_cfg = dc
            self.disc = PatchDiscriminator(in_ch, int(dc["channels"]), int(dc["layers"]))

    # ------------------------------------------------------------------ engine contract
    def param_groups(self) -> Dict[str, list]:
        groups = {"ae": [p for p in self.ae.parameters() if not p.stop_gradient]}
        if self.disc is not None:
            groups["disc"] = list(self.disc.parameters())
        return groups

    def forward(self, batch):
        x = batch["image"]
        if self.kind == "kl":
            rec, post = self.ae(x, sample_posterior=self.training)
            return {"samples": rec, "reg": post.kl().mean()}
        rec, vq_loss, info = self.ae(x)
        return {"samples": rec, "reg": vq_loss}

    def _rec_losses(self, x, out):
        rec = out["samples"]
        l1 = (x - rec).abs().mean()
        logs = {"l1": l1}
        total = l1
        if self.perceptual is not None:
            p = self.perceptual(x, rec).mean()
            logs["perceptual"] = p
            total = total + self.perceptual_weight * p
        w = self.kl_weight if self.kind == "kl" else self.vq_weight
        logs["kl" if self.kind == "kl" else "vq"] = out["reg"]
        total = total + w * out["reg"]
        return total, logs

    def losses(self, batch, outputs):
        total, logs = self._rec_losses(batch["image"], outputs)
        return {"loss": total, **logs}

    def _last_layer(self):
        return self.ae.decoder.conv_out.weight

    def train_step(self, batch, optimizers, step):
        if "ae" not in optimizers and "default" not in optimizers:
            raise ConfigError("AutoencoderTrainer needs an optimizer named 'ae' (optimizer: {ae: {type: Adam, "
                              "lr: 1e-4, params: ae}, disc: {...}}) or a single optimizer")
        opt_ae = optimizers.get("ae", optimizers.get("default"))
        x = batch["image"]
        out = self.forward(batch)
        rec_total, logs = self._rec_losses(x, out)
        total = rec_total
        gan_on = self.disc is not None and step >= int(self.disc_cfg["start"])
        if gan_on:
            if "disc" not in optimizers:
                raise ConfigError("model.disc is set: add an optimizer named 'disc' with params: disc")
            g_loss = -self.disc(out["samples"]).mean()
            try:
                last = self._last_layer()
                gr = paddle.grad([rec_total], [last], retain_graph=True)[0]
                gg = paddle.grad([g_loss], [last], retain_graph=True)[0]
                d_weight = (gr.norm() / (gg.norm() + 1e-4)).clip(0.0, 1e4).detach()
            except Exception:  # noqa: BLE001 - fall back to a fixed weight
                d_weight = paddle.to_tensor(1.0)
            d_weight = d_weight * float(self.disc_cfg["weight"])
            total = total + d_weight * g_loss
            logs["g_loss"], logs["d_weight"] = g_loss, d_weight
        total.backward()
        opt_ae.step()
        opt_ae.clear_grad()
        if gan_on:
            opt_d = optimizers["disc"]
            opt_d.clear_grad()  # drop the generator step's gradients in D
            real = self.disc(x.detach())
            fake = self.disc(out["samples"].detach())
            d_loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
            d_loss.backward()
            opt_d.step()
            opt_d.clear_grad()
            logs["d_loss"] = d_loss
        logs["loss"] = total
        return {k: (v.detach() if isinstance(v, paddle.Tensor) else v) for k, v in logs.items()}

    @paddle.no_grad()
    def eval_step(self, batch):
        x = batch["image"]
        if self.kind == "kl":
            rec = self.ae.decode(self.ae.encode(x).mode())
        else:
            rec = self.ae(x)[0]
        return {"samples": rec}

    def visuals(self, batch, outputs):
        x = batch["image"][:8].numpy()
        r = outputs["samples"][:8].numpy()
        return {"reconstruction": image_grid(np.concatenate([x, r]), nrow=len(x), value_range=(-1, 1))}
