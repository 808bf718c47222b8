"""DECA losses and NoW-style metrics against independent numpy references."""
import numpy as np
import paddle
import pytest

from ppengine.errors import ConfigError


def _np_landmark_loss(pred, gt):
    w = np.ones(68)
    w[5:7] = 2
    w[10:12] = 2
    w[27:36] = 1.5
    w[30] = w[31] = w[35] = 3
    w[48:68] = 1.5
    w[48] = w[54] = 3
    conf = gt[..., 2] * w[None]
    return (np.abs(pred - gt[..., :2]).sum(-1) * conf).sum() / (2 * conf.sum())


def test_landmark_eye_lip_losses_match_numpy():
    from ppface3d.losses.deca_losses import eye_closure_loss, landmark_loss, lip_closure_loss

    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 68, 2)).astype(np.float32)
    gt = np.concatenate([rng.normal(size=(3, 68, 2)), rng.uniform(0.2, 1, (3, 68, 1))], -1).astype(np.float32)
    got = float(landmark_loss(paddle.to_tensor(pred), paddle.to_tensor(gt)))
    assert got == pytest.approx(_np_landmark_loss(pred, gt), rel=1e-5)

    def dist(lm, a, b):
        return np.linalg.norm(lm[:, a] - lm[:, b], axis=-1)

    ref_eye = np.abs(dist(pred, [37, 38, 43, 44], [41, 40, 47, 46]) - dist(gt[..., :2], [37, 38, 43, 44], [41, 40, 47, 46])).mean()
    ref_lip = np.abs(dist(pred, [61, 62, 63], [67, 66, 65]) - dist(gt[..., :2], [61, 62, 63], [67, 66, 65])).mean()
    assert float(eye_closure_loss(paddle.to_tensor(pred), paddle.to_tensor(gt))) == pytest.approx(ref_eye, rel=1e-5)
    assert float(lip_closure_loss(paddle.to_tensor(pred), paddle.to_tensor(gt))) == pytest.approx(ref_lip, rel=1e-5)


def test_deca_loss_terms_weights_and_gradients():
    from ppface3d.losses.deca_losses import DECALoss, consistency_order

    rng = np.random.default_rng(1)
    N, H = 4, 16
    shape = paddle.to_tensor(rng.normal(size=(N, 10)).astype(np.float32), stop_gradient=False)
    codes = {"shape": shape, "exp": paddle.zeros([N, 5]), "tex": paddle.ones([N, 3]),
             "light": paddle.to_tensor(rng.normal(size=(N, 9, 3)).astype(np.float32))}
    img = rng.uniform(size=(N, 3, H, H)).astype(np.float32)
    pred = {"landmarks2d": paddle.to_tensor(rng.normal(size=(N, 68, 2)).astype(np.float32)),
            "image": paddle.to_tensor(img + 0.1)}
    target = {"landmark": paddle.to_tensor(rng.normal(size=(N, 68, 3)).astype(np.float32)),
              "image": paddle.to_tensor(img), "mask": paddle.ones([N, H, H]),
              "shape": paddle.zeros([N, 10])}
    loss = DECALoss(param=1.0)
    out = loss(codes, pred, target)
    assert "identity" not in out  # no feature network configured -> off
    assert float(out["photometric"]) == pytest.approx(2.0 * 0.1, rel=1e-4)
    assert float(out["tex_reg"]) == pytest.approx(1e-4 * N * 3 / 2, rel=1e-5)
    assert float(out["shape_reg"]) == pytest.approx(1e-4 * (shape.numpy() ** 2).sum() / 2, rel=1e-5)
    light = codes["light"].numpy()
    assert float(out["light_reg"]) == pytest.approx(((light.mean(2, keepdims=True) - light) ** 2).mean(), rel=1e-5)
    assert float(out["param"]) == pytest.approx((shape.numpy() ** 2).mean(), rel=1e-5)
    total = sum(float(v) for k, v in out.items() if k != "loss")
    assert float(out["loss"]) == pytest.approx(total, rel=1e-5)
    # shape-code term: squared error summed over coefficients, averaged over images
    sp = DECALoss(shape_param=2.0)(codes, pred, target)["shape_param"]
    assert float(sp) == pytest.approx(2.0 * (shape.numpy() ** 2).sum(1).mean(), rel=1e-5)
    # masks (a mirrored image's coefficients without a mirror counterpart) drop those coefficients
    m = np.ones((N, 10), np.float32)
    m[1, 3:] = 0.0
    masked = dict(target, shape_mask=paddle.to_tensor(m))
    sp = DECALoss(shape_param=1.0, param=1.0)(codes, pred, masked)
    assert float(sp["shape_param"]) == pytest.approx(((shape.numpy() * m) ** 2).sum(1).mean(), rel=1e-5)
    assert float(sp["param"]) == pytest.approx(((shape.numpy() * m) ** 2).mean(), rel=1e-5)
    # the dense geometry term: coverage-weighted L1 over the predicted channels
    g_pred = paddle.to_tensor(rng.normal(size=(N, 4, 3, 3)).astype(np.float32), stop_gradient=False)
    g_t = rng.normal(size=(N, 5, 3, 3)).astype(np.float32)
    g_t[:, 4] = rng.uniform(0, 1, size=(N, 3, 3))
    geo = DECALoss(geometry=0.5)(dict(codes, aux_geometry=g_pred), pred, dict(target, geometry=paddle.to_tensor(g_t)))
    ref = (np.abs(g_pred.numpy() - g_t[:, :4]) * g_t[:, 4:]).sum() / (g_t[:, 4].sum() * 4)
    assert float(geo["geometry"]) == pytest.approx(0.5 * ref, rel=1e-4)
    geo["loss"].backward()
    assert float(g_pred.grad.abs().sum()) > 0
    no_maps = DECALoss(geometry=1.0)(dict(codes, aux_geometry=g_pred), pred, target)  # photos: no maps
    assert float(no_maps["geometry"]) == 0.0
    with pytest.raises(ConfigError):
        DECALoss(geometry=1.0)(dict(codes, aux_geometry=g_pred), pred, dict(target, geometry=paddle.to_tensor(g_t[:, :3])))
    out["loss"].backward()
    assert shape.grad is not None and float(shape.grad.abs().sum()) > 0

    order = consistency_order(3, 4, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(12))
    for g in range(3):
        grp = order[g * 4:(g + 1) * 4]
        assert set(grp) == set(range(g * 4, g * 4 + 4)) and not np.array_equal(grp, np.arange(g * 4, g * 4 + 4))


