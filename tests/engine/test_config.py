"""Config loading: _base_ inheritance, -o overrides, provenance and clear errors."""
import textwrap

import pytest

import ppengine.toy  # noqa: F401
from ppengine import ConfigError, Trainer, load_config
from ppengine.registry import MODELS, Registry


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def tree(tmp_path):
    write(tmp_path / "_base_" / "a.yml", """
        model: {type: ToyRegressor, hidden: 16, dim: 8}
        train: {max_iters: 10, seed: 1}
        data: {batch_size: 4}
    """)
    write(tmp_path / "_base_" / "b.yml", """
        _base_: a.yml
        train: {seed: 2, log_interval: 3}
    """)
    write(tmp_path / "_base_" / "c.yml", """
        optimizer: {type: SGD, lr: 0.5}
    """)
    return tmp_path


def test_base_chain_and_list_deep_merge(tree):
    path = write(tree / "exp" / "main.yml", """
        _base_: [../_base_/b.yml, ../_base_/c.yml]
        model: {hidden: 64}
    """)
    cfg = load_config(path)
    assert cfg["model"] == {"type": "ToyRegressor", "hidden": 64, "dim": 8}  # deep-merged, child wins
    assert cfg["train"] == {"max_iters": 10, "seed": 2, "log_interval": 3}  # b overrides a
    assert cfg["optimizer"]["type"] == "SGD"
    assert cfg.source_of("train.seed").endswith("b.yml")
    assert cfg.source_of("model.hidden").endswith("main.yml")
    assert cfg.source_of("model.dim").endswith("a.yml")


def test_overrides_are_yaml_typed_and_repeatable(tree):
    path = write(tree / "m.yml", "_base_: _base_/b.yml\n")
    cfg = load_config(path, ["train.max_iters=200", "optimizer.lr=1e-3", "model.hidden=7", "train.grad_clip=null",
                             "data.batch_size=8", "train.metric_mode=max", "metrics=[{type: ToyMAE}]",
                             "model.hidden=9"])
    assert cfg["train"]["max_iters"] == 200 and isinstance(cfg["train"]["max_iters"], int)
    assert cfg["optimizer"]["lr"] == pytest.approx(1e-3) and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["model"]["hidden"] == 9  # last wins
    assert cfg["train"]["grad_clip"] is None
    assert cfg["metrics"] == [{"type": "ToyMAE"}]
    assert cfg.source_of("train.max_iters") == "-o train.max_iters"
    cfg2 = load_config(path, ["metrics=[{type: ToyMAE}]"])
    from ppengine.config import apply_override
    apply_override(cfg2, "metrics.0.type", "Other")
    assert cfg2["metrics"][0]["type"] == "Other"


def test_resolved_config_saved_in_run_folder(tree, tmp_path):
    path = write(tree / "m.yml", """
        _base_: _base_/a.yml
        data: {train: {type: ToyRegression, n: 32}}
        train: {progress: false}
    """)
    out = tmp_path / "run"
    cfg = load_config(path, ["train.max_iters=2", f"train.output={out}"])
    Trainer(cfg).train()
    saved = load_config(str(out / "config.yml"))
    assert saved["train"]["max_iters"] == 2 and saved["model"]["hidden"] == 16
    assert "_base_" not in saved


@pytest.mark.parametrize("text, overrides, expect", [
    ("modle: {type: ToyRegressor}\n", [], ["modle", "'model'", "bad.yml"]),
    ("model: {type: ToyRegresor}\n", [], ["model.type", "ToyRegresor", "'ToyRegressor'", "bad.yml"]),
    ("model: {type: ToyRegressor, hiden: 3}\n", [], ["model.hiden", "'hidden'", "bad.yml"]),
    ("model: {type: ToyRegressor}\ntrain: {max_iter: 3}\n", [], ["train.max_iter", "'max_iters'", "bad.yml"]),
    ("model: {type: ToyRegressor}\n", ["trian.max_iters=3"], ["trian", "'train'"]),
    ("model: {type: ToyRegressor, hidden: 3}\n", ["model.hidden.x=3"], ["model.hidden", "int"]),
    ("model: {type: ToyRegressor}\n", ["model.hidden={x: 3}"], ["model", "ToyRegressor", "-o model.hidden"]),
    ("model: {type: ToyRegressor}\n", ["train.max_iters"], ["key.path=value"]),
    ("_base_: nothere.yml\n", [], ["nothere.yml", "not found"]),
    ("model: [1, 2\n", [], ["not valid YAML"]),
    ("model: {type: ToyRegressor}\ndata: {batch_sise: 3}\n", [], ["data.batch_sise", "'batch_size'"]),
])
def test_bad_configs_give_clear_errors(tmp_path, text, overrides, expect):
    path = write(tmp_path / "bad.yml", text)
    with pytest.raises(ConfigError) as e:
        cfg = load_config(path, overrides)
        Trainer(cfg).train()
    msg = str(e.value)
    for piece in expect:
        assert piece in msg, (piece, msg)


def test_unknown_override_value_from_o_named_in_error(tmp_path):
    path = write(tmp_path / "ok.yml", "model: {type: ToyRegressor}\n")
    with pytest.raises(ConfigError, match=r"-o model.type.*ToyRegresor.*'ToyRegressor'"):
        Trainer(load_config(path, ["model.type=ToyRegresor"]))


def test_registry_build_and_nearest():
    reg = Registry("widget")

    @reg.register()
    class Spanner:
        def __init__(self, size=1):
            self.size = size

    assert reg.build({"type": "Spanner", "size": 3}).size == 3
    with pytest.raises(ConfigError, match="Did you mean 'Spanner'"):
        reg.build({"type": "spaner"})
    with pytest.raises(ConfigError, match="Did you mean 'size'"):
        reg.build({"type": "Spanner", "sise": 3})
    with pytest.raises(KeyError):
        reg.register(type("Spanner", (), {}), name="Spanner")
    assert "ToyRegressor" in MODELS
