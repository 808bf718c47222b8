"""Sampling loop over a ppdiffusers scheduler, with classifier-free guidance and a progress bar."""
from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import paddle
from tqdm.auto import tqdm

from ppengine.errors import InputError


def _cat(a, b):
    if isinstance(a, paddle.Tensor):
        return paddle.concat([a, b.astype(a.dtype)], axis=0)
    return a


@paddle.no_grad()
def sample(model: Callable, scheduler, shape: Sequence[int], cond: Optional[Dict] = None,
           uncond: Optional[Dict] = None, guidance_scale: float = 1.0, num_inference_steps: int = 50,
           seed: Optional[int] = None, latents: Optional[paddle.Tensor] = None, progress: bool = True,
           generator=None, **step_kwargs) -> paddle.Tensor:
    """Run a reverse diffusion from noise to a sample.

    Args:
        model: denoiser called as ``model(x_t, t, **cond)`` -> (B, C, H, W), e.g. a
            :class:`ppldm.models.UNet` with ``cond = {"context": ..., "class_labels": ...}``.
        scheduler: a ppdiffusers scheduler (see :func:`ppldm.diffusion.make_scheduler`).
        shape: (B, C, H, W) of the sample.
        cond: keyword conditioning for the model (tensors with batch B).
        uncond: the unconditional counterparts for classifier-free guidance (same keys; a key
            missing here is taken from ``cond``, e.g. a ``concat`` image).
        guidance_scale: w in eps = eps_u + w (eps_c - eps_u); 1 (or no ``uncond``) = no guidance.
        num_inference_steps: sampler steps.
        seed: seeds the initial noise (numpy, so it does not depend on Paddle's global RNG).
        latents: initial x_T instead of drawing it (not scaled by ``init_noise_sigma``).
        generator: paddle.Generator for stochastic samplers (DDPM, euler_a, DDIM with eta > 0).
        step_kwargs: passed to ``scheduler.step`` (e.g. ``eta=0.0`` for DDIM).
    Returns:
        (B, C, H, W) float32 sample (still in the model's, i.e. scaled latent, space).
    """
    cond = dict(cond or {})
    shape = list(shape)
    if len(shape) != 4:
        raise InputError(f"sample: shape must be (B, C, H, W), got {shape}")
    guided = uncond is not None and guidance_scale != 1.0
    if guided:
        full = dict(cond)
        for k, v in uncond.items():
            full[k] = v
        both = {k: _cat(full[k], cond[k]) if k in cond else v for k, v in full.items()}
    scheduler.set_timesteps(num_inference_steps)
    if latents is None:
        rng = np.random.RandomState(seed)
        x = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
        x = x * float(scheduler.init_noise_sigma)
    else:
        x = latents.astype("float32")
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator
    timesteps = scheduler.timesteps
    for t in tqdm(timesteps, desc="sampling", disable=not progress, leave=False):
        x_in = scheduler.scale_model_input(x, t)
        tb = paddle.full([shape[0] * (2 if guided else 1)], float(t), dtype="float32")
        if guided:
            out = model(paddle.concat([x_in, x_in], axis=0), tb, **both)
            out_u, out_c = paddle.chunk(out, 2, axis=0)
            out = out_u + guidance_scale * (out_c - out_u)
        else:
            out = model(x_in, tb, **cond)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x
