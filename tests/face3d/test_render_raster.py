"""Rasterizer: face-index buffer of the generated FLAME head vs trimesh ray casting, C++ vs pure-Paddle backends, culling,
perspective-correct interpolation vs analytic ray-plane intersections, errors, build cache."""
import subprocess
import sys
import warnings

import numpy as np
import paddle
import pytest
import trimesh

from ppengine.errors import InputError
from ppface3d.render import PerspectiveCamera, _build, interpolate, rasterize
from ppface3d.render import raster as rz


def bumpy_sphere(subdivisions=5, seed=0):
    """A closed, non-convex mesh (>= FLAME size at subdivisions=5: 10,242 vertices, 20,480 faces)."""
    m = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = np.array(m.vertices, np.float64)
    v = v * (1.0 + 0.12 * np.sin(4 * v[:, :1] + seed) * np.cos(3 * v[:, 1:2]) + 0.05 * np.sin(7 * v[:, 2:3]))
    return v.astype(np.float32), np.array(m.faces, np.int64)


def to_screen(v, scale=0.8, shift=(0.0, 0.0)):
    """World (y up, z to viewer) -> screen NDC (y down, smaller z closer), orthographic."""
    s = v * scale
    return np.stack([s[:, 0] + shift[0], -s[:, 1] + shift[1], -s[:, 2]], 1).astype(np.float32)


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def flame_head():
    """The generated FLAME head (about 5k vertices / 10k faces), centred, y up."""
    from ppface3d.flame import FLAME

    flame = FLAME()
    v = flame(shape=paddle.zeros([1, 10])).vertices[0].numpy()
    v = v - (v.max(0) + v.min(0)) / 2
    return (v / np.abs(v).max()).astype(np.float32), np.asarray(flame.faces, np.int64)


def test_face_index_matches_trimesh_ray_casting():
    v, f = flame_head()
    assert len(f) > 9000
    v = (v @ rotation(0.2, 0.6, 0.05).T).astype(np.float32)
    sv = to_screen(v, 0.9, (0.05, -0.03))
    S = 224
    mesh = trimesh.Trimesh(sv.astype(np.float64), f, process=False)
    c = (2 * np.arange(S) + 1) / S - 1
    X, Y = np.meshgrid(c, c)
    origins = np.stack([X.ravel(), Y.ravel(), np.full(S * S, -10.0)], 1)
    hit = mesh.ray.intersects_first(origins, np.tile([0.0, 0.0, 1.0], (S * S, 1)))
    for backend in ("cpp", "paddle"):
        fr = rasterize(paddle.to_tensor(sv[None]), f, S, backend=backend)
        p2f = fr.pix_to_face.numpy().reshape(-1)
        covered = (hit >= 0) | (p2f >= 0)
        assert covered.sum() > 0.2 * S * S
        agree = (hit[covered] == p2f[covered]).mean()
        assert agree >= 0.995, f"{backend}: face index agrees with ray casting on only {agree:.4%} of covered pixels"
    # depth of the visible surface equals the ray hit point
    zb = fr.zbuf.numpy().reshape(-1)
    both = np.nonzero((hit >= 0) & (hit == p2f))[0][::50]
    loc, idx_ray, _ = mesh.ray.intersects_location(origins[both], np.tile([0.0, 0.0, 1.0], (len(both), 1)), multiple_hits=False)
    np.testing.assert_allclose(zb[both][idx_ray], loc[:, 2], atol=1e-4)


