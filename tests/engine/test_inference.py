"""load_for_inference: a run folder (or a weights file in it) rebuilds the trained model from the
config.yml the trainer wrote at the start of training."""
import os
import shutil
import stat

import numpy as np
import paddle
import pytest

from ppengine import InputError, Trainer, load_for_inference


def _predict(model, x):
    with paddle.no_grad():
        return model({"x": paddle.to_tensor(x)})["pred"].numpy()


def test_run_folder_rebuilds_the_trained_model(toy_cfg, tmp_path):
    seen = {}

    class AtStart:
        def on_train_begin(self, trainer):
            p = os.path.join(trainer.output, "config.yml")
            seen["config_at_start"] = os.path.isfile(p) and not os.path.exists(os.path.join(trainer.output,
                                                                                            "final.safetensors"))

    out = str(tmp_path / "elsewhere")
    t = Trainer(toy_cfg("model.hidden=12", "train.max_iters=20"), output=out, callbacks=[AtStart()])
    t.train()
    assert seen["config_at_start"]
    assert stat.S_IMODE(os.stat(os.path.join(out, "config.yml")).st_mode) & 0o044 == 0o044  # others can read it
    t.model.eval()
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    want = _predict(t.model, x)

    model, cfg = load_for_inference(out)
    assert not model.training and model.fc1.weight.shape == [8, 12]  # built from the saved config
    assert cfg["model"]["weights"] == os.path.join(out, "final.safetensors")
    assert cfg["train"]["output"] == out  # the run folder it was trained into, not the config's default
    np.testing.assert_allclose(_predict(model, x), want, rtol=1e-6)
    # a weights file with config.yml beside it; a checkpoint's model file (config one folder up)
    m2, _ = load_for_inference(os.path.join(out, "final.safetensors"))
    np.testing.assert_allclose(_predict(m2, x), want, rtol=1e-6)
    m3, c3 = load_for_inference(os.path.join(out, "ckpt_00000020", "model.safetensors"))
    np.testing.assert_allclose(_predict(m3, x), want, rtol=1e-6)
    # overrides apply; a model that does not match the weights is the checkpoint loader's error
    from ppengine import CheckpointError
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_for_inference(out, ["model.hidden=16"])
    # no final.safetensors: best, then the latest checkpoint
    os.remove(os.path.join(out, "final.safetensors"))
    assert load_for_inference(out)[1]["model"]["weights"].endswith("best.safetensors")
    os.remove(os.path.join(out, "best.safetensors"))
    assert load_for_inference(out)[1]["model"]["weights"].endswith(os.path.join("ckpt_00000020", "model.safetensors"))


def test_missing_config_or_weights_are_clear_errors(toy_cfg, tmp_path):
    out = str(tmp_path / "run")
    Trainer(toy_cfg("train.max_iters=2", "train.eval_interval=0")).train()
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(os.path.join(out, "final.safetensors"), lone / "w.safetensors")
    with pytest.raises(InputError, match="no config.yml.*pass -c CONFIG"):
        load_for_inference(str(lone / "w.safetensors"))
    model, _ = load_for_inference(str(lone / "w.safetensors"), config=os.path.join(out, "config.yml"))  # -c
    assert not model.training
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no weights there"):
        load_for_inference(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="not found"):
        load_for_inference(str(tmp_path / "nope"))
