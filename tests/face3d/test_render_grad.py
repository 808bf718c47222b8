"""Gradients of rendered images w.r.t. vertex positions.

* The C++ operator's analytic backward equals Paddle autodiff through the pure-Paddle backend.
* Central finite differences of a shaded, vertex-coloured render (barycentric gradients, as in
  nvdiffrast: exact on pixels whose visible face does not change under the perturbation).
* Central finite differences of the SoftRas silhouette (smooth everywhere, edges included) in
  float64 through the Paddle implementation, and the C++ operator equal to it (value and gradient).
"""
import numpy as np
import paddle
import pytest
import trimesh

from ppface3d.render import OrthographicCamera, Renderer, interpolate, rasterize, soft_silhouette


def mesh(subdivisions=3):
    m = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = np.array(m.vertices, np.float64)
    v = v * (1.0 + 0.1 * np.sin(3 * v[:, :1]) * np.cos(2 * v[:, 1:2]))
    R = trimesh.transformations.rotation_matrix(0.4, [0.3, 1.0, 0.1])[:3, :3]
    return (v @ R.T).astype(np.float32), np.array(m.faces, np.int64)


@pytest.mark.parametrize("perspective", [False, True])
def test_cpp_backward_equals_paddle_autodiff(perspective):
    v, f = mesh(3)
    sv = np.stack([0.8 * v[:, 0], -0.8 * v[:, 1], -0.8 * v[:, 2] + (3.0 if perspective else 0.0)], 1)
    rng = np.random.default_rng(0)
    wb = paddle.to_tensor(rng.normal(size=(1, 40, 48, 3)).astype(np.float32))
    wz = paddle.to_tensor(rng.normal(size=(1, 40, 48)).astype(np.float32))
    grads = []
    for be in ("cpp", "paddle"):
        V = paddle.to_tensor(sv[None].astype(np.float32), stop_gradient=False)
        fr = rasterize(V, f, (40, 48), perspective_correct=perspective, backend=be)
        ((fr.bary_coords * wb).sum() + (fr.zbuf * wz).sum()).backward()
        grads.append(V.grad.numpy())
    scale = np.abs(grads[1]).max()
    assert scale > 1.0
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-5 * scale)


@pytest.mark.parametrize("corners", [False, True])
def test_cpp_interpolate_backward_equals_paddle_autodiff(corners):
    v, f = mesh(3)
    sv = np.stack([0.8 * v[:, 0], -0.8 * v[:, 1], -0.8 * v[:, 2]], 1).astype(np.float32)
    rng = np.random.default_rng(5)
    attr = rng.normal(size=(2, len(f), 3, 4) if corners else (2, len(v), 4)).astype(np.float32)
    w = paddle.to_tensor(rng.normal(size=(2, 24, 24, 4)).astype(np.float32))
    res = []
    for be in ("cpp", "paddle"):
        V = paddle.to_tensor(np.stack([sv, sv * 0.9]), stop_gradient=False)
        A = paddle.to_tensor(attr, stop_gradient=False)
        fr = rasterize(V, f, 24, backend=be)
        out = interpolate(fr, A, None if corners else paddle.to_tensor(f), be)
        (out * w).sum().backward()
        res.append((out.numpy(), V.grad.numpy(), A.grad.numpy()))
    for a, b in zip(*res):
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(b).max()))
    assert np.abs(res[1][1]).max() > 0.1 and np.abs(res[1][2]).max() > 0.1


def _render(renderer, V, cam, colors, lights):
    out = renderer(V, cam, vertex_colors=colors, lights=lights)
    return out["images"], out["fragments"].pix_to_face.numpy()


