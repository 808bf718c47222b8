import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """A folder of trained ppldm runs as the trainer writes them (config.yml + final.safetensors):
    class2img_digits trained for 2 steps on an untrained first stage (tiny, seconds)."""
    import paddle

    import ppldm  # noqa: F401
    from ppengine import Trainer, load_config
    from ppengine.checkpoint import save_weights
    from ppengine.trainer import build_model

    root = tmp_path_factory.mktemp("runs")
    cfg_dir = os.path.join(ROOT, "configs", "ldm")
    paddle.seed(0)
    ae = str(root / "ae_digits.safetensors")
    save_weights(ae, build_model(load_config(os.path.join(cfg_dir, "ae_digits.yml"))))
    cfg = load_config(os.path.join(cfg_dir, "class2img_digits.yml"), [
        "train.max_iters=2", "train.eval_interval=0", "train.save_interval=0", "train.progress=false",
        "train.log_images=false", "data.batch_size=4", "model.sampler.steps=2", "train.ema_decay=null",
        f"model.autoencoder.weights={ae}", f"train.output={root}/ldm/class2img_digits"])
    Trainer(cfg).train()
    return str(root / "ldm")
