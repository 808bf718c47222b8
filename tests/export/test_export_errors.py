"""Bad input to tools/export.py: one line, exit code 2, nothing written; an operator paddle2onnx
cannot convert is named with the layer it comes from."""
import os

import paddle.nn as nn
import paddle.nn.functional as F
import pytest
from conftest import ROOT, export_cli

from ppengine.errors import ExportError
from ppengine.export import Component, TensorSpec, export, register_components


def _no_leftovers(parent):
    return not [n for n in os.listdir(parent) if n.startswith(".")]


def test_unknown_component_names_the_valid_ones(digits_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert export_cli("--weights", digits_run, "--component", "unet", "vae_decodr", "--output", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown component 'vae_decodr'" in err[0] and "vae_decoder" in err[0]
    assert "class_embedder" in err[0] and not out.exists()


def test_missing_weights_names_the_option(tmp_path, capsys):
    out = tmp_path / "out"
    code = export_cli("-c", os.path.join(ROOT, "configs", "ldm", "class2img_digits.yml"), "--output", out)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--weights" in err[0] and not out.exists()
    assert export_cli("-c", os.path.join(ROOT, "configs", "deca_release.yml"), "--output", out) == 2
    assert "--weights" in capsys.readouterr().err


def test_read_only_output_folder(digits_run, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # root writes anywhere: there the read-only place is /proc
    out = ro / "out" if os.geteuid() != 0 else "/proc/ppdigitalhuman-export-test/out"
    try:
        assert export_cli("--weights", digits_run, "--component", "class_embedder", "--output", out) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output" in err[0] and not os.path.exists(out)
    assert export_cli("--weights", digits_run, "--output", os.path.join(digits_run, "config.yml")) == 2
    assert "is a file" in capsys.readouterr().err


class _Upsampler(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(2, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0))


class TinyTwoPart(nn.Layer):
    """A model whose second component cannot be exported (scale_factor interpolation)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2D(2, 2, 1)
        self.blocks = nn.LayerList([nn.GroupNorm(1, 2), _Upsampler()])


class _Stem(nn.Layer):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return (self.m.stem(x),)


class _Up(nn.Layer):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return (self.m.blocks[1](self.m.blocks[0](x)),)


@register_components("TinyTwoPart")
def _tiny(model, options):
    x = TensorSpec("x", (1, 2, 4, 4))
    return [Component("stem", _Stem(model), [x], [TensorSpec("y", (1, 2, 4, 4))]),
            Component("up", _Up(model), [x], [TensorSpec("y", (1, 2, 8, 8))])]


def test_op_that_cannot_convert_names_op_layer_and_fix(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError) as e:
        export(TinyTwoPart(), None, str(out), targets=["paddle", "onnx"], log=lambda s: None)
    msg = str(e.value)
    assert "'pd_op.nearest_interp'" in msg and "component 'up'" in msg
    assert "in layer m.blocks.1" in msg and "test_export_errors.py" in msg and "scale_factor=2.0" in msg
    assert "F.interpolate(x, size=[h, w])" in msg and "\n" not in msg
    assert not out.exists() and _no_leftovers(tmp_path)  # the first component's files went with it


def test_a_folder_that_is_not_an_export_is_never_replaced(digits_run, tmp_path, capsys):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert export_cli("--weights", digits_run, "--component", "class_embedder", "--output", keep) == 2
    assert "not an earlier export" in capsys.readouterr().err and (keep / "notes.txt").read_text() == "mine"
    out = tmp_path / "out"
    for _ in range(2):  # an earlier export is replaced
        assert export_cli("--weights", digits_run, "--component", "class_embedder", "--output", out) == 0
    assert sorted(os.listdir(out)) == ["config.yml", "manifest.json", "onnx"] and _no_leftovers(tmp_path)