def _dense_surface_distance(points, verts, faces, n=40):
    """Independent reference: distance to a dense barycentric sampling of every triangle."""
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    keep = u + v <= 1
    u, v = u[keep], v[keep]
    tri = verts[faces]
    samples = (tri[:, 0, None] * (1 - u - v)[None, :, None] + tri[:, 1, None] * u[None, :, None]
               + tri[:, 2, None] * v[None, :, None]).reshape(-1, 3)
    d = np.linalg.norm(points[:, None] - samples[None], axis=-1)
    return d.min(1)


def test_scan_to_mesh_and_alignment():
    import trimesh
    from scipy.spatial.transform import Rotation

    from ppface3d.losses.metrics import now_align, scan_to_mesh, similarity_align, transform_points

    mesh = trimesh.creation.icosphere(subdivisions=1)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(30, 3)) * 0.7
    d, _ = scan_to_mesh(pts, verts, faces)
    ref = _dense_surface_distance(pts, verts, faces)
    assert np.all(d <= ref + 1e-9) and np.allclose(d, ref, atol=0.01)

    R = Rotation.from_euler("xyz", [20, -35, 10], degrees=True).as_matrix()
    scan = 1.3 * verts @ R.T + np.array([0.2, -0.1, 0.5])
    M = similarity_align(verts, scan)
    np.testing.assert_allclose(transform_points(M, verts), scan, atol=1e-9)
    idx = [0, 3, 5, 7, 9, 11, 2]
    noisy_lmk = scan[idx] + rng.normal(scale=0.05, size=(7, 3))
    aligned = now_align(verts, verts[idx], faces, scan, noisy_lmk, icp_iters=5)
    err_lmk_only = np.linalg.norm(transform_points(similarity_align(verts[idx], noisy_lmk), verts) - scan, axis=1).mean()
    err = np.linalg.norm(aligned - scan, axis=1).mean()
    assert err < 0.5 * err_lmk_only  # the scan-to-mesh refinement improves on the landmark fit


