"""Core ML packages (ppengine.export.coreml), checked on Linux by the NumPy ML Program evaluator
(ppengine.export.mil_eval): a Stable Diffusion-layout export from generated weights (fp16,
split-einsum attention, 6-bit palettization, the UNet in two chunks) in apple/ml-stable-diffusion's
resource layout; an fp32 UNet evaluated against onnxruntime; int8 weights; a package made wrong on
purpose (paddle2onnx's GroupNorm epsilon left in) failing its floor; errors and atomic writes."""
import json
import os

import numpy as np
import paddle
import pytest
from conftest import randomize_model

from ppengine.errors import ExportError, InputError
from ppengine.export import ExportOptions, example_inputs, export, mil_eval
from ppengine.export import coreml as coreml_target
from ppengine.export.apple_layout import check_resources
from ppengine.export.checks import FLOORS, compare, passes, psnr
from ppengine.export.onnx_target import OrtRunner, export_onnx
from ppengine.export.paddle_target import run_dygraph, save_program

ct = coreml_target.coremltools()


def _onnx(component, folder):
    """The component's ONNX file, made as the export pipeline makes it (paddle2onnx + fixes)."""
    prefix = os.path.join(str(folder), component.name)
    ops = save_program(component, prefix)
    path = prefix + ".onnx"
    export_onnx(component, prefix, path, ops)
    return path


def _spec(path):
    return ct.models.MLModel(path, skip_model_load=True).get_spec()


# --------------------------------------------------------------------------- Stable Diffusion layout
@pytest.fixture(scope="module")
def sd_export(tmp_path_factory):
    """A tiny SD 2.x model (ppldm UNet + VAE, ppdiffusers' CLIP text model, a real byte-level CLIP
    tokenizer), random weights, exported to Core ML as apple's --chunk-unet --quantize-nbits 6
    --attention-implementation SPLIT_EINSUM would."""
    from paddlenlp.transformers import CLIPTokenizer
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel
    from random_weights import write_byte_level_tokenizer

    from ppldm.interop import StableDiffusion

    root = tmp_path_factory.mktemp("sd_coreml")
    n = write_byte_level_tokenizer(str(root / "tok"))
    paddle.seed(0)
    # conv weights of >= 2048 elements, so that palettization (coremltools' threshold) applies
    sd = StableDiffusion(unet=dict(block_channels=[16, 32], layers_per_block=1, attention_resolutions=[2],
                                   head_channels=16, context_dim=16, norm_groups=8),
                         vae=dict(block_channels=[8, 8], layers_per_block=1, latent_channels=4, norm_groups=4),
                         sample_size=16)
    sd.text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2,
                                                   max_position_embeddings=77, hidden_act="gelu"))
    sd.tokenizer = CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"))
    randomize_model(sd)
    out = root / "out"
    # the VAE encoder (optional in apple's layout; a conv net as the decoder) is left out for time
    manifest = export(sd, None, str(out), targets=["coreml"], components=["text_encoder", "unet", "vae_decoder"],
                      options=ExportOptions(attention="split_einsum"), precision="fp16", compress="palettize6",
                      chunk=2, log=lambda s: None)
    return sd, str(out), manifest


