"""FLAME in Paddle ops: parity with smplx.FLAME (torch), gradients, rotation formats, generated model."""
import os

import numpy as np
import paddle
import pytest
from scipy.spatial.transform import Rotation

from ppengine.errors import InputError
from ppface3d.flame import FLAME, default_model_path, generate, load_flame_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("ppface3d_cache"))
    old = os.environ.get("PPFACE3D_CACHE")
    os.environ["PPFACE3D_CACHE"] = cache
    try:
        path = default_model_path()
        yield os.path.dirname(path)
    finally:
        if old is None:
            os.environ.pop("PPFACE3D_CACHE", None)
        else:
            os.environ["PPFACE3D_CACHE"] = old


def _random_inputs(B, seed, big=True):
    rng = np.random.default_rng(seed)
    s = 1.0 if big else 0.3
    return dict(
        shape=rng.standard_normal((B, 300)) * 2,
        expression=rng.standard_normal((B, 100)) * 2,
        global_pose=rng.standard_normal((B, 3)) * 1.3 * s,   # large rotations (|r| up to ~pi)
        neck_pose=rng.standard_normal((B, 3)) * 0.6 * s,
        jaw_pose=rng.standard_normal((B, 3)) * 0.4 * s,
        eye_pose=rng.standard_normal((B, 6)) * 0.5 * s,
        translation=rng.standard_normal((B, 3)) * 0.1,
    )


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-5), ("float32", 1e-4)])
def test_parity_with_smplx(model_dir, dtype, tol):
    torch = pytest.importorskip("torch")  # test dependency (requirements-test.txt)
    smplx = pytest.importorskip("smplx")
    B = 8
    inp = _random_inputs(B, seed=1)
    inp["global_pose"][0] = [0.0, 2.9, 0.0]  # near half a turn
    inp["global_pose"][1] = [0.0, 0.0, 0.0]
    tdt = torch.float64 if dtype == "float64" else torch.float32
    ref = smplx.FLAME(model_path=model_dir, num_betas=300, num_expression_coeffs=100, use_face_contour=True,
                      batch_size=B, dtype=tdt)
    t = lambda a: torch.tensor(a, dtype=tdt)  # noqa: E731
    with torch.no_grad():
        o = ref(betas=t(inp["shape"]), expression=t(inp["expression"]), global_orient=t(inp["global_pose"]),
                neck_pose=t(inp["neck_pose"]), jaw_pose=t(inp["jaw_pose"]), leye_pose=t(inp["eye_pose"][:, :3]),
                reye_pose=t(inp["eye_pose"][:, 3:]), transl=t(inp["translation"]))
    rv, rj = o.vertices.numpy(), o.joints.numpy()  # joints: 5 joints, 51 static, 17 contour landmarks
    flame = FLAME.from_files(os.path.join(model_dir, "FLAME_NEUTRAL.pkl"),
                             os.path.join(model_dir, "flame_static_embedding.pkl"), dtype=dtype)
    assert flame.contour == "smplx"
    out = flame(**{k: paddle.to_tensor(v, dtype=dtype) for k, v in inp.items()})
    assert out.vertices.dtype == getattr(paddle, dtype)
    np.testing.assert_allclose(out.vertices.numpy(), rv, atol=tol, rtol=0)
    np.testing.assert_allclose(out.joints.numpy(), rj[:, :5], atol=tol, rtol=0)
    np.testing.assert_allclose(out.landmarks.numpy()[:, 17:], rj[:, 5:56], atol=tol, rtol=0)
    np.testing.assert_allclose(out.landmarks.numpy()[:, :17], rj[:, 56:73], atol=tol, rtol=0)
    # the contours really differ across the batch (the yaw look-up is exercised)
    assert len({tuple(r) for r in flame.contour_rows(*_mats(inp)).numpy()[:, None]}) > 3