@pytest.mark.parametrize("perspective", [False, True])
def test_backends_agree(perspective):
    v, f = bumpy_sphere(4, seed=1)
    B = 2
    verts = []
    for b in range(B):
        vb = (v @ rotation(0.2 * b, 0.4 - 0.3 * b, 0.0).T).astype(np.float32)
        if perspective:
            cam = PerspectiveCamera.front(3.0 + b, 2.5)
            vb = cam.transform(paddle.to_tensor(vb[None])).numpy()[0]
        else:
            vb = to_screen(vb, 0.7 + 0.1 * b)
        verts.append(vb)
    V = paddle.to_tensor(np.stack(verts).astype(np.float32))
    outs = [
        rasterize(V, f, (96, 80), perspective_correct=perspective, backend=be) for be in ("cpp", "paddle")
    ]
    a, b = (o.pix_to_face.numpy() for o in outs)
    assert (a >= 0).mean() > 0.2
    assert (a == b).mean() >= 0.999
    same = a == b
    np.testing.assert_allclose(outs[0].bary_coords.numpy()[same], outs[1].bary_coords.numpy()[same], atol=2e-5)
    np.testing.assert_allclose(outs[0].zbuf.numpy()[same], outs[1].zbuf.numpy()[same], atol=2e-5)
    np.testing.assert_allclose(outs[0].bary_coords.numpy().sum(-1)[a >= 0], 1.0, atol=1e-5)


def test_backface_culling():
    v, f = bumpy_sphere(3)
    sv = paddle.to_tensor(to_screen(v)[None])
    for be in ("cpp", "paddle"):
        plain = rasterize(sv, f, 64, backend=be).pix_to_face.numpy()
        culled = rasterize(sv, f, 64, cull_backfaces=True, backend=be).pix_to_face.numpy()
        np.testing.assert_array_equal(plain, culled)  # a closed mesh: front faces win anyway
        flipped = rasterize(sv, f[:, ::-1].copy(), 64, cull_backfaces=True, backend=be)
        seen = np.unique(flipped.pix_to_face.numpy())
        front = np.unique(plain)
        # with reversed winding only the far hemisphere's faces survive culling
        assert len(np.intersect1d(seen[seen >= 0], front[front >= 0])) < 0.02 * len(front)
        z_plain = rasterize(sv, f, 64, backend=be).zbuf.numpy()
        covered = flipped.mask.numpy() > 0
        assert (flipped.zbuf.numpy()[covered] > z_plain[covered]).mean() > 0.99