def test_sd_export_is_apples_resource_layout(sd_export):
    _, out, manifest = sd_export
    folder = os.path.join(out, "coreml")
    assert sorted(os.listdir(folder)) == ["TextEncoder.mlpackage", "UnetChunk1.mlpackage", "UnetChunk2.mlpackage",
                                          "VAEDecoder.mlpackage", "merges.txt", "vocab.json"]
    assert check_resources(folder) == []
    assert check_resources(folder, require_encoder=True) == ["VAEEncoder.mlpackage missing"]
    te = _spec(os.path.join(folder, "TextEncoder.mlpackage")).description
    assert [(f.name, list(f.type.multiArrayType.shape)) for f in te.input] == [("input_ids", [1, 77])]
    assert te.output[0].name == "last_hidden_state"
    c1 = _spec(os.path.join(folder, "UnetChunk1.mlpackage")).description
    c2 = _spec(os.path.join(folder, "UnetChunk2.mlpackage")).description
    assert {f.name: list(f.type.multiArrayType.shape) for f in c1.input}["encoder_hidden_states"] == [2, 16, 1, 77]
    assert [f.name for f in c2.output] == ["noise_pred"]
    assert {f.name for f in c2.input} - {f.name for f in c1.input} <= {f.name for f in c1.output}
    # the folder's own failures: none, and every package reached its floor
    assert manifest["failed"] == [] and not os.path.exists(os.path.join(folder, "failed"))
    for name, entry in manifest["components"].items():
        assert entry["coreml"]["floor_db"] == FLOORS["palettize6"]
        assert passes(entry["coreml"]["parity"], FLOORS["palettize6"]), (name, entry["coreml"]["parity"])
    # a layout the Swift package cannot run is reported
    os.rename(os.path.join(folder, "merges.txt"), os.path.join(folder, "merges.bak"))
    try:
        assert check_resources(folder) == ["merges.txt missing (the CLIP tokenizer)"]
    finally:
        os.rename(os.path.join(folder, "merges.bak"), os.path.join(folder, "merges.txt"))


def test_sd_packages_metadata(sd_export):
    _, out, _ = sd_export
    m = ct.models.MLModel(os.path.join(out, "coreml", "UnetChunk2.mlpackage"), skip_model_load=True)
    assert "(chunk 2 of 2)" in m.short_description and "UNet" in m.short_description
    assert m.author.startswith("ppdigitalhuman") and "RAIL" in m.license and m.version
    user = m.user_defined_metadata
    assert (user["ppengine.precision"], user["ppengine.compress"], user["ppengine.part"]) == \
           ("fp16", "palettize6", "chunk 2 of 2")
    assert user["ppengine.apple_role"] == "Unet" and user["ppengine.version.onnx2coreml"] == "1.1.0"
    te = ct.models.MLModel(os.path.join(out, "coreml", "TextEncoder.mlpackage"), skip_model_load=True)
    assert "float32" in te.input_description["input_ids"] and te.output_description["last_hidden_state"]


def test_sd_unet_chunks_fp16_palettized_split_einsum_match_dygraph(sd_export):
    """Chunk 1 then chunk 2 (as the Swift package runs them) against the dygraph UNet on the test's
    own inputs; the packages really hold fp16 compute, 6-bit palettes and the einsum attention."""
    sd, out, manifest = sd_export
    folder = os.path.join(out, "coreml")
    rng = np.random.RandomState(7)
    shapes = {t["name"]: t["shape"] for t in manifest["components"]["unet"]["inputs"]}
    assert shapes == {"sample": [2, 4, 8, 8], "timestep": [2], "encoder_hidden_states": [2, 16, 1, 77]}
    feeds = {"sample": rng.standard_normal(shapes["sample"]).astype(np.float32),
             "timestep": np.array([981.0, 981.0], np.float32),
             "encoder_hidden_states": rng.standard_normal(shapes["encoder_hidden_states"]).astype(np.float32)}
    chunks = [os.path.join(folder, f"UnetChunk{i}.mlpackage") for i in (1, 2)]
    got = mil_eval.predict_chain(chunks, feeds)["noise_pred"]
    with paddle.no_grad():
        ctx = paddle.to_tensor(feeds["encoder_hidden_states"][:, :, 0].transpose(0, 2, 1))
        want = sd.unet(paddle.to_tensor(feeds["sample"]), paddle.to_tensor(feeds["timestep"]), ctx).numpy()
    assert np.std(want) > 1e-2
    assert psnr(want, got) >= FLOORS["palettize6"], psnr(want, got)
    progs = [mil_eval.load(c) for c in chunks]
    kinds = {}
    for p in progs:
        for k, v in mil_eval.op_types(p).items():
            kinds[k] = kinds.get(k, 0) + v
    assert kinds.get("constexpr_lut_to_dense", 0) >= 8, kinds     # the conv weights are 6-bit palettes
    assert kinds.get("einsum", 0) + kinds.get("matmul", 0) >= 4 and kinds.get("cast", 0) >= 2, kinds
    # every palette decodes as coremltools decodes it
    luts = [o for p in progs for o in p.functions["main"].operations if o.op_type == "constexpr_lut_to_dense"]
    for o in luts[:4]:
        mine = mil_eval.eval_op(o)
        assert o.lut.val.shape == (64,)
        np.testing.assert_array_equal(mine, o.materialized_val_inference())


