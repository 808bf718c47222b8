"""tools/export.py on latent-diffusion models: every target x every component of the digits model,
checked here against the model's own dygraph networks with onnxruntime / Paddle Inference; the
manifest; the other conditioners and UNet inputs; split-einsum attention."""
import json
import os

import numpy as np
import paddle
import pytest
from conftest import ROOT, dygraph_model, export_cli, feeds_for, make_run

from ppengine.export.checks import psnr


def _manifest(folder):
    with open(os.path.join(folder, "manifest.json")) as f:
        return json.load(f)


def _ort(folder, manifest, name):
    import onnxruntime as ort

    return ort.InferenceSession(os.path.join(folder, manifest["components"][name]["files"]["onnx"][0]))


def _paddle_inference(folder, manifest, name):
    from ppengine.export.paddle_target import PaddleInferenceRunner

    prefix = os.path.join(folder, manifest["components"][name]["files"]["paddle"][0])[: -len(".json")]
    return PaddleInferenceRunner(prefix, [o["name"] for o in manifest["components"][name]["outputs"]])


def test_digits_every_component_every_target_matches_dygraph(digits_run, digits_export):
    model, _ = dygraph_model(digits_run)
    m = _manifest(digits_export)
    assert sorted(m["components"]) == ["class_embedder", "unet", "vae_decoder", "vae_encoder"]
    assert m["targets"] == ["paddle", "onnx"] and m["software"]["paddle2onnx"]
    # the model's own networks as the reference, on the test's own random inputs
    f = {n: feeds_for(m, n) for n in m["components"]}
    f["class_embedder"]["class_labels"] = np.array([10])  # the null class
    ref = {
        "unet": model.unet(paddle.to_tensor(f["unet"]["sample"]), paddle.to_tensor(f["unet"]["timestep"]),
                           paddle.to_tensor(f["unet"]["encoder_hidden_states"][:, :, 0].transpose(0, 2, 1))).numpy(),
        "class_embedder": model.conditioner.encode(np.array([-1])).numpy(),
        "vae_decoder": model.ae.decode(paddle.to_tensor(f["vae_decoder"]["z"])).numpy(),
        "vae_encoder": paddle.concat([(p := model.ae.encode(paddle.to_tensor(f["vae_encoder"]["x"]))).mean,
                                      p.logvar], 1).numpy(),
    }
    for name in ref:
        assert np.std(ref[name]) > 1e-3, name
        onnx_out = _ort(digits_export, m, name).run(None, f[name])[0]
        pi_out = list(_paddle_inference(digits_export, m, name)(f[name]).values())[0]
        if name == "vae_encoder":  # the graph's logvar is unclipped; the model's is clipped to [-30, 20]
            onnx_out, pi_out = onnx_out.copy(), pi_out.copy()
            for o in (onnx_out, pi_out):
                o[:, 2:] = np.clip(o[:, 2:], -30, 20)
        assert psnr(ref[name], onnx_out) >= 60, name
        assert psnr(ref[name], pi_out) >= 60, name
        for target in ("paddle", "onnx"):  # the exporter's own check is recorded
            assert min(r["psnr"] if r["psnr"] != "inf" else 1e9
                       for r in m["components"][name]["parity"][target].values()) >= 60


def test_manifest_describes_the_pipeline(digits_export):
    m = _manifest(digits_export)
    unet = m["components"]["unet"]
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["inputs"][0]["shape"] == [2, 2, 8, 8] and unet["outputs"][0]["name"] == "noise_pred"
    assert unet["inputs"][2]["shape"] == [2, 64, 1, 1] and unet["extra"]["apple_role"] == "Unet"
    p = m["pipeline"]
    assert p["scheduler"]["class"] == "DDIMScheduler" and p["scheduler"]["config"]["beta_schedule"] == "linear"
    assert p["conditioner"] == {"type": "ClassEmbedder", "component": "class_embedder", "output": "context",
                                "null_label": 10, "n_classes": 10}
    assert p["latent"]["scale_factor"] == pytest.approx(0.8)
    assert os.path.isfile(os.path.join(digits_export, "config.yml"))
    for e in m["components"].values():
        for files in e["files"].values():
            assert all(os.path.isfile(os.path.join(digits_export, f)) for f in files)
    assert not [n for n in os.listdir(os.path.dirname(digits_export)) if n.startswith(".")]  # no temp folder left


