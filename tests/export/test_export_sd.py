"""Stable Diffusion 2.x exports: a diffusers-layout folder and an SD single file with random weights
(made as the interop tests make them) through tools/export.py; apple/ml-stable-diffusion's names;
sampling through the exported graphs against the dygraph pipeline."""
import json
import os

import numpy as np
import paddle
import pytest
from conftest import ROOT, export_cli, feeds_for
from random_weights import make_sd_pipeline

from ppengine.export.checks import psnr

SD = os.path.join(ROOT, "configs", "ldm", "sd21_base.yml")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    make_sd_pipeline(str(root), prediction_type="eps")
    return root


@pytest.fixture(scope="module")
def sd_export(sd_folder):
    out = sd_folder / "export"
    assert export_cli("-c", SD, "-o", f"model.folder={sd_folder / 'pipe'}", "-o", "model.sample_size=32",
                      "--target", "onnx", "--output", out) == 0
    return out


def test_sd_folder_exports_in_apple_layout(sd_folder, sd_export):
    with open(sd_export / "manifest.json") as f:
        m = json.load(f)
    c = m["components"]
    assert sorted(c) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    assert [i["name"] for i in c["unet"]["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert c["unet"]["inputs"][2]["shape"] == [2, 32, 1, 77] and c["unet"]["outputs"][0]["name"] == "noise_pred"
    assert c["text_encoder"]["inputs"][0] == {**c["text_encoder"]["inputs"][0], "name": "input_ids",
                                              "dtype": "float32", "shape": [1, 77]}
    assert [o["name"] for o in c["text_encoder"]["outputs"]] == ["last_hidden_state", "pooled_outputs"]
    assert c["vae_decoder"]["inputs"][0]["name"] == "z" and c["vae_encoder"]["outputs"][0]["shape"] == [1, 8, 16, 16]
    assert {e["extra"]["apple_role"] for e in c.values()} == {"TextEncoder", "Unet", "VAEDecoder", "VAEEncoder"}
    assert os.path.isfile(sd_export / "tokenizer" / "vocab.json") and os.path.isfile(sd_export / "tokenizer" / "merges.txt")
    assert m["pipeline"]["scheduler"]["class"] == "DPMSolverMultistepScheduler"  # the config's sampler
    assert m["pipeline"]["scheduler"]["prediction_type"] == "eps"
    # the text encoder against ppdiffusers' own module, on the test's token ids
    import onnxruntime as ort
    from ppdiffusers.transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(str(sd_folder / "pipe" / "text_encoder"))
    te.eval()
    ids = np.random.RandomState(5).randint(0, 500, (1, 77))
    ref = te(paddle.to_tensor(ids))
    got = ort.InferenceSession(str(sd_export / "onnx" / "text_encoder.onnx")).run(None, {"input_ids": ids.astype("float32")})
    assert psnr(ref[0].numpy(), got[0]) >= 60 and psnr(ref[1].numpy(), got[1]) >= 60


def test_sd_sampling_through_graphs_matches_dygraph(sd_folder, sd_export):
    from ppengine import load_config
    from ppengine.export.runtime import ExportedGraphs
    from ppengine.trainer import build_model
    from ppldm.pipelines.backends import exported_networks

    model = build_model(load_config(SD, [f"model.folder={sd_folder / 'pipe'}", "model.sample_size=32"]))
    model.eval()
    kw = dict(prompt=["a red square", "a blue circle"], seed=1, steps=3, sampler="ddim", progress=False)
    ref = model.generate(**kw).numpy()
    with exported_networks(model, ExportedGraphs(str(sd_export), "onnxruntime")):
        got = model.generate(**kw).numpy()
    assert type(model.unet).__name__ == "UNet"  # the networks are back
    assert ref.shape == (2, 3, 32, 32) and ref.std() > 0.01
    assert np.abs(got - ref).max() * 255 < 1.0


def test_sd_single_file_exports(sd_folder, tmp_path):
    from ppengine import load_config
    from ppengine.trainer import build_model
    from ppldm.interop import save_single_file

    sd = build_model(load_config(SD, [f"model.folder={sd_folder / 'pipe'}"]))
    path = save_single_file(sd, str(tmp_path / "model.safetensors"))
    out = tmp_path / "export"
    assert export_cli("-c", SD, "-o", f"model.checkpoint={path}", "-o", f"model.tokenizer={sd_folder / 'tok_src'}",
                      "-o", "model.sample_size=32", "--component", "vae_decoder", "--target", "paddle",
                      "--output", out) == 0
    with open(out / "manifest.json") as f:
        m = json.load(f)
    assert list(m["components"]) == ["vae_decoder"]
    from ppengine.export.paddle_target import PaddleInferenceRunner

    f = feeds_for(m, "vae_decoder")
    got = PaddleInferenceRunner(str(out / "paddle" / "vae_decoder"), ["image"])(f)["image"]
    ref = sd.vae.decode(paddle.to_tensor(f["z"])).numpy()
    assert psnr(ref, got) >= 60