# --------------------------------------------------------------------------- fp32 UNet, int8
@pytest.fixture(scope="module")
def fp32_unet(tmp_path_factory):
    """A standard-attention UNet component (text context), its ONNX file and an fp32 package."""
    from ppldm.export import unet_component
    from ppldm.models import UNet

    paddle.seed(1)
    unet = randomize_model(UNet(4, 4, block_channels=[8, 16], layers_per_block=1, attention_resolutions=[2],
                                head_channels=8, context_dim=8, norm_groups=4))
    comp = unet_component(unet, 2, 4, 4, context=(5, 8))
    folder = tmp_path_factory.mktemp("fp32_unet")
    onnx_path = _onnx(comp, folder)
    paths = coreml_target.convert(onnx_path, str(folder / "Unet.mlpackage"), comp, precision="fp32",
                                  metadata={"description": "test UNet", "author": "tests", "license": "MIT",
                                            "version": "0.1", "user_defined": {"origin": "test"}})
    return comp, onnx_path, paths


def test_fp32_program_matches_onnxruntime_exactly(fp32_unet):
    comp, onnx_path, paths = fp32_unet
    assert paths == [os.path.abspath(os.path.join(os.path.dirname(onnx_path), "Unet.mlpackage"))]
    feeds = example_inputs(comp, seed=3)
    ort_out = OrtRunner(onnx_path)(feeds)
    got = mil_eval.predict(paths[0], feeds)
    assert psnr(ort_out["noise_pred"], got["noise_pred"]) > 100.0          # the evaluator is exact
    assert passes(compare(run_dygraph(comp, feeds), got), FLOORS["fp32"])
    m = ct.models.MLModel(paths[0], skip_model_load=True)
    assert (m.short_description, m.author, m.license, m.version) == ("test UNet", "tests", "MIT", "0.1")
    assert m.user_defined_metadata["origin"] == "test" and m.user_defined_metadata["ppengine.precision"] == "fp32"
    assert m.input_description["timestep"] == comp.inputs[1].description


