"""DECA's detail stage: the detail losses against torch / scipy references of DECA's code, the
wrinkle ground truth against a render of the dense displaced mesh, the weighted normal-map
path of the renderer, the DECADetail model (frozen coarse, detail-consistency pairing, the
metric, a short training run, inference outputs) and its config errors."""
import numpy as np
import paddle
import pytest

import ppface3d  # noqa: F401  (registers the models)
from ppengine.config import Config
from ppengine.errors import ConfigError, InputError

COARSE = {"type": "DECA", "encoder_depth": 10, "encoder_width": 8, "image_size": 64, "n_shape": 10,
          "encoder_pool": "flatten", "encoder_hidden": 64}


def _cfg(**over):
    model = {"type": "DECADetail", "coarse": dict(COARSE), "detail_size": 64, "decoder_channels": [16, 16, 8, 8],
             "encoder_depth": 10, "encoder_width": 8, "encoder_pool": "flatten", "encoder_hidden": 64}
    model.update(over.pop("model", {}))
    data = {"batch_size": 2,
            "train": {"type": "SyntheticFaces", "split": "train", "num_subjects": 4, "K": 2, "image_size": 64,
                      "shape_components": 10, "wrinkles": {"size": 128}},
            "test": {"type": "SyntheticFaces", "split": "test", "num_subjects": 4, "K": 1, "image_size": 64,
                     "shape_components": 10, "wrinkles": {"size": 128}, "detail_gt": True}}
    for k, v in over.pop("data", {}).items():
        data[k] = v if not isinstance(v, dict) or not isinstance(data.get(k), dict) else {**data[k], **v}
    return Config({"model": model, "data": data, "metrics": [{"type": "DetailNormalMetric"}], **over})


@pytest.fixture(scope="module")
def built():
    from ppengine.trainer import build_dataset, build_model

    cfg = _cfg()
    paddle.seed(0)
    return build_model(cfg), build_dataset(cfg, "train"), build_dataset(cfg, "test")


def _batch(ds, idx, keys=("image", "mask")):
    return {k: paddle.to_tensor(np.stack([ds[i][k] for i in idx])) for k in keys}


