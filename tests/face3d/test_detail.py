"""DECA's detail branch: decoder / encoder layouts, UV maps, detail normals against finite
differences of the displaced surface (NumPy), the dense displaced mesh, and the detail render."""
import numpy as np
import paddle
import pytest

from ppengine.errors import InputError
from ppface3d.models.detail import DetailDecoder, DetailEncoder
from ppface3d.models.displacement import UVMap, displacement2normal, grid_triangles


def test_decoder_layout_and_shapes():
    dec = DetailDecoder()
    dec.eval()
    names = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert names["l1.0.weight"] == (181, 8192)  # Paddle Linear: (in, out) = DECA's (8192, 181) transposed
    convs = {i: c for i, c in zip((2, 6, 10, 14, 18, 21), ((128, 128), (64, 128), (64, 64), (32, 64), (16, 32), (1, 16)))}
    for i, (cout, cin) in convs.items():
        assert names[f"conv_blocks.{i}.weight"] == (cout, cin, 3, 3)
    for i, c in ((0, 128), (3, 128), (7, 64), (11, 64), (15, 32), (19, 16)):
        assert names[f"conv_blocks.{i}._mean"] == (c,)
        assert dec.conv_blocks[i]._epsilon == (1e-5 if i == 0 else 0.8)  # DECA's BatchNorm2d(C, 0.8)
    z = dec.displacement(paddle.randn([2, 128]), paddle.randn([2, 50]), paddle.randn([2, 3]))
    assert z.shape == [2, 1, 256, 256]
    assert float(z.abs().max()) <= 0.01 + 1e-7
    with pytest.raises(InputError, match="181"):
        dec(paddle.zeros([2, 180]))


def test_decoder_input_order():
    """DECA concatenates [jaw pose, expression, detail]: the jaw goes in first."""
    dec = DetailDecoder()
    dec.eval()
    d, e, j = paddle.randn([1, 128]), paddle.randn([1, 50]), paddle.randn([1, 3])
    np.testing.assert_allclose(dec.displacement(d, e, j).numpy(), dec(paddle.concat([j, e, d], 1)).numpy())