def test_perspective_correct_matches_ray_plane_intersection():
    # A tilted quad in front of a pinhole camera; interpolated camera-space positions must lie
    # where each pixel's ray hits the plane (only true with perspective-correct barycentrics).
    quad = np.array([[-1, -1, 3.0], [1, -1, 5.0], [1, 1, 5.0], [-1, 1, 3.0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    f = 2.5
    screen = np.stack([f * quad[:, 0] / quad[:, 2], f * quad[:, 1] / quad[:, 2], quad[:, 2]], 1)
    S = 48
    c = (2 * np.arange(S) + 1) / S - 1
    X, Y = np.meshgrid(c, c)
    # plane through the quad: z = 4 + x (camera frame); ray (X/f, Y/f, 1) * t -> t = 4 / (1 - X/f)
    t = 4.0 / (1.0 - X / f)
    truth = np.stack([X / f * t, Y / f * t, t], -1)
    errs = {}
    for pc in (True, False):
        for be in ("cpp", "paddle"):
            fr = rasterize(paddle.to_tensor(screen[None]), faces, S, perspective_correct=pc, backend=be)
            pos = interpolate(fr, paddle.to_tensor(quad[None]), paddle.to_tensor(faces)).numpy()[0]
            m = fr.mask.numpy()[0] > 0
            assert m.mean() > 0.3
            errs[(pc, be)] = np.abs(pos[m] - truth[m]).max()
            if pc:
                np.testing.assert_allclose(fr.zbuf.numpy()[0][m], truth[..., 2][m], rtol=1e-4)
    assert errs[(True, "cpp")] < 1e-3 and errs[(True, "paddle")] < 1e-3
    assert errs[(False, "cpp")] > 0.05  # affine interpolation is visibly wrong here


def test_bad_inputs_raise_input_error():
    v = paddle.zeros([1, 4, 3])
    with pytest.raises(InputError, match="vertices"):
        rasterize(paddle.zeros([1, 4, 2]), np.array([[0, 1, 2]]), 8)
    with pytest.raises(InputError, match="faces"):
        rasterize(v, np.array([0, 1, 2]), 8)
    with pytest.raises(InputError, match="only 4 vertices"):
        rasterize(v, np.array([[0, 1, 7]]), 8)
    with pytest.raises(InputError, match="backend"):
        rasterize(v, np.array([[0, 1, 2]]), 8, backend="opengl")
    with pytest.raises(InputError, match="image_size"):
        rasterize(v, np.array([[0, 1, 2]]), (8, 0))


def test_falls_back_to_paddle_with_one_warning_without_compiler(monkeypatch):
    monkeypatch.setattr(_build, "_MODULE", None)
    monkeypatch.setattr(_build, "_ERROR", None)
    monkeypatch.setattr(_build, "find_compiler", lambda: None)
    monkeypatch.setattr(rz, "_warned_fallback", False)
    v, f = bumpy_sphere(2)
    sv = paddle.to_tensor(to_screen(v)[None])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = rasterize(sv, f, 32)
        rasterize(sv, f, 32)
    msgs = [str(x.message) for x in w if "ppface3d.render" in str(x.message)]
    assert len(msgs) == 1 and "no C++ compiler" in msgs[0] and "\n" not in msgs[0]
    assert rz.default_backend() == "paddle"
    with pytest.raises(InputError, match="C\\+\\+ backend is unavailable"):
        rasterize(sv, f, 32, backend="cpp")
    monkeypatch.setattr(_build, "_ERROR", None)
    monkeypatch.undo()
    b = rasterize(sv, f, 32, backend="cpp")
    np.testing.assert_array_equal(a.pix_to_face.numpy(), b.pix_to_face.numpy())


def test_operator_is_cached_on_disk():
    _build.load_op()
    _, _, _, key = _build._config()
    lib = _build.cache_root() / f"ppf3d_raster_{key}" / f"ppf3d_raster_{key}" / f"ppf3d_raster_{key}.so"
    assert lib.exists()
    # a fresh process must load the cached library, never call the compiler again
    code = (
        "import paddle.utils.cpp_extension as ce\n"
        "def boom(*a, **k):\n    raise SystemExit('recompiled although a cached build exists')\n"
        "ce.load = boom\n"
        "from ppface3d.render import _build\n"
        "assert hasattr(_build.load_op(), 'ppf3d_rasterize')\n"
        "print('cached-ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "cached-ok" in r.stdout, r.stderr[-2000:]


def test_thread_count_does_not_change_results(monkeypatch):
    v, f = bumpy_sphere(3)
    sv = to_screen(v, 0.9)
    outs = []
    for n in ("1", "3"):
        monkeypatch.setenv("PPFACE3D_NUM_THREADS", n)
        V = paddle.to_tensor(np.stack([sv, sv * 0.7]), stop_gradient=False)
        fr = rasterize(V, f, (50, 37), backend="cpp", sigma=3e-4)
        (fr.bary_coords.sum(-1) * fr.zbuf + fr.soft_alpha * 2).sum().backward()
        outs.append((fr.pix_to_face.numpy(), fr.bary_coords.numpy(), fr.soft_alpha.numpy(), V.grad.numpy()))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_allclose(outs[0][2], outs[1][2], atol=1e-6)
    np.testing.assert_allclose(outs[0][3], outs[1][3], atol=1e-4 * np.abs(outs[0][3]).max())


@pytest.mark.parametrize("backend", ["cpp", "paddle"])
def test_empty_and_offscreen_meshes(backend):
    v, f = bumpy_sphere(2)
    empty = rasterize(paddle.to_tensor(to_screen(v)[None]), np.zeros((0, 3), np.int64), 16, backend=backend)
    assert (empty.pix_to_face.numpy() == -1).all() and (empty.zbuf.numpy() == 0).all()
    off = rasterize(paddle.to_tensor(to_screen(v, 0.3, (5.0, -4.0))[None]), f, 16, backend=backend, sigma=1e-4)
    assert (off.pix_to_face.numpy() == -1).all() and float(off.soft_alpha.max()) == 0.0