def test_landmarks_only_and_rest_pose_match_smplx(model_dir):
    """The cheap paths against smplx: ``landmarks_only`` (only the landmarks' vertices are posed)
    gives the full model's landmarks and gradients; shape and expression alone (no pose, where
    skinning is skipped) give smplx's vertices with every pose zero."""
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    B = 4
    inp = _random_inputs(B, seed=5)
    ref = smplx.FLAME(model_path=model_dir, num_betas=300, num_expression_coeffs=100, use_face_contour=True,
                      batch_size=B, dtype=torch.float64)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        o = ref(betas=t(inp["shape"]), expression=t(inp["expression"]), global_orient=t(inp["global_pose"]),
                neck_pose=t(inp["neck_pose"]), jaw_pose=t(inp["jaw_pose"]), leye_pose=t(inp["eye_pose"][:, :3]),
                reye_pose=t(inp["eye_pose"][:, 3:]), transl=t(inp["translation"]))
        rest = ref(betas=t(inp["shape"]), expression=t(inp["expression"]))
    flame = FLAME.from_files(os.path.join(model_dir, "FLAME_NEUTRAL.pkl"),
                             os.path.join(model_dir, "flame_static_embedding.pkl"), dtype="float64")
    args = {k: paddle.to_tensor(v) for k, v in inp.items()}
    for v in args.values():
        v.stop_gradient = False
    lo = flame(**args, landmarks_only=True)
    assert lo.vertices is None
    rj = o.joints.numpy()  # float64 parity with smplx is ~1e-8 (test above)
    np.testing.assert_allclose(lo.landmarks.numpy()[:, 17:], rj[:, 5:56], atol=1e-7, rtol=0)
    np.testing.assert_allclose(lo.landmarks.numpy()[:, :17], rj[:, 56:73], atol=1e-7, rtol=0)
    full = flame(**args)
    np.testing.assert_allclose(lo.landmarks.numpy(), full.landmarks.numpy(), atol=1e-12, rtol=0)
    g_lo = paddle.grad((lo.landmarks ** 2).sum(), list(args.values()))
    g_full = paddle.grad((full.landmarks ** 2).sum(), list(args.values()))
    for a, b in zip(g_lo, g_full):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10, rtol=0)
    # the subset really is a subset (that is the point: several times fewer vertices)
    assert flame._landmark_subset()["V"] < flame.num_vertices // 4
    neutral = flame(shape=args["shape"], expression=args["expression"])
    np.testing.assert_allclose(neutral.vertices.numpy(), rest.vertices.numpy(), atol=1e-7, rtol=0)
    np.testing.assert_allclose(neutral.joints.numpy(), rest.joints.numpy()[:, :5], atol=1e-7, rtol=0)
    flame.has_landmarks = False  # as a model loaded without a landmark file
    with pytest.raises(InputError, match="landmark embedding"):
        flame(shape=args["shape"], landmarks_only=True)


def _mats(inp):
    g = paddle.to_tensor(Rotation.from_rotvec(inp["global_pose"]).as_matrix())
    n = paddle.to_tensor(Rotation.from_rotvec(inp["neck_pose"]).as_matrix())
    return g, n


def test_deca_contour_convention(model_dir):
    """DECA's rule: yaw of R_global @ R_neck, table row by +yaw; checked against a NumPy reference."""
    flame = FLAME(dtype="float64")  # generated default: DECA landmark_embedding.npy
    assert flame.contour == "deca" and flame.has_full68
    B = 16
    inp = _random_inputs(B, seed=2)
    R = Rotation.from_rotvec(inp["global_pose"]).as_matrix() @ Rotation.from_rotvec(inp["neck_pose"]).as_matrix()
    yaw = np.degrees(np.arctan2(-R[:, 2, 0], np.hypot(R[:, 0, 0], R[:, 1, 0])))
    a = np.round(np.minimum(yaw, 39)).astype(int)
    rows_ref = np.where(a >= 0, a, np.where(a < -39, 78, 39 - a))
    rows = flame.contour_rows(*_mats(inp)).numpy()
    np.testing.assert_array_equal(rows, rows_ref)
    # with a zero neck, the DECA file under 'deca' and the RingNet files under 'smplx' pick the same points
    inp["neck_pose"][:] = 0
    ring = FLAME.from_files(os.path.join(model_dir, "generic_model.pkl"),
                            os.path.join(model_dir, "flame_static_embedding.pkl"), dtype="float64")
    args = {k: paddle.to_tensor(v) for k, v in inp.items()}
    np.testing.assert_allclose(flame(**args).landmarks.numpy(), ring(**args).landmarks.numpy(), atol=1e-12)
    # offering the other convention flips the sign of the yaw
    smplx_rule = FLAME(dtype="float64", contour="smplx")
    g, n = _mats(inp)
    r_deca = flame.contour_rows(g, n).numpy()
    r_smplx = smplx_rule.contour_rows(g, n).numpy()
    flip = lambda r: np.where(r == 0, 0, np.where(r <= 39, 39 + r, r - 39))  # noqa: E731  (row of -yaw)
    np.testing.assert_array_equal(flip(r_deca), r_smplx)
    assert len(set(r_deca.tolist())) > 4


