"""Optimizers and learning-rate schedules, registered for configs.

An optimizer entry is ``{type: Adam, lr: 1e-3, weight_decay: 0.0, ...}``; the engine passes
``parameters``, the LR schedule and the gradient clip. An LR schedule is a function of the
step only (``last_epoch``), so resuming restores it exactly.
"""
from __future__ import annotations

import math

import paddle

from .registry import LR_SCHEDULERS, OPTIMIZERS


# ----------------------------------------------------------------------------- optimizers
@OPTIMIZERS.register()
def Adam(parameters, learning_rate, grad_clip=None, lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8,
         weight_decay=0.0):
    return paddle.optimizer.Adam(learning_rate=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon,
                                 parameters=parameters, weight_decay=weight_decay or None, grad_clip=grad_clip)


@OPTIMIZERS.register()
def AdamW(parameters, learning_rate, grad_clip=None, lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8,
          weight_decay=0.01):
    return paddle.optimizer.AdamW(learning_rate=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon,
                                  parameters=parameters, weight_decay=weight_decay, grad_clip=grad_clip)


@OPTIMIZERS.register()
def SGD(parameters, learning_rate, grad_clip=None, lr=1e-2, momentum=0.0, weight_decay=0.0, nesterov=False):
    if momentum:
        return paddle.optimizer.Momentum(learning_rate=learning_rate, momentum=momentum, parameters=parameters,
                                         use_nesterov=nesterov, weight_decay=weight_decay or None,
                                         grad_clip=grad_clip)
    return paddle.optimizer.SGD(learning_rate=learning_rate, parameters=parameters,
                                weight_decay=weight_decay or None, grad_clip=grad_clip)


# ----------------------------------------------------------------------------- LR schedules
class StepFunctionLR(paddle.optimizer.lr.LRScheduler):
    """``lr(step) = base_lr * warmup(step) * factor(step)``; state is the step alone."""

    def __init__(self, base_lr: float, factor, warmup_iters: int = 0, warmup_start: float = 0.0):
        self.factor = factor
        self.warmup_iters = int(warmup_iters or 0)
        self.warmup_start = float(warmup_start)
        super().__init__(learning_rate=float(base_lr), last_epoch=-1, verbose=False)

    def get_lr(self):
        s = max(self.last_epoch, 0)
        f = self.factor(s)
        if self.warmup_iters and s < self.warmup_iters:
            w = self.warmup_start + (1.0 - self.warmup_start) * (s + 1) / self.warmup_iters
            f = f * w
        return self.base_lr * f


@LR_SCHEDULERS.register()
def Constant(base_lr, max_iters, warmup_iters=0, warmup_start=0.0):
    return StepFunctionLR(base_lr, lambda s: 1.0, warmup_iters, warmup_start)


@LR_SCHEDULERS.register()
def Cosine(base_lr, max_iters, warmup_iters=0, warmup_start=0.0, min_lr=0.0):
    span = max(1, max_iters - warmup_iters)
    ratio = min_lr / base_lr if base_lr else 0.0

    def f(s):
        t = min(1.0, max(0.0, (s - warmup_iters) / span))
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return StepFunctionLR(base_lr, f, warmup_iters, warmup_start)


@LR_SCHEDULERS.register()
def Step(base_lr, max_iters, milestones=(), gamma=0.1, warmup_iters=0, warmup_start=0.0):
    ms = sorted(int(m) for m in milestones)
    return StepFunctionLR(base_lr, lambda s: gamma ** sum(s >= m for m in ms), warmup_iters, warmup_start)


@LR_SCHEDULERS.register()
def Linear(base_lr, max_iters, warmup_iters=0, warmup_start=0.0, end_factor=0.0):
    span = max(1, max_iters - warmup_iters)

    def f(s):
        t = min(1.0, max(0.0, (s - warmup_iters) / span))
        return 1.0 + (end_factor - 1.0) * t

    return StepFunctionLR(base_lr, f, warmup_iters, warmup_start)
