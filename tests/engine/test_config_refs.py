"""``${a.b}`` references in configs: resolved after overrides, errors name the key."""
import pytest

from ppengine.config import load_config
from ppengine.errors import ConfigError


def _write(tmp_path, text):
    p = tmp_path / "c.yml"
    p.write_text(text)
    return str(p)


def test_reference_follows_overrides(tmp_path):
    p = _write(tmp_path, "model: {image_size: 96}\ndata:\n  train: {image_size: '${model.image_size}'}\n"
                         "  val: {sizes: ['${model.image_size}', 3]}\n")
    c = load_config(p)
    assert c["data"]["train"]["image_size"] == 96 and c["data"]["val"]["sizes"] == [96, 3]
    c = load_config(p, ["model.image_size=128"])
    assert c["data"]["train"]["image_size"] == 128
    c = load_config(p, ["data.train.image_size=64"])  # an explicit value replaces the reference
    assert c["data"]["train"]["image_size"] == 64 and c["model"]["image_size"] == 96
    # only whole values are references
    c = load_config(p, ["train.output=out/${model.image_size}"])
    assert c["train"]["output"] == "out/${model.image_size}"


def test_reference_errors(tmp_path):
    p = _write(tmp_path, "model: {image_size: '${model.size}'}\n")
    with pytest.raises(ConfigError, match=r"model.image_size.*\$\{model.size\}.*'size' is missing"):
        load_config(p)
    p = _write(tmp_path, "model: {a: '${model.b}', b: '${model.a}'}\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(p)
