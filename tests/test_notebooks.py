"""Execute every notebook in notebooks/ top to bottom (nbclient, the venv's python3 kernel) in a
temporary working directory, and check the files each one writes and its summary numbers.

The notebooks write into ``PPDH_NOTEBOOK_OUT`` (set here to a temp folder). A failing cell
raises ``CellExecutionError`` and fails the test. Budget: about 150 s for 01-04 on 2 CPU cores, plus
about 60 s for 05 (an export to ONNX and Core ML).
"""
import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")


def _kernel_name(tmp_root) -> str:
    """A kernelspec that runs this interpreter: the venv's own python3 spec when it points at
    sys.executable (or at a bare 'python', which jupyter_client maps to sys.executable);
    otherwise one installed into a temp folder at test time."""
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        exe = spec.argv[0]
        if exe in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}") or \
                os.path.realpath(exe) == os.path.realpath(sys.executable):
            return "python3"
    except Exception:
        pass
    from ipykernel.kernelspec import install

    prefix = os.path.join(str(tmp_root), "kernel_prefix")
    install(kernel_name="ppdh-test", prefix=prefix)
    os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter") + os.pathsep + os.environ.get("JUPYTER_PATH", "")
    return "ppdh-test"


def _run(name: str, tmp_path, monkeypatch, timeout: int = 240) -> str:
    path = os.path.join(NB_DIR, name)
    nb = nbformat.read(path, as_version=4)
    # stored without outputs, to keep git light
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), \
        f"{name} is stored with outputs; clear them"
    out = tmp_path / "out"
    work = tmp_path / "work"
    out.mkdir()
    work.mkdir()
    monkeypatch.setenv("PPDH_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    monkeypatch.delenv("PPDH_DECA_WEIGHTS", raising=False)
    monkeypatch.delenv("PPDH_SD_PATH", raising=False)
    kernel = _kernel_name(tmp_path)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    # nothing written into the working directory or the repository's notebooks/ folder
    assert not any(work.iterdir()), f"{name} wrote into its working directory: {os.listdir(work)}"
    return str(out)


def _nontrivial(out, rel, min_bytes=1000):
    p = os.path.join(out, rel)
    assert os.path.isfile(p), f"missing output {rel}"
    size = os.path.getsize(p)
    assert size >= min_bytes, f"{rel} is only {size} bytes"
    return p


def _image(out, rel, min_side=32):
    import imageio.v3 as iio
    import numpy as np

    img = np.asarray(iio.imread(_nontrivial(out, rel)))
    assert img.ndim >= 2 and min(img.shape[-3:-1] if img.ndim == 4 else img.shape[:2]) >= min_side, (rel, img.shape)
    assert float(img.std()) > 1.0, f"{rel} is a flat image"
    return img


def _summary(out):
    with open(_nontrivial(out, "summary.json", 50)) as f:
        return json.load(f)


def test_01_differentiable_rendering(tmp_path, monkeypatch):
    out = _run("01_differentiable_rendering.ipynb", tmp_path, monkeypatch)
    for f in ("render.png", "fragments.png", "loss.png", "fit_before_after.png", "fit_final.png"):
        _image(out, f)
    frames = _image(out, "fit.gif")
    assert frames.ndim == 4 and frames.shape[0] >= 5
    s = _summary(out)
    # the fit through the renderer must actually work
    assert s["loss_end"] < 0.1 * s["loss_start"], s
    assert s["vertex_error_mm_end"] < 0.5 * s["vertex_error_mm_start"], s
    assert max(abs(a - b) for a, b in zip(s["pose_fitted"], s["pose_true"])) < 0.06, s


def test_02_flame_deca_reconstruction(tmp_path, monkeypatch):
    out = _run("02_flame_deca_reconstruction.ipynb", tmp_path, monkeypatch)
    for f in ("flame_sliders.png", "preprocess.png", "reconstruction.png", "astronaut/overlay.png",
              "astronaut/landmarks.png", "astronaut/textured.png", "astronaut/shape.png", "astronaut/mesh.png"):
        _image(out, f)
    obj = _nontrivial(out, "astronaut/mesh.obj", 100_000)
    with open(obj) as f:
        text = f.read()
    assert text.count("\nv ") >= 5000 and text.count("\nf ") >= 10000
    _nontrivial(out, "astronaut/mesh.glb", 50_000)
    _nontrivial(out, "astronaut/codes.npz", 500)
    s = _summary(out)
    assert s["mode"] == "fitting"
    # the fit brings the reconstructed landmarks well closer than the framed mean face
    assert s["landmark_error_px"] < 0.75 * s["mean_face_landmark_error_px"], s
    assert s["landmark_error_px"] < 10.0, s


def test_03_expression_transfer(tmp_path, monkeypatch):
    out = _run("03_expression_transfer.ipynb", tmp_path, monkeypatch)
    for f in ("transfer_panel.png", "transfer_textured.png", "transfer_shape.png", "transfer_overlay.png",
              "reverse_textured.png"):
        _image(out, f)
    for f in ("transfer.gif", "expression_tour.gif"):
        frames = _image(out, f)
        assert frames.ndim == 4 and frames.shape[0] >= 10, (f, frames.shape)
        assert float(abs(frames[0].astype(float) - frames[frames.shape[0] // 2]).mean()) > 0.2, f"{f} does not move"
    _nontrivial(out, "transfer.obj", 100_000)
    s = _summary(out)
    # the source's open mouth is recovered by the fit (true jaw 0.285 rad)
    assert abs(s["source_jaw_fitted"] - s["source_jaw_true"]) < 0.15, s
    assert s["exp_correlation"] > 0.5, s


def test_04_latent_diffusion(tmp_path, monkeypatch):
    out = _run("04_latent_diffusion.ipynb", tmp_path, monkeypatch)
    for f in ("data.png", "loss.png", "samples_ddim_cfg3.png", "samplers.png", "samplers_panel.png"):
        _image(out, f)
    for run in ("ae_digits", "class2img_digits"):
        _nontrivial(out, f"{run}/final.safetensors", 10_000)
        _nontrivial(out, f"{run}/config.yml", 100)
    _nontrivial(out, "tiny_sd2_layout_unet/diffusion_pytorch_model.safetensors", 10_000)
    _nontrivial(out, "tiny_sd2_layout_unet/config.json", 100)
    s = _summary(out)
    assert s["ldm_loss_last"] < s["ldm_loss_first"], s
    assert s["ae_loss_last"] < s["ae_loss_first"], s
    assert s["generate_vs_sample_max_diff"] < 1e-4, s


def test_05_export_coreml(tmp_path, monkeypatch):
    monkeypatch.delenv("PPDH_DIGITS_RUN", raising=False)
    out = _run("05_export_coreml.ipynb", tmp_path, monkeypatch)
    for f in ("backends.png", "samples_coreml.png"):
        _image(out, f)
    for f in ("coreml/Unet.mlpackage", "coreml/VAEDecoder.mlpackage", "coreml/VAEEncoder.mlpackage",
              "coreml/class_embedder.mlpackage"):
        _nontrivial(out, f"export/{f}/Manifest.json", 100)
    _nontrivial(out, "export/onnx/unet.onnx", 100_000)
    s = _summary(out)
    assert s["components"] == ["class_embedder", "unet", "vae_decoder", "vae_encoder"] and s["failed"] == [], s
    # every fp16 package within the fp16 floor of the dygraph model on the notebook's own inputs
    assert all(p["coreml_db"] >= 35 and p["onnx_db"] >= 60 for p in s["parity"].values()), s["parity"]
    c = s["compressed"]
    assert c["int8"]["psnr_db"] >= 35 and c["int8"]["size"] < 0.75 * s["coreml_sizes"]["unet"], c
    assert c["palettize4"]["psnr_db"] >= 20 and c["palettize4"]["size"] < c["int8"]["size"], c
    assert c["int8"]["weights"] >= 20 and c["palettize4"]["weights"] >= 20, c
    # the digits sampled through the Core ML programs are the dygraph model's, to fp16 precision
    assert s["sampling_max_pixel_diff"]["onnxruntime"] < 0.5, s["sampling_max_pixel_diff"]
    assert s["sampling_max_pixel_diff"]["Core ML (fp16, NumPy)"] < 10, s["sampling_max_pixel_diff"]
