"""Interpolation, UV texture sampling, SH shading, normals, cameras and the Renderer, each
against an independent reference (analytic identities, scipy, numpy formulas)."""
import numpy as np
import paddle
import pytest
import trimesh
from scipy import ndimage, special

from ppengine.errors import InputError
from ppface3d.render import (
    OrthographicCamera,
    PerspectiveCamera,
    Renderer,
    face_vertices,
    interpolate,
    ndc_to_pixels,
    rasterize,
    sample_texture,
    sh_basis,
    sh_shading,
    vertex_normals,
)


def sphere(sub=3):
    m = trimesh.creation.icosphere(subdivisions=sub)
    return np.array(m.vertices, np.float32), np.array(m.faces, np.int64)


@pytest.mark.parametrize("backend", ["cpp", "paddle"])
def test_interpolating_screen_positions_gives_pixel_centres(backend):
    v, f = sphere(3)
    sv = np.stack([0.8 * v[:, 0] + 0.1, -0.8 * v[:, 1], -0.8 * v[:, 2]], 1).astype(np.float32)
    H, W = 30, 44
    V = paddle.to_tensor(sv[None])
    fr = rasterize(V, f, (H, W))
    m = fr.mask.numpy()[0] > 0
    pos = interpolate(fr, V, paddle.to_tensor(f), backend).numpy()[0]
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    np.testing.assert_allclose(pos[..., 0][m], ((2 * jj + 1) / W - 1)[m], atol=1e-5)
    np.testing.assert_allclose(pos[..., 1][m], ((2 * ii + 1) / H - 1)[m], atol=1e-5)
    np.testing.assert_allclose(pos[..., 2][m], fr.zbuf.numpy()[0][m], atol=1e-6)
    assert np.all(pos[~m] == 0)
    # per-face-corner attributes give the same result
    fpos = interpolate(fr, face_vertices(V, paddle.to_tensor(f))[0], None, backend).numpy()[0]
    np.testing.assert_allclose(fpos, pos, atol=1e-6)
    with pytest.raises(InputError):
        interpolate(fr, paddle.zeros([2, len(v), 3]), paddle.to_tensor(f), backend)


def test_sample_texture_matches_scipy_bilinear():
    rng = np.random.default_rng(0)
    tex = rng.uniform(size=(2, 3, 17, 23)).astype(np.float32)
    uv = rng.uniform(0.02, 0.98, size=(2, 5, 7, 2)).astype(np.float32)
    out = sample_texture(paddle.to_tensor(tex), paddle.to_tensor(uv)).numpy()
    # texel centres: column = u * Wt - 0.5, row = (1 - v) * Ht - 0.5 (v up, row 0 on top)
    cols = uv[..., 0] * 23 - 0.5
    rows = (1 - uv[..., 1]) * 17 - 0.5
    for b in range(2):
        for c in range(3):
            ref = ndimage.map_coordinates(tex[b, c].astype(np.float64), [rows[b].ravel(), cols[b].ravel()], order=1, mode="nearest")
            np.testing.assert_allclose(out[b, c].ravel(), ref, atol=1e-5)


def _real_sh(l, m, n):
    """Real spherical harmonics from scipy's complex ones (independent of DECA's formulas)."""
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    theta = np.arccos(np.clip(z, -1, 1))
    phi = np.arctan2(y, x)
    Y = special.sph_harm_y(l, abs(m), theta, phi)
    if m == 0:
        return Y.real
    return np.sqrt(2) * (-1) ** m * (Y.imag if m < 0 else Y.real)


