import os

import pytest

import ppengine.toy  # noqa: F401  (registers the toy model/dataset/metric/callback)
from ppengine import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(ROOT, "configs", "toy.yml")


@pytest.fixture
def toy_cfg(tmp_path):
    def make(*overrides):
        return load_config(TOY, [f"train.output={tmp_path / 'run'}", "train.progress=false", *overrides])

    return make


class Recorder:
    """Callback collecting every hook call and the per-step logs."""

    def __init__(self):
        self.losses = {}
        self.calls = []
        self.evals = []

    def on_train_begin(self, trainer):
        self.calls.append("begin")

    def on_step_end(self, trainer, step, logs):
        self.losses[step] = logs["loss"]

    def on_eval_end(self, trainer, step, metrics):
        self.evals.append((step, dict(metrics)))

    def on_checkpoint(self, trainer, step, path):
        self.calls.append(("ckpt", step))

    def on_train_end(self, trainer):
        self.calls.append("end")


@pytest.fixture
def recorder():
    return Recorder