def test_example_reader_samples_like_ppldm_without_it(digits_run, digits_export, tmp_path):
    """docs/examples/ddim_onnx.py (NumPy + onnxruntime, manifest.json only) in a process that never
    imports paddle or ppldm, against ppldm's own sampling of the same model."""
    import subprocess
    import sys

    out = tmp_path / "x.npy"
    script = os.path.join(ROOT, "docs", "examples", "ddim_onnx.py")
    code = (f"import runpy, sys; sys.argv = [{script!r}, {digits_export!r}, '--class', '3', '7', '--steps', '6', "
            f"'--out', {str(out)!r}]; runpy.run_path({script!r}, run_name='__main__'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('paddle', 'ppldm', 'ppengine')]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-2000:]
    model, _ = dygraph_model(digits_run)
    ref = model.generate({"label": paddle.to_tensor(np.array([3, 7]))}, steps=6, seed=0).numpy()
    got = np.load(out)
    assert got.shape == ref.shape == (2, 1, 16, 16) and ref.std() > 0.01
    assert np.abs(got - ref).max() * 255 < 1.0


@pytest.mark.parametrize("backend", ["onnxruntime", "paddle-inference"])
def test_infer_backend_same_images(digits_run, digits_export, backend, tmp_path, capsys):
    from ppldm.pipelines.cli import main

    out = tmp_path / backend
    code = main(["--weights", digits_run, "--class", "2", "-n", "2", "--steps", "5", "--backend", backend,
                 "--export-dir", digits_export, "--output", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    diff = int(text.split("max pixel difference vs dygraph: ")[1].split("/")[0])
    assert diff <= 1, text
    assert (out / "grid.png").is_file() and (out / "sample_001.png").is_file()


TASKS = {  # config -> the components exported here (the first stage's graphs: the digits tests)
    "txt2img_shapes.yml": ["text_encoder", "unet"],
    "layout2img_shapes.yml": ["layout", "unet"],
    "inpaint_shapes.yml": ["unet"],
    "sr_shapes_pixel.yml": ["unet"],
}
SMALL = ["model.autoencoder.weights=null", "model.unet.block_channels=[16,32]", "model.unet.head_channels=16",
         "model.unet.attention_resolutions=[2]", "model.unet.norm_groups=8", "model.sample_size=16"]


@pytest.mark.parametrize("config", sorted(TASKS))
def test_task_configs_export(config, tmp_path):
    overrides = [o for o in SMALL if not (config.startswith("sr_") and "autoencoder" in o)]
    if config.startswith("sr_"):
        overrides = ["model.sample_size=16"]
    run = make_run(tmp_path / "run", f"configs/ldm/{config}", overrides)
    out = tmp_path / "out"
    assert export_cli("--weights", run, "--target", "onnx", "--component", *TASKS[config], "--output", out) == 0
    m = _manifest(out)
    assert sorted(m["components"]) == sorted(TASKS[config])
    for e in m["components"].values():
        assert min(r["psnr"] if r["psnr"] != "inf" else 1e9 for r in e["parity"]["onnx"].values()) >= 60
    unet_inputs = [i["name"] for i in m["components"]["unet"]["inputs"]]
    if config.startswith(("inpaint", "sr_")):
        assert unet_inputs[-1] == "concat"
    if "text_encoder" in m["components"]:
        assert os.path.isfile(out / "tokenizer" / "vocab.txt")
        assert [i["name"] for i in m["components"]["text_encoder"]["inputs"]] == ["input_ids", "attention_mask"]


def test_every_task_config_declares_its_components():
    """Every configs/ldm task config builds and declares components whose dygraph outputs have the
    declared shapes (the real exports of each kind are tested above)."""
    from ppengine import load_config
    from ppengine.export import ExportOptions, components_of, example_inputs
    from ppengine.export.paddle_target import run_dygraph
    from ppengine.trainer import build_model

    folder = os.path.join(ROOT, "configs", "ldm")
    tasks = [f for f in sorted(os.listdir(folder)) if f.endswith(".yml") and not f.startswith(("ae_", "sd21"))]
    assert len(tasks) >= 9
    for name in tasks:
        extra = [] if name.startswith("sr_shapes_pixel") else ["model.autoencoder.weights=null"]
        cfg = load_config(os.path.join(folder, name), extra)
        model = build_model(cfg)
        model.eval()
        comps = components_of(model, ExportOptions(batch=1))
        assert comps[0].name == "unet"
        for c in comps:
            out = run_dygraph(c, example_inputs(c, 0))
            assert [tuple(o.shape) for o in out.values()] == [t.shape for t in c.outputs], (name, c.name)


def test_split_einsum_unet_matches_standard(digits_run, tmp_path):
    out = tmp_path / "se"
    assert export_cli("--weights", digits_run, "--target", "onnx", "--component", "unet",
                      "--attention", "split_einsum", "--output", out) == 0
    m = _manifest(out)
    assert m["options"]["attention"] == "split_einsum"
    model, _ = dygraph_model(digits_run)  # standard attention
    f = feeds_for(m, "unet", 3)
    ref = model.unet(paddle.to_tensor(f["sample"]), paddle.to_tensor(f["timestep"]),
                     paddle.to_tensor(f["encoder_hidden_states"][:, :, 0].transpose(0, 2, 1))).numpy()
    got = _ort(out, m, "unet").run(None, f)[0]
    assert psnr(ref, got) >= 60
    import onnx

    ops = {n.op_type for n in onnx.load(os.path.join(out, "onnx", "unet.onnx")).graph.node}
    assert "Einsum" in ops or "MatMul" in ops


def test_cache_folder_follows_weights_and_config(digits_run):
    from ppengine.export.runtime import export_cache_dir

    model, cfg = dygraph_model(digits_run)
    a = export_cache_dir(model, cfg, root="/cache")
    assert a == export_cache_dir(model, cfg, root="/cache") and a.startswith("/cache/LatentDiffusion-")
    assert export_cache_dir(model, {**cfg, "model": {**cfg["model"], "sample_size": 32}}, root="/cache") != a
    w = model.unet.conv_out.bias
    w.set_value(w + 1e-3)
    assert export_cache_dir(model, cfg, root="/cache") != a