def test_gradients_finite_difference(model_dir):
    flame = FLAME(dtype="float64")
    B = 2
    inp = _random_inputs(B, seed=3, big=False)
    inp["shape"], inp["expression"] = inp["shape"][:, :20], inp["expression"][:, :10]
    inp["jaw_pose"][1] = 0.0  # exactly zero rotation: gradient must still be exact
    rng = np.random.default_rng(4)
    wv = rng.standard_normal((B, flame.num_vertices, 3))
    wl = rng.standard_normal((B, 68, 3))
    wj = rng.standard_normal((B, 5, 3))

    def loss_np(vals):
        out = flame(**{k: paddle.to_tensor(v) for k, v in vals.items()})
        return (np.sum(out.vertices.numpy() * wv) + np.sum(out.landmarks.numpy() * wl)
                + np.sum(out.joints.numpy() * wj))

    tens = {k: paddle.to_tensor(v, stop_gradient=False) for k, v in inp.items()}
    out = flame(**tens)
    loss = ((out.vertices * paddle.to_tensor(wv)).sum() + (out.landmarks * paddle.to_tensor(wl)).sum()
            + (out.joints * paddle.to_tensor(wj)).sum())
    loss.backward()
    eps = 1e-6
    for k, v in inp.items():
        g = tens[k].grad.numpy()
        assert np.all(np.isfinite(g)), k
        for idx in [(0, 0), (1, v.shape[1] - 1), (1, v.shape[1] // 2)]:
            plus, minus = {kk: vv.copy() for kk, vv in inp.items()}, {kk: vv.copy() for kk, vv in inp.items()}
            plus[k][idx] += eps
            minus[k][idx] -= eps
            num = (loss_np(plus) - loss_np(minus)) / (2 * eps)
            assert abs(num - g[idx]) <= 1e-5 * max(1.0, abs(num)), (k, idx, num, g[idx])


def test_rotation_formats_and_batching(model_dir):
    rng = np.random.default_rng(5)
    B = 3
    aa = rng.standard_normal((B, 3)) * 0.8
    jaw = rng.standard_normal((B, 3)) * 0.3
    shape = rng.standard_normal((1, 10))  # batch 1 broadcasts; fewer coefficients than 300
    base = FLAME(dtype="float64")
    ref = base(shape=paddle.to_tensor(shape), global_pose=paddle.to_tensor(aa), jaw_pose=paddle.to_tensor(jaw)).vertices.numpy()
    R = Rotation.from_rotvec(aa).as_matrix()
    Rj = Rotation.from_rotvec(jaw).as_matrix()
    six = lambda M: M[:, :2, :].reshape(-1, 6)  # noqa: E731  (pytorch3d: first two rows)
    euler = Rotation.from_matrix(Rj).as_euler("xyz")  # extrinsic x, then y, then z: R = Rz Ry Rx
    cases = [
        (FLAME(dtype="float64", rotation_format="matrix"), R, Rj),
        (FLAME(dtype="float64", rotation_format="rot6d"), six(R) * 1.7, six(Rj)),
        (FLAME(dtype="float64", jaw_format="euler"), aa, euler),
    ]
    for fl, g, j in cases:
        v = fl(shape=paddle.to_tensor(shape), global_pose=paddle.to_tensor(g), jaw_pose=paddle.to_tensor(j)).vertices.numpy()
        np.testing.assert_allclose(v, ref, atol=1e-10)
    # any batch size: one sample at a time equals the batch
    for b in range(B):
        v1 = base(shape=paddle.to_tensor(shape), global_pose=paddle.to_tensor(aa[b:b + 1]),
                  jaw_pose=paddle.to_tensor(jaw[b:b + 1])).vertices.numpy()
        np.testing.assert_allclose(v1[0], ref[b], atol=1e-12)


def test_input_errors(model_dir):
    flame = FLAME()
    with pytest.raises(InputError, match="at least one"):
        flame()
    with pytest.raises(InputError, match=r"shape should have shape \(B, k\)"):
        flame(shape=paddle.zeros([3]))
    with pytest.raises(InputError, match="jaw_pose should have shape"):
        flame(jaw_pose=paddle.zeros([2, 4]))
    with pytest.raises(InputError, match="301 coefficients"):
        flame(shape=paddle.zeros([1, 301]))
    with pytest.raises(InputError, match="batch size"):
        flame(shape=paddle.zeros([2, 5]), expression=paddle.zeros([3, 5]))
    small = FLAME(n_shape=100, n_expression=50)
    assert small.dirs.shape[0] == 150
    out = small(shape=np.zeros((2, 100), np.float32))  # numpy input is accepted
    assert out.vertices.shape == [2, small.num_vertices, 3]


def test_generated_model_is_a_head(model_dir):
    # cached under $PPFACE3D_CACHE with the generator version in the folder name, built once
    assert model_dir.startswith(os.environ["PPFACE3D_CACHE"])
    assert os.path.basename(model_dir) == f"flame_generated_v{generate.GENERATOR_VERSION}"
    stamp = os.path.getmtime(os.path.join(model_dir, "generic_model.pkl"))
    assert default_model_path() == os.path.join(model_dir, "generic_model.pkl")
    assert os.path.getmtime(os.path.join(model_dir, "generic_model.pkl")) == stamp
    m = load_flame_model(os.path.join(model_dir, "generic_model.pkl"))
    V, F = len(m["v_template"]), len(m["f"])
    assert 4500 <= V <= 5500 and 9000 <= F <= 11000
    assert m["shapedirs"].shape == (V, 3, 400) and m["posedirs"].shape == (V, 3, 36)
    assert m["J_regressor"].shape == (5, V) and m["weights"].shape == (V, 5)
    np.testing.assert_allclose(m["weights"].sum(1), 1.0, atol=1e-12)
    assert m["vt"].shape[1] == 2 and m["ft"].shape == m["f"].shape and m["vt"].min() >= 0 and m["vt"].max() <= 1
    raw = generate.build_generated_model()[0]  # deterministic: a rebuild gives the same arrays
    np.testing.assert_array_equal(raw["v_template"], m["v_template"])
    np.testing.assert_array_equal(raw["shapedirs"], m["shapedirs"])
    v = m["v_template"]
    size = v.max(0) - v.min(0)
    assert 0.14 < size[0] < 0.22 and 0.22 < size[1] < 0.34 and 0.18 < size[2] < 0.28  # metres, FLAME-like
    labels = raw["part_labels"]
    skin = labels == 0
    tip = np.argmax(np.where(skin, v[:, 2], -1))
    assert abs(v[tip, 0]) < 1e-3 and -0.03 < v[tip, 1] < 0.0  # nose tip is the front-most point, mid-face
    J = m["J_regressor"] @ v
    assert J[3, 0] > 0.02 and J[4, 0] < -0.02 and abs(J[3, 1] - J[4, 1]) < 1e-9  # left eye at +x
    assert J[2, 1] < J[3, 1] and J[1, 1] < J[2, 1] and J[0, 1] < J[1, 1]  # eyes > jaw > neck > root
    # lips touch at rest and part when the jaw opens
    flame = FLAME(dtype="float64")
    ws = m["weights"]
    upper = np.nonzero(skin & (ws[:, 2] == 0.0))[0]
    lower = np.nonzero(skin & (ws[:, 2] == 1.0))[0]
    pairs = [(u, l) for l in lower for u in upper[np.all(v[upper] == v[l], axis=1)]]
    assert len(pairs) >= 5
    opened = flame(jaw_pose=paddle.to_tensor([[0.3, 0.0, 0.0]], dtype="float64")).vertices.numpy()[0]
    gaps = [np.linalg.norm(opened[u] - opened[l]) for u, l in pairs]
    assert min(gaps) > 0.004
    # shape directions are smooth (neighbours move alike), expressions are local to the face
    f = m["f"]
    sd = m["shapedirs"]
    rough = lambda d: (np.linalg.norm(d[f[:, 0]] - d[f[:, 1]], axis=1).mean(0)  # noqa: E731
                       / np.linalg.norm(d, axis=1).mean(0))
    assert rough(sd[:, :, :20]).max() < 0.2  # leading directions: neighbours (~4 mm apart) move alike
    sample = sd[:, :, :300] @ np.random.default_rng(0).standard_normal((300, 4))
    assert rough(sample).max() < 0.2
    back = skin & (v[:, 2] < -0.02)
    ex = np.linalg.norm(sd[:, :, 300:], axis=1)
    assert ex[back].max() < 1e-3 * ex.max()