def test_metric_zero_for_perfect_prediction_and_nme():
    import trimesh

    from ppface3d.losses.metrics import FaceReconstructionMetric, landmark_nme

    mesh = trimesh.creation.icosphere(subdivisions=2)
    v, f = np.asarray(mesh.vertices) * 0.1, np.asarray(mesh.faces)
    lmk = v[np.linspace(0, len(v) - 1, 68).astype(int)]
    m = FaceReconstructionMetric(radius=1.0)
    lm2 = np.random.default_rng(0).normal(size=(1, 68, 2))
    m.update({"gt_verts_neutral": v[None], "gt_lmk3d_neutral": lmk[None],
              "landmark": np.concatenate([lm2, np.ones((1, 68, 1))], -1)},
             {"verts_neutral": v[None], "lmk3d_neutral": lmk[None], "faces": f,
              "verts_mean": v * 1.2, "lmk3d_mean": lmk * 1.2, "landmarks2d": lm2})
    r = m.compute()
    assert r["s2m_median"] < 1e-6 and r["vertex_mean"] < 1e-6 and r["lmk_nme"] == 0.0
    assert r["baseline_s2m_median"] < 1e-6  # a scaled copy aligns exactly (similarity)
    gt = np.zeros((1, 68, 2))
    gt[0, 45, 0] = 2.0  # inter-ocular distance 2
    assert landmark_nme(gt + 1.0, gt)[0] == pytest.approx(np.sqrt(2) / 2)


def test_identity_loss_is_pluggable():
    import ppface3d  # noqa: F401  (registers IdentityFeatureNet)
    from ppengine.errors import ConfigError
    from ppface3d.losses.deca_losses import DECALoss, identity_loss

    a = paddle.to_tensor([[1.0, 0.0], [0.0, 2.0]])
    b = paddle.to_tensor([[1.0, 0.0], [2.0, 0.0]])
    assert float(identity_loss(a, b)) == pytest.approx(0.5)  # cos 1 and cos 0
    with pytest.raises(ConfigError, match="needs weights"):
        DECALoss(identity_net={"type": "IdentityFeatureNet"})
    loss = DECALoss(id=0.2, identity_net={"type": "IdentityFeatureNet", "depth": 18, "input_size": 32,
                                          "allow_random": True})
    assert loss.use_identity and not DECALoss().use_identity
    img = paddle.rand([2, 3, 32, 32])
    out = loss({}, {"landmarks2d": paddle.zeros([2, 68, 2]), "identity_image": img, "image": img},
               {"landmark": paddle.zeros([2, 68, 3]), "image": img, "mask": paddle.ones([2, 32, 32])})
    assert float(out["identity"]) == pytest.approx(0.0, abs=1e-5)  # same image -> same identity


def test_shape_error_matrix_matches_similarity_aligned_mesh_error():
    """e M e = mean squared face-region vertex distance (mm^2) after the best similarity
    alignment (Umeyama, scikit-image), for small shape-code errors e; the loss term uses it."""
    from ppengine.errors import ConfigError
    from ppface3d import FaceModel
    from ppface3d.losses import DECALoss
    from ppface3d.losses.metrics import shape_error_matrix, similarity_align, transform_points

    face_model = FaceModel(n_shape=10, n_exp=5, n_tex=2, image_size=16, uv_size=8)
    flame = face_model.flame
    M = shape_error_matrix(flame, 10)
    assert M.shape == (10, 10) and np.allclose(M, M.T, atol=1e-6) and np.linalg.eigvalsh(M).min() > -1e-6
    with paddle.no_grad():
        mean = flame(shape=paddle.zeros([1, 10]))
    vt = flame.v_template.numpy().astype(np.float64)
    face = np.linalg.norm(vt - mean.landmarks_full68.numpy()[0, 30], axis=1) <= 0.095
    rng = np.random.default_rng(0)
    E = rng.normal(size=(4, 10)).astype(np.float32) * 0.05
    with paddle.no_grad():
        base = flame(shape=paddle.zeros([1, 10])).vertices.numpy()[0][face]
        moved = flame(shape=paddle.to_tensor(E)).vertices.numpy()[:, face]
    for e, v in zip(E, moved):
        aligned = transform_points(similarity_align(v, base), v)
        direct = (((aligned - base) * 1000.0) ** 2).sum(1).mean()
        assert e @ M @ e == pytest.approx(direct, rel=0.03)
    # the loss term: e M e averaged over images; it needs the matrix
    loss = DECALoss(shape_metric=2.0, lmk=0, eyed=0, lipd=0, photo=0, reg_shape=0, reg_exp=0, reg_tex=0,
                    reg_light=0)
    codes = {"shape": paddle.to_tensor(E)}
    target = {"shape": paddle.zeros([4, 10]), "landmark": paddle.zeros([4, 68, 3])}
    pred = {"landmarks2d": paddle.zeros([4, 68, 2])}
    with pytest.raises(ConfigError, match="shape error matrix"):
        loss(codes, pred, target)
    loss.setup(face_model)  # the model's build-time call: the loss takes the matrix from the face model
    assert np.allclose(loss.shape_metric_matrix.numpy(), M, atol=1e-6)
    want = 2.0 * np.mean([e @ M @ e for e in E])
    assert float(loss(codes, pred, target)["shape_metric"]) == pytest.approx(want, rel=1e-4)
