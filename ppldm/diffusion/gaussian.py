"""The diffusion training objective (eps, v or x0 prediction) and classifier-free-guidance
condition dropout.

The noise schedule (betas, cumulative alphas) comes from ppdiffusers' DDPMScheduler, so
training and sampling use one definition of it.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import paddle

from ppengine.errors import ConfigError, InputError

from .schedulers import beta_schedule_name, prediction_type_name


class GaussianDiffusion:
    """Forward process q(x_t | x_0) and the denoising loss.

    Args:
        num_train_timesteps: T.
        beta_schedule: ``linear`` | ``scaled_linear`` | ``cosine``.
        beta_start, beta_end: first and last beta of the (scaled) linear schedules.
        prediction_type: what the network predicts: ``eps`` (noise), ``v`` (velocity
            sqrt(abar) * eps - sqrt(1 - abar) * x0) or ``x0``.
        loss_type: ``l2`` (mean squared error) or ``l1``.

    ``alphas_cumprod`` is a (T,) float32 tensor.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "scaled_linear",
                 beta_start: float = 0.00085, beta_end: float = 0.012, prediction_type: str = "eps",
                 loss_type: str = "l2"):
        from ppdiffusers import DDPMScheduler

        if loss_type not in ("l2", "l1"):
            raise ConfigError(f"loss_type must be 'l2' or 'l1', got {loss_type!r}")
        self.prediction_type = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[
            prediction_type_name(prediction_type)]
        self.loss_type = loss_type
        self.num_train_timesteps = num_train_timesteps
        self.config = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                           beta_start=beta_start, beta_end=beta_end, prediction_type=self.prediction_type)
        sched = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                              beta_schedule=beta_schedule_name(beta_schedule))
        self.betas = sched.betas.astype("float32")
        self.alphas_cumprod = sched.alphas_cumprod.astype("float32")

    def scheduler(self, name: str = "ddim", **kwargs):
        """A ppdiffusers sampler for this diffusion (see :func:`ppldm.diffusion.make_scheduler`)."""
        from .schedulers import make_scheduler

        return make_scheduler(name, **self.config, **kwargs)

    def _coef(self, t):
        abar = paddle.gather(self.alphas_cumprod, t.astype("int64")).reshape([-1, 1, 1, 1])
        return abar.sqrt(), (1.0 - abar).sqrt()

    def sample_timesteps(self, batch_size: int) -> paddle.Tensor:
        """(B,) int64 timesteps uniform in [0, T)."""
        return paddle.randint(0, self.num_train_timesteps, [batch_size], dtype="int64")

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0, noise (B, ...), t (B,) -> (B, ...)."""
        a, s = self._coef(t)
        return a * x0 + s * noise

    def target(self, x0, noise, t):
        """The regression target for ``prediction_type``. Shapes as :meth:`q_sample`."""
        if self.prediction_type == "eps":
            return noise
        if self.prediction_type == "x0":
            return x0
        a, s = self._coef(t)
        return a * noise - s * x0

    def predict_x0(self, x_t, t, model_output):
        """x0 implied by a model output (any prediction type)."""
        a, s = self._coef(t)
        if self.prediction_type == "eps":
            return (x_t - s * model_output) / a
        if self.prediction_type == "x0":
            return model_output
        return a * x_t - s * model_output

    def loss(self, model_output, x0, noise, t, weights: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """Per-sample loss (B,) between ``model_output`` and the target (mean over C, H, W)."""
        diff = model_output.astype("float32") - self.target(x0, noise, t).astype("float32")
        err = diff.abs() if self.loss_type == "l1" else diff ** 2
        per = err.reshape([err.shape[0], -1]).mean(axis=1)
        return per * weights if weights is not None else per

    def training_losses(self, model_fn: Callable, x0: paddle.Tensor, t: paddle.Tensor = None,
                        noise: paddle.Tensor = None, **model_kwargs) -> Dict[str, paddle.Tensor]:
        """One training step's loss: draw t and noise, make x_t, call ``model_fn(x_t, t, **model_kwargs)``.

        Args:
            model_fn: e.g. a :class:`ppldm.models.UNet` (called as model_fn(x_t, t, context=...)).
            x0: (B, C, H, W) clean (latent) samples.
        Returns:
            dict with ``loss`` (scalar), ``loss_per_sample`` (B,), ``t``, ``x_t``, ``noise``,
            ``model_output``.
        """
        if x0.ndim < 2:
            raise InputError(f"training_losses: x0 must be batched (B, ...), got {list(x0.shape)}")
        if t is None:
            t = self.sample_timesteps(x0.shape[0])
        if noise is None:
            noise = paddle.randn(x0.shape, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, t, **model_kwargs)
        per = self.loss(out, x0, noise, t)
        return {"loss": per.mean(), "loss_per_sample": per, "t": t, "x_t": x_t, "noise": noise,
                "model_output": out}


def drop_condition(cond: paddle.Tensor, null_cond, p: float, keep: paddle.Tensor = None) -> paddle.Tensor:
    """Classifier-free-guidance training: replace each sample's condition by ``null_cond`` with
    probability ``p``.

    Args:
        cond: (B, ...) condition (context embeddings (B, M, D), class labels (B,), ...).
        null_cond: the unconditional value, broadcastable to one sample: a tensor (..., same
            trailing shape) or a number (e.g. the null class index).
        p: drop probability in [0, 1].
        keep: optional (B,) bool mask (True = keep); drawn when None.
    Returns:
        (B, ...) with dropped samples replaced.
    """
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"condition drop probability must be in [0, 1], got {p}")
    b = cond.shape[0]
    if keep is None:
        if p == 0.0:
            return cond
        keep = paddle.rand([b]) >= p
    if not isinstance(null_cond, paddle.Tensor):
        null_cond = paddle.full([1] * cond.ndim, null_cond, dtype=cond.dtype)
    null_cond = paddle.broadcast_to(null_cond.astype(cond.dtype), cond.shape)
    mask = keep.reshape([b] + [1] * (cond.ndim - 1))
    return paddle.where(paddle.broadcast_to(mask, cond.shape), cond, null_cond)

