"""ppengine.io: the one atomic writer (umask mode, no leftovers, old file kept until the rename)
and the uint8 / PNG helpers."""
import os
import stat

import numpy as np
import paddle
import pytest
from PIL import Image

from ppengine.io import (
    atomic_dir,
    atomic_path,
    atomic_save,
    atomic_write_bytes,
    atomic_write_json,
    image_grid,
    save_png,
    to_uint8,
)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_written_files_get_the_umask_mode_not_0600(tmp_path, umask022):
    a = atomic_write_bytes(str(tmp_path / "a.bin"), b"abc")
    b = atomic_write_json(str(tmp_path / "sub" / "b.json"), {"x": np.float32(1.5), "y": np.arange(2)})
    c = save_png(str(tmp_path / "c.png"), np.zeros((4, 4, 3), np.float32))
    d = atomic_save(str(tmp_path / "d.npy"), lambda t: np.save(t, np.ones(3)))
    for p in (a, b, c, d):
        assert _mode(p) == 0o644, (p, oct(_mode(p)))
    with atomic_dir(str(tmp_path / "folder")) as tmp:
        atomic_write_bytes(os.path.join(tmp, "f"), b"1")
    assert _mode(tmp_path / "folder") == 0o755 and _mode(tmp_path / "folder" / "f") == 0o644
    os.umask(0o077)
    assert _mode(atomic_write_bytes(str(tmp_path / "private"), b"s")) == 0o600  # the umask decides
    assert open(a, "rb").read() == b"abc" and np.load(d).tolist() == [1.0, 1.0, 1.0]


def test_failure_mid_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(str(target), b"old")

    class Boom(RuntimeError):
        pass

    def bad_writer(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        assert target.read_bytes() == b"old"  # overwriting: the old file is intact until the rename
        raise Boom()

    with pytest.raises(Boom):
        atomic_save(str(target), bad_writer)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]  # no temporary file left
    with pytest.raises(Boom):
        with atomic_path(str(tmp_path / "new.png")):
            raise Boom()
    with pytest.raises(Boom):
        with atomic_dir(str(tmp_path / "newdir")) as d:
            open(os.path.join(d, "x"), "w").close()
            raise Boom()
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
    # a successful overwrite replaces the content
    atomic_write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_to_uint8_layouts_and_ranges():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 5, 6)).astype(np.float32)
    want = np.floor(np.clip((x + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    got = to_uint8(x, value_range=(-1, 1))
    assert got.dtype == np.uint8 and got.shape == (2, 5, 6, 3)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(to_uint8(paddle.to_tensor(x), (-1, 1)), want)            # a Tensor
    np.testing.assert_array_equal(to_uint8(x.transpose(0, 2, 3, 1), (-1, 1)), want)       # NHWC in
    np.testing.assert_array_equal(to_uint8((x + 1) / 2), want)                              # default [0, 1]
    np.testing.assert_array_equal(to_uint8(x[0], (-1, 1)), want[0])                         # one CHW image
    assert to_uint8(np.array([[-5.0, 0.5, 9.0]])).tolist() == [[0, 128, 255]]              # clipped, rounded
    u = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(to_uint8(u), u)                                           # uint8 passes
    with pytest.raises(ValueError):
        to_uint8(np.zeros((4, 4, 5)))  # no channel axis


def test_save_png_and_grid_round_trip(tmp_path):
    img = np.random.default_rng(1).uniform(0, 1, (3, 7, 9)).astype(np.float32)
    p = save_png(str(tmp_path / "x.png"), img)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), to_uint8(img))
    gray = np.full((5, 1, 4, 4), -1.0, np.float32)
    g = image_grid(gray, nrow=2, pad=1, upscale=2, value_range=(-1, 1))
    assert g.shape == (3 * 9 + 1, 2 * 9 + 1, 3)
    assert (g[1:9, 1:9] == 0).all() and (g[0] == 255).all() and (g[-9:-1, 10:18] == 255).all()
