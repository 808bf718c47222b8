"""One config vocabulary: old keys (kind:, cond_drop, sampler name:, a top-level infer:) are
errors that name the new key; the infer CLI's --output is a folder and a run without config.yml
asks for -c."""
import os

import paddle
import pytest

import ppldm  # noqa: F401
from ppengine import ConfigError, load_config
from ppengine.checkpoint import save_weights
from ppengine.trainer import build_model
from ppldm.pipelines.cli import main as infer_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(ROOT, "configs", "ldm")
TINY = ["model.unet.block_channels=[16,16]", "model.unet.head_channels=16", "model.unet.norm_groups=8"]


@pytest.mark.parametrize("override, new", [
    ("model.cond_drop=0.2", "cond_drop_prob"),
    ("model.autoencoder.kind=kl", "model.autoencoder.type"),
    ("model.sampler.name=ddim", "model.sampler.type"),
])
def test_old_model_keys_name_the_new_one(override, new, tmp_path):
    cfg = load_config(os.path.join(CFG, "class2img_digits.yml"), TINY + [override])
    if "kind" in override:
        cfg["model"]["autoencoder"].pop("type")
    with pytest.raises(ConfigError, match=new.replace(".", r"\.")):
        build_model(cfg)


def test_top_level_infer_section_names_model_sampler(tmp_path):
    p = tmp_path / "old.yml"
    p.write_text("_base_: " + os.path.join(CFG, "sd21_base.yml") + "\ninfer: {steps: 25}\n")
    with pytest.raises(ConfigError, match=r"infer: this section was renamed: use model\.sampler"):
        load_config(str(p))


def test_infer_cli_output_is_a_folder_and_a_bare_weights_file_needs_c(tmp_path, capsys):
    cfg = load_config(os.path.join(CFG, "uncond_digits.yml"), TINY + ["model.autoencoder.weights=null"])
    model = build_model(cfg)
    model.ae_ready.set_value(paddle.to_tensor([1.0]))  # as if trained on a first stage
    save_weights(str(tmp_path / "w.safetensors"), model)
    assert infer_main(["--weights", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "no config.yml" in err and "pass -c CONFIG" in err
    cfg.save(str(tmp_path / "config.yml"))
    assert infer_main(["--weights", str(tmp_path / "w.safetensors"), "--output", str(tmp_path / "x.png")]) == 2
    assert "--output is a folder" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit):  # the old --out flag is gone (no silent abbreviation of --output)
        infer_main(["--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "y.png")])
    assert infer_main(["--weights", str(tmp_path / "w.safetensors"), "-n", "3", "--steps", "1", "--output", str(tmp_path / "o")]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["grid.png", "sample_000.png", "sample_001.png", "sample_002.png"]
    assert oct(os.stat(tmp_path / "o" / "grid.png").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old