@pytest.mark.parametrize("backend", ["cpp", "paddle"])
def test_rendered_image_gradient_matches_finite_differences(backend):
    v, f = mesh(3)
    rng = np.random.default_rng(1)
    S = 40
    renderer = Renderer(S, f, backend=backend)
    cam = OrthographicCamera([[0.8, 0.02, -0.03]])
    colors = paddle.to_tensor(rng.uniform(0.2, 1.0, size=(1, len(v), 3)).astype(np.float32))
    lights = np.zeros((1, 9, 3), np.float32)
    lights[0, 0], lights[0, 3], lights[0, 1] = 2.0, 0.8, 0.3
    lights = paddle.to_tensor(lights)
    weights = rng.normal(size=(1, 3, S, S))
    # Faces near the silhouette are seen edge-on, so barycentrics are strongly nonlinear there:
    # a small step keeps the central difference's O(eps^2) error negligible.
    eps = 1e-4
    dirs = [rng.normal(size=v.shape).astype(np.float32) for _ in range(3)]
    # single coordinates of a vertex near the image centre (visible)
    centre = int(np.argmax(v[:, 2] - 0.5 * np.abs(v[:, 0]) - 0.5 * np.abs(v[:, 1])))
    for k in range(3):
        d = np.zeros_like(v)
        d[centre, k] = 1.0
        dirs.append(d)
    base_img, base_p2f = _render(renderer, paddle.to_tensor(v[None]), cam, colors, lights)
    checked = 0
    for d in dirs:
        plus, p_plus = _render(renderer, paddle.to_tensor((v + eps * d)[None]), cam, colors, lights)
        minus, p_minus = _render(renderer, paddle.to_tensor((v - eps * d)[None]), cam, colors, lights)
        stable = ((base_p2f == p_plus) & (base_p2f == p_minus))[:, None].astype(np.float64)
        w = weights * stable
        fd = ((plus.numpy().astype(np.float64) - minus.numpy()) * w).sum() / (2 * eps)
        V = paddle.to_tensor(v[None], stop_gradient=False)
        img, _ = _render(renderer, V, cam, colors, lights)
        (img * paddle.to_tensor(w.astype(np.float32))).sum().backward()
        an = float((V.grad.numpy()[0].astype(np.float64) * d).sum())
        assert abs(an - fd) <= 2e-2 * abs(fd) + 1e-3, (an, fd)
        checked += abs(fd) > 1e-2
    assert checked >= 4  # the checks were not all trivially zero


@pytest.mark.parametrize("cull", [False, True])
def test_cpp_soft_silhouette_equals_paddle(cull):
    v, f = mesh(3)
    rng = np.random.default_rng(4)
    S = 40
    sv = np.stack([0.7 * v[:, 0], -0.7 * v[:, 1], -0.7 * v[:, 2]], 1).astype(np.float32)
    w = paddle.to_tensor(rng.normal(size=(2, S, S)).astype(np.float32))
    res = []
    for be in ("cpp", "paddle"):
        V = paddle.to_tensor(np.stack([sv, 0.8 * sv + 0.1]), stop_gradient=False)
        a = soft_silhouette(V, paddle.to_tensor(f), S, 2e-4, cull_backfaces=cull, backend=be)
        (a * w).sum().backward()
        res.append((a.numpy(), V.grad.numpy()))
    np.testing.assert_allclose(res[0][0], res[1][0], atol=1e-5)
    scale = np.abs(res[1][1]).max()
    assert scale > 1.0
    np.testing.assert_allclose(res[0][1], res[1][1], atol=1e-5 * scale)


def test_soft_silhouette_gradient_matches_finite_differences():
    v, f = mesh(2)
    rng = np.random.default_rng(2)
    S = 32
    # float64: sigmoid(d^2 / sigma) is sharply curved, so the step must be small
    sv = np.stack([0.7 * v[:, 0], -0.7 * v[:, 1], -0.7 * v[:, 2]], 1).astype(np.float64)
    weights = paddle.to_tensor(rng.normal(size=(1, S, S)))
    sigma = 3e-4

    def loss(x):
        return (soft_silhouette(x, paddle.to_tensor(f), S, sigma, backend="paddle") * weights).sum()

    V = paddle.to_tensor(sv[None], stop_gradient=False)
    loss(V).backward()
    g = V.grad.numpy()[0].astype(np.float64)
    assert np.abs(g).max() > 0.1
    eps = 1e-6
    for _ in range(4):
        d = rng.normal(size=sv.shape)
        lp = float(loss(paddle.to_tensor((sv + eps * d)[None])))
        lm = float(loss(paddle.to_tensor((sv - eps * d)[None])))
        fd = (lp - lm) / (2 * eps)
        an = float((g * d).sum())
        assert abs(an - fd) <= 1e-3 * abs(fd) + 1e-4, (an, fd)
    # the silhouette itself: ~1 inside, ~0 far outside, in (0, 1) across edges
    sv32 = paddle.to_tensor(sv[None].astype(np.float32))
    a = soft_silhouette(sv32, paddle.to_tensor(f), S, sigma).numpy()[0]
    hard = rasterize(sv32, f, S).mask.numpy()[0]
    assert a[hard > 0].mean() > 0.95 and a[0, 0] < 1e-3
    assert ((a > 0.05) & (a < 0.95)).sum() > 10
