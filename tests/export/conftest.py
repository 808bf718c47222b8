"""Shared, session-scoped exports for the export tests: run folders with random non-trivial weights
(never fresh LayerNorm/GroupNorm defaults: paddle2onnx's lost attributes would hide) and the
folders tools/export.py writes from them."""
import os
import sys

import numpy as np
import paddle
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "ldm"))  # random_weights: the interop tests' helpers

from random_weights import randomize  # noqa: E402

import ppface3d  # noqa: E402,F401
import ppldm  # noqa: E402,F401


def randomize_model(model, seed=0, scale=0.1):
    """Noise in every tensor; batch-norm variances kept positive, the LDM's state flags set."""
    randomize(model, seed, scale)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("_variance"):
            p.set_value(p.abs() + 0.5)
    if hasattr(model, "ae_ready"):
        model.ae_ready.set_value(paddle.to_tensor([1.0]))
        model.scale.scale_factor.set_value(paddle.to_tensor([0.8]))
        model.scale.fitted.set_value(paddle.to_tensor([1.0]))
    model.eval()
    return model


def make_run(folder, config, overrides=(), seed=0, scale=0.1, prepare=None):
    """A training run folder (config.yml + final.safetensors) of ``config`` with random weights."""
    from ppengine import load_config
    from ppengine.checkpoint import save_weights
    from ppengine.trainer import build_model

    cfg = load_config(os.path.join(ROOT, config), list(overrides))
    model = build_model(cfg)
    randomize_model(model, seed, scale)
    if prepare is not None:
        prepare(model)
    os.makedirs(folder, exist_ok=True)
    cfg.save(os.path.join(folder, "config.yml"))
    save_weights(os.path.join(folder, "final.safetensors"), model)
    return str(folder)


def export_cli(*argv):
    """tools/export.py in this process -> exit code."""
    from ppengine.export.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("digits") / "run", "configs/ldm/class2img_digits.yml",
                    ["model.autoencoder.weights=null"])


@pytest.fixture(scope="session")
def digits_export(digits_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_export") / "out"
    assert export_cli("--weights", digits_run, "--target", "paddle", "onnx", "--output", out) == 0
    return str(out)


def dygraph_model(run):
    from ppengine import load_for_inference

    model, cfg = load_for_inference(run)
    return model, cfg


def feeds_for(manifest, name, seed=0):
    """Random inputs of a manifest component (the test's own draw, not the exporter's)."""
    rng = np.random.RandomState(seed + 100)
    out = {}
    for t in manifest["components"][name]["inputs"]:
        lo, hi = t.get("range", [0, 10] if t["dtype"] != "float32" else [None, None])
        if t["dtype"] == "float32":
            v = rng.standard_normal(t["shape"]) if lo is None else rng.uniform(lo, hi, t["shape"])
        else:
            v = rng.randint(lo, hi, t["shape"])
        out[t["name"]] = v.astype(t["dtype"])
    return out
