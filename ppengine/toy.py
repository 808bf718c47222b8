"""A tiny registered model, dataset, metric and callback that exercise the whole engine.

Used by the engine's tests and by ``configs/toy.yml``: a noisy linear-regression problem
with a dropout MLP (so RNG matters for exact resume).
"""
from __future__ import annotations

import json
import os

import numpy as np
import paddle

from .registry import CALLBACKS, DATASETS, METRICS, MODELS


@DATASETS.register()
class ToyRegression(paddle.io.Dataset):
    """``n`` samples ``x ~ N(0, 1)^dim``, ``y = x @ w_true + noise`` (deterministic by ``seed``)."""

    def __init__(self, n: int = 256, dim: int = 8, noise: float = 0.05, seed: int = 0, corrupt_at: int = -1):
        rng = np.random.RandomState(seed)
        w = np.random.RandomState(1234).randn(dim, 1).astype(np.float32)
        self.x = rng.randn(n, dim).astype(np.float32)
        self.y = (self.x @ w + noise * rng.randn(n, 1)).astype(np.float32)
        self.corrupt_at = corrupt_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        y = self.y[i]
        if i == self.corrupt_at:  # for the NaN-guard test
            y = np.full_like(y, np.nan)
        return {"x": self.x[i], "y": y, "index": np.int64(i)}


@MODELS.register()
class ToyRegressor(paddle.nn.Layer):
    """MLP ``dim -> hidden -> 1`` with dropout; MSE loss."""

    def __init__(self, dim: int = 8, hidden: int = 32, dropout: float = 0.1):
        super().__init__()
        self.fc1 = paddle.nn.Linear(dim, hidden)
        self.drop = paddle.nn.Dropout(dropout)
        self.fc2 = paddle.nn.Linear(hidden, 1)

    def forward(self, batch):
        h = self.drop(paddle.nn.functional.gelu(self.fc1(batch["x"])))
        return {"pred": self.fc2(h)}

    def losses(self, batch, outputs):
        mse = paddle.mean((outputs["pred"] - batch["y"]) ** 2)
        return {"loss": mse, "mse": mse}

    def visuals(self, batch, outputs):
        p = outputs["pred"].numpy().reshape(-1)[:32]
        img = np.zeros((16, 32, 3), np.uint8)
        img[:, : len(p), 0] = np.clip((p - p.min()) / (np.ptp(p) + 1e-8) * 255, 0, 255).astype(np.uint8)
        return {"pred": img}


@MODELS.register()
class ToyGrouped(ToyRegressor):
    """The regressor with a parameter group per layer (``first``, ``second``, and ``all``) and no
    ``train_step``: the trainer steps one optimizer per group after one backward."""

    def param_groups(self):
        return {"first": self.fc1.parameters(), "second": self.fc2.parameters(), "all": self.parameters()}


@MODELS.register()
class ToyTwoOptim(ToyGrouped):
    """The same regressor trained with two optimizers (one per layer) through ``train_step``."""

    def train_step(self, batch, optimizers, step):
        losses = self.losses(batch, self(batch))
        losses["loss"].backward()
        for opt in optimizers.values():
            opt.step()
            opt.clear_grad()
        return losses


@METRICS.register()
class ToyMAE:
    """Mean absolute error of ``pred`` against ``y``."""

    def reset(self):
        self.err, self.n = 0.0, 0

    def update(self, batch, outputs):
        self.err += float(paddle.abs(outputs["pred"] - batch["y"]).sum())
        self.n += int(batch["y"].shape[0])

    def compute(self):
        return {"mae": self.err / max(1, self.n)}


@CALLBACKS.register()
class RecordRun:
    """Writes, per rank, the sample indices each step saw and the final weights (tests)."""

    def __init__(self, path: str):
        self.path = path
        self.seen = []

    def on_train_begin(self, trainer):
        orig = trainer._data.__class__.__next__
        stream = trainer._data

        class _Spy(stream.__class__):
            def __next__(s):
                b = orig(s)
                self.seen.extend(int(i) for i in b["index"].numpy().reshape(-1))
                return b

        stream.__class__ = _Spy

    def on_train_end(self, trainer):
        os.makedirs(self.path, exist_ok=True)
        w = {k: v.numpy().tolist() for k, v in trainer.model.state_dict().items()}
        with open(os.path.join(self.path, f"rank{trainer.rank}.json"), "w") as f:
            json.dump({"seen": self.seen, "weights": w, "world_size": trainer.world_size}, f)