def test_detail_encoder_names():
    enc = DetailEncoder(width=8)
    enc.eval()
    sd = enc.state_dict()
    assert "encoder.layer4.2.conv3.weight" in sd and "encoder.layer1.0.downsample.1._variance" in sd
    assert tuple(sd["layers.2.weight"].shape) == (8 * 8 * 4 // 2, 128)
    assert enc(paddle.rand([2, 3, 64, 64])).shape == [2, 128]
    assert tuple(DetailEncoder().state_dict()["layers.0.weight"].shape) == (2048, 1024)


def test_grid_triangles_as_deca():
    tri = grid_triangles(4, 5, 0, 0)
    # DECA's generate_triangles(h=4, w=5, 0, 0): first cell (x=0, y=0) -> [0, 5, 1], [1, 5, 6]
    np.testing.assert_array_equal(tri[:2], [[0, 5, 1], [1, 5, 6]])
    assert len(tri) == 2 * 3 * 4
    assert len(grid_triangles(256, 256)) == 2 * (256 - 1 - 4) * (256 - 1 - 10)


def _grid_mesh(n=6):
    """A flat n x n vertex grid over the unit UV square, UV = (x, y), faces == uv_faces."""
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    uv = np.stack([u.ravel(), v.ravel()], 1)
    f = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            f += [[a, b, d], [a, d, c]]
    return uv, np.asarray(f)


def test_world2uv_interpolates_at_texel_centres():
    uv, f = _grid_mesh()
    S = 16
    m = UVMap(uv, f, f, S)
    assert m.covered.all()
    attr = paddle.to_tensor(np.concatenate([uv, uv[:, :1] * 0 + 1], 1)[None].astype(np.float32))
    out = m.world2uv(attr).numpy()[0]  # (3, S, S)
    cols, rows = np.meshgrid(np.arange(S), np.arange(S))
    np.testing.assert_allclose(out[0], (cols + 0.5) / S, atol=1e-5)       # u by column
    np.testing.assert_allclose(out[1], 1.0 - (rows + 0.5) / S, atol=1e-5)  # v up: row 0 is the top
    np.testing.assert_allclose(out[2], 1.0, atol=1e-5)


def _surface(S):
    """Coarse surface P(u, v) = (u, v, h(u, v)) on the texel grid (u by column, v up), its unit
    normals, a displacement field and a fixed displacement, all smooth."""
    cols, rows = np.meshgrid(np.arange(S), np.arange(S))
    u, v = (cols + 0.5) / S, 1.0 - (rows + 0.5) / S
    h = 0.15 * np.sin(2.0 * u) * np.cos(1.5 * v)
    hu = 0.15 * 2.0 * np.cos(2.0 * u) * np.cos(1.5 * v)
    hv = -0.15 * 1.5 * np.sin(2.0 * u) * np.sin(1.5 * v)
    P = np.stack([u, v, h], -1)
    N = np.stack([-hu, -hv, np.ones_like(h)], -1)
    N /= np.linalg.norm(N, axis=-1, keepdims=True)
    z = 0.01 * np.sin(9.0 * u) * np.sin(7.0 * v)
    fixed = 0.004 * np.cos(5.0 * u + 3.0 * v)
    return P, N, z, fixed


def _fd_normals(D):
    """Central-difference normals of a (S, S, 3) surface sampled on the texel grid (NumPy)."""
    du = D[1:-1, 2:] - D[1:-1, :-2]
    dv = D[:-2, 1:-1] - D[2:, 1:-1]  # v grows upwards = towards row 0
    n = np.cross(du, dv)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def test_detail_normals_match_finite_differences():
    S = 64
    P, N, z, fixed = _surface(S)
    mask = np.zeros((S, S), np.float32)
    mask[8:56, 6:58] = 1.0
    t = lambda a: paddle.to_tensor(np.ascontiguousarray(a.transpose(2, 0, 1)[None]).astype(np.float32))  # noqa: E731
    out = displacement2normal(paddle.to_tensor(z[None, None].astype(np.float32)), t(P), t(N),
                              mask, fixed.astype(np.float32)).numpy()[0].transpose(1, 2, 0)
    D = P + (z * mask + fixed)[..., None] * N
    ref = _fd_normals(D)  # (S-2, S-2, 3), texel (r, c) at [r-1, c-1]
    inner = np.zeros((S, S), bool)
    inner[10:54, 8:56] = True  # away from the mask's edge
    got = out[inner]
    want = ref[inner[1:-1, 1:-1]]
    ang = np.degrees(np.arccos(np.clip((got * want).sum(-1), -1, 1)))
    print(f"detail normals vs finite differences: max {ang.max():.3f} deg, mean {ang.mean():.4f} deg")
    assert ang.max() < 0.5 and ang.mean() < 0.1, (ang.max(), ang.mean())
    # the displacement matters: the coarse normals are far from these
    coarse = np.degrees(np.arccos(np.clip((N[inner] * want).sum(-1), -1, 1)))
    assert coarse.mean() > 5 * ang.mean() + 1.0
    # outside the mask: the coarse normals, as DECA
    np.testing.assert_allclose(out[mask == 0], N[mask == 0], atol=1e-6)
    # the fixed displacement is part of the surface: leaving it out is measurably different
    out0 = displacement2normal(paddle.to_tensor(z[None, None].astype(np.float32)), t(P), t(N), mask).numpy()[0]
    ang0 = np.degrees(np.arccos(np.clip((out0.transpose(1, 2, 0)[inner] * want).sum(-1), -1, 1)))
    assert ang0.mean() > 5 * ang.mean()


def test_dense_mesh_is_displaced_grid():
    uv, f = _grid_mesh()
    S = 32
    m = UVMap(uv, f, f, S)
    verts = np.concatenate([uv, np.zeros((len(uv), 1))], 1)
    normals = np.tile([0.0, 0.0, 1.0], (len(uv), 1))
    rng = np.random.default_rng(0)
    disp = rng.normal(0, 0.01, (S, S)).astype(np.float32)
    mask = np.zeros((S, S))
    mask[4:28, 3:30] = 1
    tex = rng.random((S, S, 3))
    dv, df, col = m.dense_mesh(verts, normals, disp, mask, tex)
    rows, cols = np.nonzero(mask)
    assert dv.shape == (len(rows), 3)
    np.testing.assert_allclose(dv[:, 0], (cols + 0.5) / S, atol=1e-5)
    np.testing.assert_allclose(dv[:, 1], 1 - (rows + 0.5) / S, atol=1e-5)
    np.testing.assert_allclose(dv[:, 2], disp[rows, cols], atol=1e-6)
    np.testing.assert_allclose(col, tex[rows, cols])
    assert df.min() >= 0 and df.max() < len(dv)
    # the kept grid cells: inside the mask and DECA's margins (2 columns, 5 rows)
    cells = sum(1 for r in range(5, S - 6) for c in range(2, S - 3)
                if mask[r, c] and mask[r, c + 1] and mask[r + 1, c] and mask[r + 1, c + 1])
    assert len(df) == 2 * cells
    # faces face +z (the normals' side), as the coarse mesh's
    e = np.cross(dv[df[:, 1]] - dv[df[:, 0]], dv[df[:, 2]] - dv[df[:, 0]])
    assert (e[:, 2] > 0).all()


def test_detail_render_matches_coarse_without_displacement():
    """Zero displacement: the detail normals are the coarse surface's, so the renderer's
    normal-map path shades like the plain vertex-normal path."""
    from ppface3d import FaceModel
    from ppface3d.render.mesh import vertex_normals

    face = FaceModel(n_shape=10, n_exp=10, n_tex=10, image_size=64)
    dec = face.decode({"shape": paddle.zeros([1, 10]), "cam": paddle.to_tensor(
        face.framing_camera(face.mean_landmarks())[None])})
    m = UVMap(face.uv_coords, face.uv_faces, face.faces, 128)
    normals = vertex_normals(dec["vertices"], paddle.to_tensor(np.asarray(face.faces, np.int64)))
    uvn = displacement2normal(paddle.zeros([1, 1, 128, 128]), m.world2uv(dec["vertices"]), m.world2uv(normals),
                              m.covered.astype(np.float32))
    plain = face.render(dec, mode="shape")
    detail = face.render(dec, mode="shape", normal_map=uvn)
    a = plain["alpha_images"].numpy()[0, 0] > 0.5
    diff = np.abs(plain["images"].numpy()[0] - detail["images"].numpy()[0])[:, a]
    assert np.median(diff) < 0.01 and np.mean(diff) < 0.03, (np.median(diff), diff.mean())
    # and a displacement changes the shading
    bumps = paddle.to_tensor((0.003 * np.sin(np.arange(128) * 0.8)[None, :] * np.ones((128, 1)))[None, None]
                             .astype(np.float32))
    uvb = displacement2normal(bumps, m.world2uv(dec["vertices"]), m.world2uv(normals), m.covered.astype(np.float32))
    bumped = face.render(dec, mode="shape", normal_map=uvb)["images"].numpy()[0]
    assert np.abs(bumped - detail["images"].numpy()[0])[:, a].mean() > 3 * np.mean(diff)


def test_bad_inputs():
    with pytest.raises(InputError, match="share S"):
        displacement2normal(paddle.zeros([1, 1, 8, 8]), paddle.zeros([1, 3, 16, 16]), paddle.zeros([1, 3, 16, 16]))
    with pytest.raises(InputError, match="mask"):
        displacement2normal(paddle.zeros([1, 1, 16, 16]), paddle.zeros([1, 3, 16, 16]), paddle.zeros([1, 3, 16, 16]),
                            np.ones((8, 8)))