# ----------------------------------------------------------------------------- losses vs DECA (torch)
def test_losses_match_deca_torch():
    import torch
    import torch.nn.functional as TF
    from scipy.ndimage import binary_erosion

    from ppface3d.losses import detail_losses as L

    rng = np.random.default_rng(0)
    N, S = 2, 32
    tex, gt = rng.random((N, 3, S, S)).astype(np.float32), rng.random((N, 3, S, S)).astype(np.float32)
    vis = (rng.random((N, 1, S, S)) > 0.3).astype(np.float32)
    vis[:, :, 10:20, 8:24] = 1.0  # a solid block survives the erosion
    z = rng.normal(0, 0.003, (N, 1, S, S)).astype(np.float32)
    box = (4, 28, 6, 30)
    t, p = torch.from_numpy, paddle.to_tensor
    # DECA: crop to the face box, F.interpolate(..., mode='bilinear') to the patch size, masked L1 mean
    crop = lambda a: TF.interpolate(t(a)[:, :, 4:28, 6:30], [40, 40], mode="bilinear")  # noqa: E731
    ref = (crop(tex) * crop(vis) - crop(gt) * crop(vis)).abs().mean().item()
    got = float(L.detail_photometric_loss(p(tex), p(gt), p(vis), box, 40))
    assert abs(got - ref) < 1e-6 * max(1.0, ref)
    sh = t(tex)
    dx, dy = sh[:, :, 1:-1, 1:] - sh[:, :, 1:-1, :-1], sh[:, :, 1:, 1:-1] - sh[:, :, :-1, 1:-1]
    np.testing.assert_allclose(float(L.shading_smooth_loss(p(tex))), ((dx ** 2).mean() + (dy ** 2).mean()).item(),
                               rtol=1e-5)
    # DECA: nonvis = 1 - binary_erosion(vis, 5x5 ones) (scipy / skimage); sum(nonvis * |z - flip(z)|)
    ero = np.stack([binary_erosion(v[0], np.ones((5, 5)))[None] for v in vis]).astype(np.float32)
    np.testing.assert_array_equal(L.binary_erosion(p(vis)).numpy(), ero)
    ref_sym = ((1 - ero) * np.abs(z - z[..., ::-1])).sum()
    np.testing.assert_allclose(float(L.symmetry_loss(p(z), p(vis))), ref_sym, rtol=1e-5)
    np.testing.assert_allclose(float(L.displacement_l1(p(z))), np.abs(z).mean(), rtol=1e-6)

    # ID-MRF: DECA's IDMRFLoss.mrf_loss with 1x1 target patches as a convolution
    def mrf_torch(gen, tar):
        mean_t = tar.mean(1, keepdim=True)
        g, tt = gen - mean_t, tar - mean_t
        g, tt = g / g.norm(p=2, dim=1, keepdim=True), tt / tt.norm(p=2, dim=1, keepdim=True)
        cos = torch.cat([TF.conv2d(g[i:i + 1], tt[i].reshape(tt.shape[1], -1).T[:, :, None, None])
                         for i in range(g.shape[0])])
        d = -(cos - 1) / 2
        rel = d / (d.min(1, keepdim=True)[0] + 1e-5)
        e = torch.exp((1.0 - rel) / 0.5)
        cs = e / e.sum(1, keepdim=True)
        return (-torch.log(cs.reshape(cs.shape[0], cs.shape[1], -1).max(2)[0].mean(1))).sum()

    fa, fb = rng.normal(size=(2, 8, 5, 6)).astype(np.float32), rng.normal(size=(2, 8, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(float(L.mrf_loss(p(fa), p(fb))), mrf_torch(t(fa), t(fb)).item(), rtol=1e-4)
    assert float(L.mrf_loss(p(fb), p(fb))) < float(L.mrf_loss(p(fa), p(fb)))
    # the loss object: DECA's weights, and ID-MRF off without a feature network
    loss = L.DECADetailLoss()
    assert loss.w == dict(photo=2.0, reg_z=0.005, reg_diff=0.005, reg_sym=0.005, mrf=0.05, disp=0.0)
    assert loss.idmrf is None
    # the supervised term (not DECA's): mean |z - gt| in mm over the mask
    gt_z, fm = rng.normal(0, 0.002, z.shape).astype(np.float32), (rng.random((1, 1, S, S)) > 0.5).astype(np.float32)
    ref_sup = (np.abs(z - gt_z) * fm).sum() / (fm.sum() * N) * 1000.0
    np.testing.assert_allclose(float(L.supervised_displacement_loss(p(z), p(gt_z), p(fm))), ref_sup, rtol=1e-4)
    out = loss({"uv_texture": p(tex), "uv_texture_gt": p(gt), "uv_vis_mask": p(vis), "uv_z": p(z),
                "uv_shading": p(tex)}, box)
    assert set(out) == {"photo_detail", "z_reg", "z_diff", "z_sym", "loss"}
    np.testing.assert_allclose(float(out["z_sym"]), ref_sym * 0.005, rtol=1e-5)
    np.testing.assert_allclose(float(out["loss"]), sum(float(v) for k, v in out.items() if k != "loss"), rtol=1e-6)


class _TinyFeatures(paddle.nn.Layer):
    """A two-layer stand-in for VGG-19's relu3_2 / relu4_2 feature maps."""

    def __init__(self):
        super().__init__()
        self.a, self.b = paddle.nn.Conv2D(3, 4, 3, padding=1), paddle.nn.Conv2D(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        r3 = paddle.nn.functional.relu(self.a(x))
        return {"relu3_2": r3, "relu4_2": paddle.nn.functional.relu(self.b(r3))}


def test_idmrf_is_pluggable():
    """A feature network from the registry switches ID-MRF on, at photo x mrf (DECA's 2 x 0.05)."""
    from ppengine.registry import MODELS
    from ppface3d.losses.detail_losses import DECADetailLoss, mrf_loss

    if "_TinyFeatures" not in MODELS:
        MODELS.register(_TinyFeatures)
    loss = DECADetailLoss(feature_net={"type": "_TinyFeatures"})
    rng = np.random.default_rng(1)
    p = lambda *s: paddle.to_tensor(rng.random(s).astype(np.float32))  # noqa: E731
    pred = {"uv_texture": p(1, 3, 16, 16), "uv_texture_gt": p(1, 3, 16, 16), "uv_vis_mask": paddle.ones([1, 1, 16, 16]),
            "uv_z": p(1, 1, 16, 16), "uv_shading": p(1, 3, 16, 16)}
    out = loss(pred)
    f, g = loss.idmrf.net(pred["uv_texture"]), loss.idmrf.net(pred["uv_texture_gt"])
    ref = float(mrf_loss(f["relu3_2"], g["relu3_2"]) + 2 * mrf_loss(f["relu4_2"], g["relu4_2"])) * 2.0 * 0.05
    np.testing.assert_allclose(float(out["photo_detail_mrf"]), ref, rtol=1e-5)


def test_vgg19_features_load_paddle_weights(tmp_path):
    """VGG19Features (ID-MRF's network) takes paddle.vision's VGG-19 names; relu3_2 / relu4_2 are
    the ReLUs after conv3_2 and conv4_2 of that network."""
    from paddle.vision.models import vgg

    from ppengine.checkpoint import save_tensors
    from ppface3d.models.vgg_features import VGG19Features

    paddle.seed(3)
    ref = vgg.VGG(vgg.make_layers(vgg.cfgs["E"]), num_classes=0)  # vgg19's layout, no classifier to build
    path = str(tmp_path / "vgg19.safetensors")
    save_tensors(path, {k: v for k, v in ref.state_dict().items() if int(k.split(".")[1]) <= 21})
    net = VGG19Features(weights=path)
    x = paddle.rand([1, 3, 32, 32])
    out = net(x)
    h = (x - net.mean) / net.std
    for i in range(23):
        h = ref.features[i](h)
        if i == 13:
            np.testing.assert_allclose(out["relu3_2"].numpy(), h.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["relu4_2"].numpy(), h.numpy(), rtol=1e-5, atol=1e-6)
    assert out["relu3_2"].shape == [1, 256, 8, 8] and out["relu4_2"].shape == [1, 512, 4, 4]
    with pytest.raises(ConfigError, match="feature_net.weights"):
        VGG19Features()


# ----------------------------------------------------------------------------- rendering with normal maps
def test_weighted_normal_map_blends_with_vertex_normals():
    from ppface3d import FaceModel

    face = FaceModel(n_shape=10, n_exp=10, n_tex=10, image_size=48)
    dec = face.decode({"shape": paddle.zeros([1, 10]),
                       "cam": paddle.to_tensor(face.framing_camera(face.mean_landmarks())[None])})
    rng = np.random.default_rng(2)
    n = rng.normal(size=(1, 3, 32, 32)).astype(np.float32)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    plain = face.render(dec, mode="shape")["normal_images"].numpy()
    mapped = face.render(dec, mode="shape", normal_map=paddle.to_tensor(n))["normal_images"].numpy()
    for w, want in ((1.0, mapped), (0.0, plain), (0.25, 0.25 * mapped + 0.75 * plain)):
        nm = np.concatenate([n, np.full((1, 1, 32, 32), w, np.float32)], 1)
        got = face.render(dec, mode="shape", normal_map=paddle.to_tensor(nm))["normal_images"].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(mapped - plain).max() > 0.5


def test_grid_normals_equal_triangle_normals():
    from ppface3d.models.displacement import grid_triangles, grid_vertex_normals
    from ppface3d.render.mesh import vertex_normals

    rng = np.random.default_rng(3)
    P = rng.normal(size=(2, 3, 20, 24)).astype(np.float32)
    ref = vertex_normals(paddle.to_tensor(P.transpose(0, 2, 3, 1).reshape(2, -1, 3)),
                         paddle.to_tensor(grid_triangles(20, 24))).numpy().reshape(2, 20, 24, 3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(grid_vertex_normals(paddle.to_tensor(P)).numpy(), ref, atol=2e-5)


# ----------------------------------------------------------------------------- wrinkle ground truth
def test_wrinkles_follow_the_expression(built):
    """Raised brows deepen the forehead lines, a smile the nasolabial folds: activations read
    from the expression's landmarks against the neutral head, calibrated on the data's expressions."""
    _, ds, _ = built
    wr = ds.detail.wrinkles
    flame = ds.face.flame
    n_exp = ds.n_exp
    # the expression directions that raise the brows / lift the mouth corners most
    base = wr.features(np.zeros((1, ds.n_shape)), np.zeros((1, n_exp)), np.zeros((1, 3)))
    feats = wr.features(np.zeros((n_exp, ds.n_shape)), np.eye(n_exp) * 2.0, np.zeros((n_exp, 3))) - base
    brow, smile = int(np.argmax(feats[:, :2].sum(1))), int(np.argmax(feats[:, 2:4].sum(1)))
    assert flame.n_expression == n_exp
    e = np.zeros((3, n_exp), np.float32)
    e[1, brow] = e[2, smile] = 3.0
    act = wr.activations(np.zeros((3, ds.n_shape)), e, np.zeros((3, 3)))
    assert act[0].max() < 1e-4  # the neutral face: no expression wrinkles
    assert act[1, :2].min() > 0.5 and act[1, :2].min() > act[1, 2:4].max()
    assert act[2, 2:4].min() > 0.5
    params = [wr.subject_params(np.random.default_rng(0))] * 3
    params = [dict(p, bumps=p["bumps"] * 0) for p in params]
    d = wr.displacement(act, params)
    fore, naso = wr.patterns[0] > 0.5, wr.patterns[2] > 0.5
    assert d[1][fore].mean() < d[0][fore].mean() - 5e-4  # deeper grooves (negative displacement)
    assert d[2][naso].mean() < d[0][naso].mean() - 5e-4
    assert (wr.mask == 0).mean() > 0.3 and np.abs(d[:, wr.mask == 0]).max() == 0.0  # nothing outside the face


def test_detail_ground_truth_matches_dense_mesh_render(built):
    """SyntheticFaces' normal_gt (the renderer's normal-map path) against the renderer drawing the
    dense displaced mesh itself (vertex normals of real geometry), inside the face region."""
    from ppface3d.render import OrthographicCamera, Renderer

    _, _, test = built
    s = test[0]
    c = test.sample_codes(0)
    disp = test.detail.displacements([0], [c])[0]
    dec, cam = test.posed(c)
    verts = dec["vertices"]
    from ppface3d.render.mesh import vertex_normals

    normals = vertex_normals(verts, paddle.to_tensor(np.asarray(test.face.faces, np.int64)))
    uvmap = test.face.uv_map(disp.shape[0])
    dv, df, _ = uvmap.dense_mesh(verts[0], normals[0], disp, test.detail.wrinkles.mask > 0.5)
    r = Renderer(test.S, df)(paddle.to_tensor(dv[None]), OrthographicCamera(paddle.to_tensor(cam)))
    ref, covered = r["normal_images"].numpy()[0], r["alpha_images"].numpy()[0, 0] > 0.5
    from scipy.ndimage import binary_erosion

    inside = binary_erosion(covered & (s["detail_region"][0] > 0.5), iterations=2)
    from ppface3d.losses.detail_metrics import normal_angles

    ang = normal_angles(s["normal_gt"][0], ref)[inside]
    coarse = normal_angles(test.face.at_size(test.S).render(test.face.place(dec, paddle.to_tensor(cam)),
                                                             mode="shape")["normal_images"].numpy()[0], ref)[inside]
    assert inside.sum() > 300
    assert np.median(ang) < 3.0 and np.median(ang) < 0.5 * np.median(coarse), (np.median(ang), np.median(coarse))
    # the mirrored sample's ground truth is the mirror image (x flipped)
    flipped = test._mirrored({**s, "shape_mask": np.ones_like(s["shape"]), "exp_mask": np.ones_like(s["exp"])})
    np.testing.assert_allclose(flipped["normal_gt"][0, 0], -s["normal_gt"][0, 0, :, ::-1])


def test_refit_light_recovers_the_light():
    from ppface3d.models.deca_detail import refit_light
    from ppface3d.render.shading import sh_shading

    rng = np.random.default_rng(4)
    n = rng.normal(size=(2, 3, 24, 24)).astype(np.float32)
    n[:, 2] = np.abs(n[:, 2]) + 0.5
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    albedo = rng.uniform(0.3, 0.9, (2, 3, 24, 24)).astype(np.float32)
    light = rng.normal(0, 0.5, (2, 9, 3)).astype(np.float32)
    p = paddle.to_tensor
    target = (p(albedo) * sh_shading(p(n), p(light))).numpy()
    w = np.ones((2, 1, 24, 24), np.float32)
    w[1] = 0.0
    w[1, :, :4, :4] = 1.0  # 16 texels: too few, keeps the fallback
    fallback = np.zeros((2, 9, 3), np.float32)
    got = refit_light(p(albedo), p(n * 3.0), p(target), p(w), p(fallback)).numpy()  # normals renormalised
    # on normals facing the camera some SH directions are nearly collinear: compare the shading
    fit = (p(albedo) * sh_shading(p(n), p(got))).numpy()
    assert np.abs(fit[0] - target[0]).max() < 0.02 and np.abs(fit[0] - target[0]).mean() < 2e-3
    np.testing.assert_array_equal(got[1], fallback[1])


# ----------------------------------------------------------------------------- the model
def test_model_frozen_coarse_and_consistency_pairing(built):
    model, ds, _ = built
    assert all(p.stop_gradient for p in model.coarse.parameters())
    model.train()
    assert not model.coarse.training and model.E_detail.training
    batch = _batch(ds, [0, 1])
    out = model(batch)
    d = out["codes"]["detail"].numpy()
    assert out["doubled"] and d.shape == (8, 128)
    first, swapped = d[:4], d[4:]
    for i in range(4):  # each swapped code is another image's code of the same subject (K = 2)
        j = [k for k in range(4) if np.allclose(first[k], swapped[i])]
        assert j and j[0] // 2 == i // 2 and j[0] != i
    np.testing.assert_allclose(out["codes"]["exp"].numpy()[:4], out["codes"]["exp"].numpy()[4:])
    losses = model.losses(batch, out)
    losses["loss"].backward()
    assert all(p.grad is None for p in model.coarse.parameters())
    assert model.D_detail.l1[0].weight.grad is not None and model.E_detail.head[0].weight.grad is not None
    model.clear_gradients()


def test_metric_and_eval_step(built):
    from ppengine.data import eval_loader
    from ppface3d.losses import DetailNormalMetric
    from ppface3d.losses.detail_metrics import normal_angles

    model, _, test = built
    metric = DetailNormalMetric()
    for b in eval_loader(test, 4, 0):
        out = model.eval_step(b)
        metric.update(b, out)
    r = metric.compute()
    assert r["angle_pixels"] > 500 and 0 < r["angle_coarse"] < 180
    np.testing.assert_allclose(r["angle_ratio"], r["angle_detail"] / r["angle_coarse"])
    # on the true mesh the coarse error is the wrinkles' alone (a few degrees); the untrained
    # coarse model's own fit is far off
    assert 1.0 < r["gt_mesh_angle_coarse"] < 12.0 < r["angle_coarse"], r
    np.testing.assert_allclose(r["gt_mesh_angle_ratio"], r["gt_mesh_angle_detail"] / r["gt_mesh_angle_coarse"])
    # the angle itself: normals rotated by a known angle
    a = np.radians(17.0)
    n = np.zeros((1, 3, 2, 2), np.float32)
    n[:, 2] = 1.0
    rot = np.stack([np.zeros((1, 2, 2)), np.full((1, 2, 2), np.sin(a)), np.full((1, 2, 2), np.cos(a))], 1) * 2.0
    np.testing.assert_allclose(normal_angles(rot, n), 17.0, atol=1e-4)


def test_photometric_term_recovers_a_displacement():
    """The detail losses' chain (displacement -> detail normals -> SH shading -> UV photometric L1)
    recovers a wrinkle field from its shading alone: a free displacement map fitted to the shaded
    texture of a known one ends with normals within a few degrees of the truth."""
    from ppface3d import FaceModel
    from ppface3d.face_model import shape_light
    from ppface3d.losses.detail_losses import crop_box, detail_photometric_loss
    from ppface3d.losses.detail_metrics import normal_angles
    from ppface3d.models.displacement import displacement2normal
    from ppface3d.render.mesh import vertex_normals
    from ppface3d.render.shading import sh_shading

    face = FaceModel(n_shape=10, n_exp=10, n_tex=10, image_size=48)
    S = 64
    mask = face.uv_face_mask(S)
    v = face.decode({"shape": paddle.zeros([1, 10])})["vertices"]
    uv = face.uv_map(S).world2uv(paddle.concat([v, vertex_normals(v, paddle.to_tensor(np.asarray(face.faces)))], -1))
    C, R = np.meshgrid(np.arange(S), np.arange(S))
    d = (0.004 * np.sin(C * 0.9) * np.cos(R * 0.4) * mask).astype(np.float32)[None, None]
    light = shape_light()[None]
    light[:, 1] += 0.3  # a light from the side too
    light, m = paddle.to_tensor(light), paddle.to_tensor(mask[None, None])

    def shade(z):
        n = displacement2normal(z, uv[:, :3], uv[:, 3:], m)
        return 0.7 * sh_shading(n, light), n

    target, n_gt = shade(paddle.to_tensor(d))
    z = paddle.create_parameter([1, 1, S, S], "float32", default_initializer=paddle.nn.initializer.Constant(0.0))
    opt = paddle.optimizer.Adam(5e-4, parameters=[z])
    box = crop_box(mask)
    err = lambda: float(normal_angles(shade(z)[1].numpy(), n_gt.numpy())[:, mask > 0.5].mean())  # noqa: E731
    before = err()
    for _ in range(80):
        detail_photometric_loss(shade(z)[0], target, m, box).backward()
        opt.step()
        opt.clear_grad()
    after = err()
    assert before > 8.0 and after < 0.25 * before, (before, after)


def test_training_keeps_the_coarse_model_and_saves_it(tmp_path, built):
    from ppengine.checkpoint import load_tensors
    from ppengine.trainer import Trainer

    cfg = _cfg(train={"max_iters": 3, "log_interval": 100, "progress": False, "output": str(tmp_path / "run"),
                      "eval_interval": 0, "save_interval": 0}, optimizer={"type": "Adam", "lr": 1e-3})
    cfg["data"]["test"] = None
    cfg["metrics"] = []
    tr = Trainer(cfg)
    before = {k: v.numpy().copy() for k, v in tr.model.coarse.state_dict().items()}
    dec0 = tr.model.D_detail.l1[0].weight.numpy().copy()
    logs = tr.train()
    assert np.isfinite(logs["loss"]) and "photo_detail" in logs and "z_sym" in logs
    for k, v in tr.model.coarse.state_dict().items():  # frozen: weights and batch-norm statistics
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
    assert np.abs(tr.model.D_detail.l1[0].weight.numpy() - dec0).max() > 0
    saved = load_tensors(str(tmp_path / "run" / "final.safetensors"))
    assert any(k.startswith("coarse.") for k in saved) and any(k.startswith("D_detail.") for k in saved)
    assert "coarse:" in (tmp_path / "run" / "config.yml").read_text()  # the run describes its coarse model


def test_infer_writes_detail_outputs(built, tmp_path):
    """tools/infer.py face3d with a DECADetail run folder: the detail render, the OBJ's normal map
    from the detail normals and DECA's dense displaced mesh."""
    import skimage.data
    import trimesh
    from PIL import Image

    from ppengine.checkpoint import save_weights
    from ppface3d.apps.cli import main

    model, _, _ = built
    run = tmp_path / "run"
    run.mkdir()
    _cfg().save(str(run / "config.yml"))
    save_weights(str(run / "final.safetensors"), model)
    photo = tmp_path / "astro.jpg"
    Image.fromarray(skimage.data.astronaut()).save(photo)
    assert main(["--image", str(photo), "--output", str(tmp_path / "out"), "--weights", str(run), "--no-progress"]) == 0
    d = tmp_path / "out" / "astro"
    assert "detail" in np.load(d / "codes.npz")
    dense = trimesh.load(d / "mesh_detail.obj", process=False)
    assert len(dense.vertices) == int((model.face_mask > 0.5).sum()) and len(dense.faces) > 1000
    assert (d / "shape_detail.png").is_file() and (d / "mesh_normals.png").is_file()


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("over, match", [
    ({"data": {"train": {"K": 1}}}, r"model.loss.detail_consistency=True .* data.train.K=1"),
    ({"data": {"test": {"image_size": 96}}}, r"data.test.image_size=96 .* model.coarse.image_size=64"),
    ({"data": {"test": {"detail_gt": False}}}, r"metrics='DetailNormalMetric' .* data.test.detail_gt=False"),
    ({"data": {"test": {"wrinkles": {"size": 64}}}}, r"data.train.wrinkles=.* data.test.wrinkles=.* disagree"),
    ({"model": {"decoder_channels": [8, 8]}}, r"model.decoder_channels"),
    ({"model": {"loss": {"disp": 1.0}}, "data": {"train": {"wrinkles": None}, "test": {"wrinkles": None}}},
     r"model.loss.disp=1.0 .* data.train.wrinkles=None"),
    ({"model": {"coarse": None, "coarse_weights": None}}, r"model.coarse_weights"),
])
def test_config_errors(over, match):
    from ppengine.trainer import build_model

    with pytest.raises(ConfigError, match=match):
        build_model(_cfg(**over))


def test_coarse_weights_errors(tmp_path, built):
    from ppengine.checkpoint import save_weights
    from ppengine.trainer import build_model

    with pytest.raises(InputError, match="model.coarse_weights='/no/such/run' not found"):
        build_model(_cfg(model={"coarse_weights": "/no/such/run"}))
    run = tmp_path / "coarse"
    run.mkdir()
    Config({"model": dict(COARSE, encoder_width=16)}).save(str(run / "config.yml"))
    from ppengine.registry import MODELS

    save_weights(str(run / "final.safetensors"), MODELS.build(dict(COARSE, encoder_width=16)))
    with pytest.raises(ConfigError, match=r"model.coarse.encoder_width=8 and model.encoder_width=16"):
        build_model(_cfg(model={"coarse_weights": str(run)}))
    m = build_model(_cfg(model={"coarse": None, "coarse_weights": str(run)}))  # the run's own config
    assert m.coarse.encoder.backbone.conv1.weight.shape[0] == 16
    with pytest.raises(ConfigError, match="detail_gt=true needs wrinkles"):
        from ppface3d.data import SyntheticFaces

        SyntheticFaces(detail_gt=True)
