"""tools/infer.py face3d: image, folder (with a bad file), video, transfer; the files open."""
import os

import numpy as np
import pytest

import ppface3d  # noqa: F401

FAST = ["--fit-iters", "6", "3", "--fit-size", "32", "--no-progress", "--frames", "4"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage.data
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    img = skimage.data.astronaut()
    Image.fromarray(img).save(d / "astro.jpg")
    Image.fromarray(np.ascontiguousarray(img[:, ::-1])).save(d / "mirror.png")
    with open(d / "broken.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff garbage")
    return d


def test_infer_image_with_transfer(photos, tmp_path, capsys):
    import imageio.v3 as iio
    import trimesh

    from ppface3d.apps.cli import main

    out = tmp_path / "out"
    rc = main(["--image", str(photos / "astro.jpg"), "--output", str(out),
               "--transfer-from", str(photos / "mirror.png")] + FAST)
    assert rc == 0
    d = out / "astro"
    for f in ["codes.npz", "mesh.obj", "mesh.mtl", "mesh.png", "mesh_normals.png", "mesh.glb", "shape.png",
              "textured.png", "overlay.png", "landmarks.png", "transfer_textured.png", "transfer_overlay.png",
              "transfer.obj", "transfer.gif"]:
        assert (d / f).is_file() and (d / f).stat().st_size > 0, f
    codes = np.load(d / "codes.npz")
    for k in ("shape", "exp", "pose", "cam", "tex", "light", "tform"):
        assert k in codes
    mesh = trimesh.load(d / "mesh.obj", process=False)
    assert mesh.visual.kind == "texture" and mesh.visual.uv is not None
    glb = trimesh.load(d / "mesh.glb")
    geom = list(glb.geometry.values())[0]
    assert geom.visual.uv is not None and len(geom.faces) > 1000
    assert iio.imread(d / "overlay.png").shape[:2] == (512, 512)  # the original photo's frame
    nmap = iio.imread(d / "mesh_normals.png")
    assert nmap.shape[:2] == (256, 256) and nmap.std() > 10  # varying normals, not a flat fill
    gif = iio.imread(d / "transfer.gif", index=None)
    assert gif.shape[0] >= 4
    # transfer puts the source's expression and jaw on the target's identity
    from ppface3d.apps.reconstruct import FaceReconstructor

    src = {k: np.full((1, n), v, np.float32) for k, n, v in [("exp", 3, 1.0), ("pose", 6, 0.5), ("shape", 2, 7.0)]}
    tgt = {k: np.zeros((1, n), np.float32) for k, n in [("exp", 3), ("pose", 6), ("shape", 2)]}
    mixed = FaceReconstructor.transfer(None, src, tgt)
    assert np.all(mixed["exp"] == 1.0) and np.all(mixed["pose"][:, 3:] == 0.5)
    assert np.all(mixed["pose"][:, :3] == 0) and np.all(mixed["shape"] == 0)


def test_infer_folder_goes_on_after_a_bad_file(photos, tmp_path, capsys):
    from ppface3d.apps.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    for n in ("astro.jpg", "broken.jpg"):
        os.link(photos / n, folder / n)
    rc = main(["--image", str(folder), "--output", str(tmp_path / "out")] + FAST)
    err = capsys.readouterr().err
    assert rc == 0
    assert "broken.jpg" in err and "not an image" in err
    assert (tmp_path / "out" / "astro" / "mesh.obj").is_file()
    assert not (tmp_path / "out" / "broken").exists()
    assert main(["--image", str(tmp_path / "nothing_here.jpg"), "--output", str(tmp_path / "o2")] + FAST) == 2


def test_infer_video(photos, tmp_path):
    import imageio.v3 as iio

    from ppface3d.apps.cli import main

    img = iio.imread(photos / "astro.jpg")
    frames = np.stack([np.roll(img, 8 * i, axis=1) for i in range(3)])
    video = tmp_path / "clip.mp4"
    iio.imwrite(video, frames, extension=".mp4", fps=5)
    rc = main(["--image", str(video), "--output", str(tmp_path / "out"), "--every", "2", "--max-frames", "2"] + FAST)
    assert rc == 0
    names = sorted(os.listdir(tmp_path / "out"))
    assert "clip_frame00000" in names and "clip_frame00002" in names
    assert (tmp_path / "out" / "clip_overlay.mp4").stat().st_size > 0


def test_weights_mode_errors(tmp_path):
    from ppengine.errors import InputError
    from ppface3d.apps.reconstruct import FaceReconstructor

    with pytest.raises(InputError, match="not found"):
        FaceReconstructor(weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(InputError, match="not found"):
        FaceReconstructor(config="configs/deca.yml", weights=str(tmp_path / "w.safetensors"))
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="config.yml"):  # a bare weights file: its config is needed
        FaceReconstructor(weights=str(tmp_path / "w.safetensors"))


def test_infer_with_trained_weights(photos, tmp_path):
    """Checkpoint mode: a DECA config + safetensors weights encode each face (no fitting)."""
    from ppengine.checkpoint import save_weights
    from ppengine.config import load_config
    from ppengine.trainer import build_model
    from ppface3d.apps.cli import main

    base = os.path.abspath("configs/_base_/face3d.yml")
    cfg_path = tmp_path / "tiny.yml"
    cfg_path.write_text(f"_base_: {base}\nmodel: {{encoder_depth: 18, image_size: 32, n_shape: 10, n_exp: 5, "
                        f"n_tex: 5}}\n")
    model = build_model(load_config(str(cfg_path)))
    save_weights(str(tmp_path / "w.safetensors"), model)
    rc = main(["--image", str(photos / "astro.jpg"), "--output", str(tmp_path / "out"), "-c", str(cfg_path),
               "--weights", str(tmp_path / "w.safetensors"), "--no-progress"])
    assert rc == 0
    codes = np.load(tmp_path / "out" / "astro" / "codes.npz")
    assert codes["shape"].shape == (1, 10) and codes["exp"].shape == (1, 5)
    assert (tmp_path / "out" / "astro" / "overlay.png").is_file()
    # a run folder as the trainer writes it (config.yml + final.safetensors) loads with no -c
    run = tmp_path / "run"
    run.mkdir()
    load_config(str(cfg_path)).save(str(run / "config.yml"))
    save_weights(str(run / "final.safetensors"), model)
    rc = main(["--image", str(photos / "astro.jpg"), "--output", str(tmp_path / "out2"), "--weights", str(run),
               "--no-progress"])
    assert rc == 0
    again = np.load(tmp_path / "out2" / "astro" / "codes.npz")
    for k in ("shape", "exp", "pose", "cam", "light"):
        np.testing.assert_allclose(again[k], codes[k], rtol=1e-5, atol=1e-6)