def test_sh_basis_is_lambertian_scaled_real_sh():
    rng = np.random.default_rng(1)
    n = rng.normal(size=(400, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    basis = sh_basis(paddle.to_tensor(n.T.reshape(1, 3, 20, 20).astype(np.float32))).numpy()[0].reshape(9, -1)
    nn = n.reshape(20, 20, 3).reshape(-1, 3)
    # DECA's order 1, x, y, z, xy, xz, yz, x^2-y^2, 3z^2-1 and band factors (1, 2pi/3, pi/4)
    order = [(0, 0), (1, 1), (1, -1), (1, 0), (2, -2), (2, 1), (2, -1), (2, 2), (2, 0)]
    band = {0: 1.0, 1: 2 * np.pi / 3, 2: np.pi / 4}
    for k, (l, m) in enumerate(order):
        ref = band[l] * _real_sh(l, m, nn)
        sign = np.sign((ref * basis[k]).sum())
        np.testing.assert_allclose(basis[k], sign * ref, atol=1e-5)
    # shading = sum_k basis_k * coeff_k per colour
    coeffs = rng.normal(size=(1, 9, 3)).astype(np.float32)
    sh = sh_shading(paddle.to_tensor(n.T.reshape(1, 3, 20, 20).astype(np.float32)), paddle.to_tensor(coeffs)).numpy()[0]
    np.testing.assert_allclose(sh.reshape(3, -1), coeffs[0].T @ basis, atol=1e-5)
    with pytest.raises(InputError, match="lights"):
        sh_shading(paddle.zeros([1, 3, 2, 2]), paddle.zeros([1, 8, 3]))


def test_vertex_normals_of_sphere_are_radial():
    v, f = sphere(3)
    n = vertex_normals(paddle.to_tensor(v[None] * 2.0), paddle.to_tensor(f)).numpy()[0]
    np.testing.assert_allclose(n, v / np.linalg.norm(v, axis=1, keepdims=True), atol=2e-2)
    ref = trimesh.Trimesh(v, f, process=False).vertex_normals
    assert (np.sum(n * ref, axis=1) > 0.999).all()


def test_cameras_match_formulas():
    rng = np.random.default_rng(3)
    p = rng.normal(size=(2, 6, 3)).astype(np.float32)
    cam = np.array([[1.3, 0.1, -0.2], [0.7, 0.0, 0.3]], np.float32)
    out = OrthographicCamera(cam).transform(paddle.to_tensor(p)).numpy()
    s = cam[:, None, :1]
    ref = np.concatenate([s * (p[..., :1] + cam[:, None, 1:2]), -s * (p[..., 1:2] + cam[:, None, 2:3]), -s * p[..., 2:]], -1)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    R = np.stack([trimesh.transformations.rotation_matrix(a, [0, 1, 0.2])[:3, :3] for a in (0.1, -0.3)]).astype(np.float32)
    T = np.array([[0, 0, 5.0], [0.1, 0, 6.0]], np.float32)
    pc = np.einsum("bij,bnj->bni", R, p) + T[:, None]
    out = PerspectiveCamera(R, T, focal=2.0, principal_point=[0.1, -0.1]).transform(paddle.to_tensor(p)).numpy()
    np.testing.assert_allclose(out[..., 0], 2.0 * pc[..., 0] / pc[..., 2] + 0.1, atol=1e-5)
    np.testing.assert_allclose(out[..., 1], 2.0 * pc[..., 1] / pc[..., 2] - 0.1, atol=1e-5)
    np.testing.assert_allclose(out[..., 2], pc[..., 2], atol=1e-5)
    px = ndc_to_pixels(paddle.to_tensor([[-1.0, -1.0], [1.0, 1.0]]), 10).numpy()
    np.testing.assert_allclose(px, [[-0.5, -0.5], [9.5, 9.5]])
    with pytest.raises(InputError):
        OrthographicCamera(np.zeros((2, 2)))


def test_renderer_outputs_and_compositing():
    v, f = sphere(3)
    uv = np.stack([0.5 + np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi), 0.5 + np.arcsin(np.clip(v[:, 1], -1, 1)) / np.pi], 1)
    B, S = 2, 32
    r = Renderer(S, f, uv, f, sigma=1e-4)
    V = paddle.to_tensor(np.stack([v, v * 0.8]))
    cam = OrthographicCamera([[0.8, 0, 0], [0.9, 0.1, 0]])
    tex = paddle.full([B, 3, 8, 8], 0.5)
    lights = np.zeros((B, 9, 3), np.float32)
    lights[:, 0] = 1.0 / sh_basis(paddle.ones([1, 3, 1, 1]) / np.sqrt(3)).numpy()[0, 0, 0, 0]  # ambient = 1
    bg = paddle.full([B, 3, S, S], 0.25)
    out = r(V, cam, albedos=tex, lights=paddle.to_tensor(lights), landmarks=V[:, :4], background=bg)
    for k, shape in [("images", [B, 3, S, S]), ("alpha_images", [B, 1, S, S]), ("normal_images", [B, 3, S, S]),
                     ("depth_images", [B, 1, S, S]), ("albedo_images", [B, 3, S, S]), ("landmarks2d", [B, 4, 2])]:
        assert list(out[k].shape) == shape, k
    alpha = out["alpha_images"].numpy()
    img = out["images"].numpy()
    np.testing.assert_allclose(img[np.broadcast_to(alpha, img.shape) == 0], 0.25)
    np.testing.assert_allclose(img[np.broadcast_to(alpha, img.shape) == 1], 0.5, atol=1e-5)  # albedo x ambient 1
    np.testing.assert_allclose(out["landmarks2d"].numpy(), cam.project(V[:, :4]).numpy())
    # the nose of the sphere (+z, facing the camera) has normal ~ (0, 0, 1) at the image centre
    np.testing.assert_allclose(out["normal_images"].numpy()[0, :, S // 2, S // 2], [0, 0, 1], atol=0.1)
    soft = r(V, cam, albedos=tex, soft=True)["alpha_images"].numpy()
    assert soft.min() >= 0 and soft.max() <= 1 and ((soft > 0.01) & (soft < 0.99)).any()
    with pytest.raises(InputError, match="uvcoords"):
        Renderer(S, f)(V, cam, albedos=tex)
