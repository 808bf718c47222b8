"""The app's handlers without a browser: bad uploads give the CLI's one-line messages, visitor
folders are created and removed inside the work folder only, path safety."""
import os
import time

import numpy as np
import pytest

from ppapp.common import Sessions, is_inside, safe_name, take_upload
from ppapp.face import FIT, FaceService, FaceSettings
from ppapp.reconstruct_tab import outputs_for_page, reconstruct
from ppengine.errors import InputError


@pytest.fixture(scope="module")
def service():
    return FaceService(FaceSettings(fit_size=32, fit_iters=(3, 1)))


@pytest.fixture()
def sessions(tmp_path):
    return Sessions(str(tmp_path / "sessions"), ttl=60)


def _astronaut(path):
    import imageio.v3 as iio
    from skimage.data import astronaut

    iio.imwrite(path, astronaut())
    return str(path)


def test_bad_uploads_give_one_line_messages_and_the_good_one_goes_on(service, sessions, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    blank = tmp_path / "wall.png"
    import imageio.v3 as iio

    iio.imwrite(blank, np.full((256, 256, 3), 200, np.uint8))
    good = _astronaut(tmp_path / "astronaut.png")
    folder, results, lines = reconstruct(service, sessions, 20, [str(not_image), str(blank), good], FIT, None)
    assert is_inside(folder, sessions.root)
    assert [r[0] for r in results] == ["astronaut"]
    assert len(lines) == 3 and all("\n" not in ln for ln in lines)
    assert lines[0].startswith("notes.png: 0 face(s); ") and "not an image file" in lines[0]
    assert lines[1].startswith("wall.png: 0 face(s); no face found")
    assert lines[2] == "astronaut.png: face 0 reconstructed"
    # the same line the CLI prints for that photo (only the path is the visitor's file name)
    r = service.pre(str(blank))
    assert lines[1] == r.summary().replace(str(blank), "wall.png")
    glb, gallery, downloads = outputs_for_page(results)
    assert os.path.getsize(glb) > 1000 and glb.endswith(".glb")
    assert len(gallery) == 4 and len(downloads) == 3
    import zipfile

    names = zipfile.ZipFile(downloads[0]).namelist()
    assert sorted(names) == ["mesh.mtl", "mesh.obj", "mesh.png", "mesh_normals.png"]
    assert set(np.load(downloads[2]).files) >= {"shape", "exp", "pose", "tex", "cam", "light"}
    for path, _ in gallery:
        assert iio.imread(path).shape[-1] == 3 and is_inside(path, folder)


def test_too_large_and_missing_uploads(sessions, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * (2 * 1024 * 1024 + 10))
    folder = sessions.ensure(None)
    with pytest.raises(InputError, match=r"^big\.jpg: 2\.0 MB, more than the 2 MB upload limit"):
        take_upload(str(big), folder, max_mb=2)
    with pytest.raises(InputError, match="did not arrive"):
        take_upload(str(tmp_path / "gone.png"), folder, max_mb=2)
    with pytest.raises(InputError, match="no photo"):
        reconstruct(None, sessions, 2, [], FIT, folder)
    assert not os.listdir(folder)  # nothing half-written


def test_visitor_folders_stay_inside_and_are_cleaned(sessions, tmp_path):
    a = sessions.ensure(None)
    assert sessions.ensure(a) == a
    # a forged state (a folder elsewhere, the root itself, a traversal) gets a fresh folder
    for forged in (str(tmp_path), sessions.root, os.path.join(sessions.root, "..", "..")):
        f = sessions.ensure(forged)
        assert is_inside(f, sessions.root) and os.path.dirname(f) == sessions.root
    outside = tmp_path / "keep"
    outside.mkdir()
    assert not sessions.delete(str(outside)) and outside.exists()
    assert not sessions.delete(sessions.root) and os.path.isdir(sessions.root)
    assert not sessions.delete(os.path.join(a, "..", "..", "keep")) and outside.exists()
    (open(os.path.join(a, "x.png"), "w")).write("x")
    assert sessions.delete(a) and not os.path.exists(a)
    old, new = sessions.ensure(None), sessions.ensure(None)
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert sessions.sweep() == [old] and os.path.isdir(new)


def test_upload_names_are_never_paths():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("..\\..\\win.ini") == "win.ini"
    assert safe_name(".bashrc") == "bashrc"
    assert safe_name("a b/c d.png") == "c_d.png"
    assert not is_inside("/etc/passwd", "/tmp") and is_inside("/tmp/x/../x/y", "/tmp/x")


def test_deca_choice_needs_weights(service):
    assert service.choices() == [FIT]
    with pytest.raises(InputError, match="--weights"):
        service.reconstructor("DECA (trained weights)")


def test_generate_samples_a_trained_run(digits_runs, sessions):
    import imageio.v3 as iio

    from ppapp.generate_tab import find_runs, generate

    runs = find_runs(digits_runs)
    assert [os.path.basename(r) for r in runs] == ["class2img_digits"]
    folder, grid, samples = generate(sessions, runs[0], None, classes="3 5", num=2, steps=2, guidance=2.0, seed=1)
    assert len(samples) == 4 and is_inside(grid, folder)
    imgs = [iio.imread(s) for s in samples]
    assert all(im.shape[:2] == (16, 16) for im in imgs)
    # seeded: the same request gives the same pixels
    _, _, again = generate(sessions, runs[0], folder, classes="3 5", num=2, steps=2, guidance=2.0, seed=1)
    assert all((iio.imread(a) == b).all() for a, b in zip(again, imgs))
    with pytest.raises(InputError, match="whole numbers"):
        generate(sessions, runs[0], folder, classes="three")
    with pytest.raises(InputError, match="not in 0..9|0..9"):
        generate(sessions, runs[0], folder, classes="12", num=1, steps=1)


def test_transfer_writes_gif_and_mesh_and_reports_a_bad_photo(service, sessions, tmp_path):
    import imageio.v3 as iio

    from ppapp.transfer_tab import transfer

    src = _astronaut(tmp_path / "source.png")
    tgt = tmp_path / "target.png"
    iio.imwrite(tgt, iio.imread(src)[:, ::-1])  # the mirrored photo: another pose of the face
    folder, out = transfer(service, sessions, 20, src, str(tgt), FIT, None, frames=4)
    frames = iio.imread(out["gif"], index=None)
    assert frames.ndim == 4 and frames.shape[0] == 4
    assert open(out["glb"], "rb").read(4) == b"glTF" and all(is_inside(p, folder) for p in out.values())
    import zipfile

    assert sorted(zipfile.ZipFile(out["obj_zip"]).namelist()) == ["transfer.mtl", "transfer.obj", "transfer.png"]
    blank = tmp_path / "wall.png"
    iio.imwrite(blank, np.full((128, 128, 3), 90, np.uint8))
    with pytest.raises(InputError, match=r"^source photo: wall\.png: 0 face\(s\); no face found"):
        transfer(service, sessions, 20, str(blank), str(tgt), FIT, folder)
    with pytest.raises(InputError, match="two photos"):
        transfer(service, sessions, 20, None, str(tgt), FIT, folder)