# --------------------------------------------------------------------------- floors
@pytest.fixture(scope="module")
def block_onnx(tmp_path_factory):
    """A GroupNorm + conv residual block as a component, and its ONNX file."""
    from ppengine.export import Component, TensorSpec
    from ppldm.models.blocks import ResnetBlock

    class Block(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.block = ResnetBlock(8, 16, None, groups=4, eps=1e-6)

        def forward(self, x):
            return (self.block(x),)

    paddle.seed(2)
    comp = Component("block", randomize_model(Block(), scale=0.3), [TensorSpec("x", (1, 8, 8, 8))],
                     [TensorSpec("y", (1, 16, 8, 8))], "residual block", extra={"chunk": True})
    folder = tmp_path_factory.mktemp("block")
    return comp, _onnx(comp, folder), folder


def test_int8_weights(block_onnx, tmp_path):
    import onnx

    comp, onnx_path, _ = block_onnx
    ml = coreml_target.compress_model(coreml_target.to_mlmodel(onnx.load(onnx_path), "fp32"), "int8", min_size=64)
    path = str(tmp_path / "int8.mlpackage")
    ml.save(path)
    prog = mil_eval.load(path)
    deq = [o for o in prog.functions["main"].operations if o.op_type == "constexpr_affine_dequantize"]
    assert len(deq) == 3          # conv1, conv2, conv_shortcut
    for o in deq:
        assert o.quantized_data.val.dtype == np.int8
        np.testing.assert_allclose(mil_eval.eval_op(o), o.materialized_val_inference(), rtol=1e-6, atol=1e-7)
    feeds = example_inputs(comp, seed=4)
    res = compare(run_dygraph(comp, feeds), mil_eval.predict(path, feeds))
    assert passes(res, FLOORS["int8"]) and res["y"]["psnr"] < 80, res     # compressed, but within its floor


def test_package_with_the_group_norm_epsilon_bug_fails_its_floor(block_onnx, tmp_path):
    """paddle2onnx writes a random epsilon into the InstanceNormalization it makes from a GroupNorm;
    a package converted from such a file must fail the fp16 floor, the fixed one pass it."""
    import onnx
    from onnx import helper

    comp, onnx_path, _ = block_onnx
    bad = onnx.load(onnx_path)
    for node in bad.graph.node:
        if node.op_type == "InstanceNormalization":
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("epsilon", 189777.0))   # a value seen from paddle2onnx
    bad_path = str(tmp_path / "bad.onnx")
    onnx.save(bad, bad_path)
    feeds = example_inputs(comp, seed=5)
    ref = run_dygraph(comp, feeds)
    good = coreml_target.convert(onnx_path, str(tmp_path / "good.mlpackage"), comp, precision="fp16")
    wrong = coreml_target.convert(bad_path, str(tmp_path / "wrong.mlpackage"), comp, precision="fp16")
    floor = FLOORS["fp16"]
    assert passes(compare(ref, mil_eval.predict(good[0], feeds)), floor)
    res = compare(ref, mil_eval.predict(wrong[0], feeds))
    assert not passes(res, floor) and res["y"]["psnr"] < 20, res


# --------------------------------------------------------------------------- errors, atomic writes
def test_convert_errors_are_one_line_and_leave_nothing(block_onnx, tmp_path, monkeypatch):
    comp, onnx_path, _ = block_onnx
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="precision 'fp8'"):
        coreml_target.convert(onnx_path, str(out / "B.mlpackage"), comp, precision="fp8")
    with pytest.raises(InputError, match="compress 'palettize3'"):
        coreml_target.convert(onnx_path, str(out / "B.mlpackage"), comp, compress="palettize3")
    with pytest.raises(InputError, match="not found"):
        coreml_target.convert(str(tmp_path / "none.onnx"), str(out / "B.mlpackage"), comp)
    with pytest.raises(InputError, match="ends with .mlpackage"):
        coreml_target.convert(onnx_path, str(out / "B.mlmodel"), comp)
    from ppengine.export import Component, TensorSpec

    other = Component("other", comp.layer, [TensorSpec("image", (1, 8, 8, 8))], [TensorSpec("y", (1, 16, 8, 8))])
    with pytest.raises(ExportError, match=r"inputs \['x'\].*export its ONNX file again"):
        coreml_target.convert(onnx_path, str(out / "B.mlpackage"), other)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(coreml_target, "_bisect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        coreml_target.convert(onnx_path, str(out / "B.mlpackage"), comp, chunk=2)
    assert os.listdir(out) == []          # no half-written package, no temporary folder


def test_chunk_names_and_which_components_chunk(block_onnx):
    from ppengine.export import Component

    comp = block_onnx[0]
    assert coreml_target.chunk_names("/a/Unet.mlpackage") == ["/a/UnetChunk1.mlpackage", "/a/UnetChunk2.mlpackage"]
    assert coreml_target.chunkable(comp)
    te = Component("text_encoder", comp.layer, comp.inputs, comp.outputs, extra={"apple_role": "TextEncoder"})
    assert not coreml_target.chunkable(te)


def test_manifest_records_the_parity_the_evaluator_measured(sd_export):
    _, out, _ = sd_export
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    unet = m["components"]["unet"]["coreml"]
    assert unet["files"] == ["coreml/UnetChunk1.mlpackage", "coreml/UnetChunk2.mlpackage"]
    assert unet["parity"]["noise_pred"]["psnr"] >= FLOORS["palettize6"] and unet["size_bytes"] > 10_000
