"""MICA trained here: the mapping network's layout and MICA's loss weights against NumPy, the
regions of the generated head, the identity-spread metric, configs/mica.yml training a few steps
(features cached on disk) and its build-time checks."""
import os
import pickle

import numpy as np
import paddle
import pytest

from ppengine.config import load_config
from ppengine.errors import ConfigError, InputError
from ppface3d.flame import FLAME
from ppface3d.flame.masks import flame_masks, vertex_weights
from ppface3d.losses.identity_spread import IdentitySpreadMetric
from ppface3d.losses.mica_loss import mica_vertex_loss
from ppface3d.models.mica import MappingNetwork

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "mica.yml")


def _leaky(x):
    return np.where(x > 0, x, 0.2 * x)


@pytest.mark.parametrize("hidden", [3, 6])
def test_mapping_network_layout_and_forward(hidden):
    """MICA's MappingNetwork: Linear(z, h) + `hidden` Linear(h, h) (the layer after hidden // 2 also
    takes z back when hidden > 5), LeakyReLU 0.2, output Linear(h, out); names network.i / output."""
    paddle.seed(0)
    z_dim, h, out = 16, 12, 5
    net = MappingNetwork(z_dim, h, out, hidden)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    skip = hidden // 2 if hidden > 5 else None
    expect = {"network.0.weight": (z_dim, h), "output.weight": (h, out), "output.bias": (out,)}
    for i in range(hidden):
        expect[f"network.{i + 1}.weight"] = (h + (z_dim if i == skip else 0), h)
    assert {k: v.shape for k, v in sd.items() if k.endswith("weight")} == {k: v for k, v in expect.items() if k.endswith("weight")}
    assert len(sd) == 2 * (hidden + 2)
    z = np.random.default_rng(0).normal(size=(4, z_dim)).astype(np.float32)
    a = z.astype(np.float64)
    for i in range(hidden + 1):  # NumPy reference of MICA's forward
        a = _leaky(a @ sd[f"network.{i}.weight"] + sd[f"network.{i}.bias"])
        if i == skip:
            a = np.concatenate([z, a], 1)
    ref = a @ sd["output.weight"] + sd["output.bias"]
    np.testing.assert_allclose(net(paddle.to_tensor(z)).numpy(), ref, rtol=1e-5, atol=1e-6)
    # MICA's initialisation: output weights a quarter of torch's default range
    assert np.abs(sd["output.weight"]).max() <= 0.25 / np.sqrt(h) + 1e-7


def test_region_weights_and_loss_against_numpy(tmp_path):
    """MICA's order (whole 1, eyes 0.01, ears 0.01, then face 150 over them) and its loss
    mean(|pred - gt| * w) * 1000 on a small mesh, with masks read from a FLAME_masks.pkl-style file."""
    V = 12
    masks = {"face": np.array([0, 1, 2, 3, 4]), "eyes": np.array([4, 5]), "ears": np.array([6, 7])}
    w = vertex_weights(masks, V)
    np.testing.assert_array_equal(w, np.array([150] * 5 + [0.01] * 3 + [1] * 4, np.float32))  # vertex 4: face wins over eyes
    rng = np.random.default_rng(0)
    pred, gt = rng.normal(size=(2, 3, V, 3)).astype(np.float32)
    ref = (np.abs(pred - gt) * w[None, :, None]).mean() * 1000.0
    got = mica_vertex_loss(paddle.to_tensor(pred), paddle.to_tensor(gt), paddle.to_tensor(w)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # FLAME's masks file layout (left / right eyeballs and ears), read through the allow-list
    flame = FLAME(n_shape=1, n_expression=0)
    f = {"face": np.arange(100, 300), "left_eyeball": np.arange(10), "right_eyeball": np.arange(10, 20),
         "left_ear": np.arange(30, 35), "right_ear": np.arange(35, 40), "nose": np.arange(5)}
    p = tmp_path / "FLAME_masks.pkl"
    p.write_bytes(pickle.dumps(f, protocol=2))
    m = flame_masks(flame, str(p))
    np.testing.assert_array_equal(m["eyes"], np.arange(20))
    np.testing.assert_array_equal(m["ears"], np.arange(30, 40))
    f["face"] = np.array([flame.num_vertices + 3])
    p.write_bytes(pickle.dumps(f, protocol=2))
    with pytest.raises(InputError, match="another topology"):
        flame_masks(flame, str(p))


def test_generated_head_regions():
    from ppengine.safe_load import load_pickle

    flame = FLAME(n_shape=1, n_expression=0)
    m = flame_masks(flame)
    labels = load_pickle(flame.model_path)["part_labels"]
    np.testing.assert_array_equal(m["eyes"], np.nonzero((labels == 1) | (labels == 2))[0])
    assert not set(m["face"]) & set(m["eyes"]) and not set(m["face"]) & set(m["ears"])
    v = flame.v_template.numpy()
    assert 800 < len(m["face"]) < 0.4 * len(v) and 40 < len(m["ears"]) < 400
    assert v[m["face"], 2].min() > 0 and np.abs(v[m["ears"], 0]).min() > 0.06  # the front; the sides
    assert (v[m["ears"], 0] > 0).sum() == (v[m["ears"], 0] < 0).sum()  # both ears, symmetric


def test_identity_spread_metric_against_numpy():
    rng = np.random.default_rng(1)
    B, K, V = 3, 4, 50
    verts = rng.normal(scale=0.01, size=(B, K, V, 3)).astype(np.float32)
    mean_v = rng.normal(scale=0.05, size=(V, 3)).astype(np.float32)
    lmk = np.zeros((68, 3), np.float32)
    lmk[30] = mean_v[0]
    region = np.linalg.norm(mean_v - lmk[30], axis=-1) <= 0.06
    m = IdentitySpreadMetric(radius=0.06)
    gt = rng.normal(scale=0.01, size=(B, K, V, 3)).astype(np.float32)
    m.update({"subject": np.arange(B), "gt_verts_neutral": gt},
             {"verts_neutral": verts.reshape(B * K, V, 3), "verts_mean": mean_v, "lmk3d_mean": lmk})
    r = m.compute()
    x = verts[:, :, region]
    spread = np.linalg.norm(x - x.mean(1, keepdims=True), axis=-1).mean((1, 2)).mean() * 1000
    means = x.mean(1)
    between = np.linalg.norm(means - means.mean(0), axis=-1).mean() * 1000
    g = gt[:, 0, region]
    np.testing.assert_allclose(r["identity_spread_mm"], spread, rtol=1e-6)
    np.testing.assert_allclose(r["between_subjects_mm"], between, rtol=1e-6)
    np.testing.assert_allclose(r["gt_between_subjects_mm"], np.linalg.norm(g - g.mean(0), axis=-1).mean() * 1000, rtol=1e-6)


def _tiny(tmp_path, extra=()):
    cache = str(tmp_path / "features")
    over = ["data.train.num_subjects=3", "data.train.K=2", "data.batch_size=2", "data.train.image_size=64",
            "data.val=null", "data.test.num_subjects=2", "data.test.K=2", "data.test.image_size=64",
            f"data.train.feature_cache={cache}", f"data.test.feature_cache={cache}", "data.train.chunk=2",
            "model.image_size=64", "train.max_iters=3", "train.eval_interval=0", "train.save_interval=0",
            "train.log_interval=1", "train.progress=false", f"train.output={tmp_path / 'run'}",
            "metrics.0.max_samples=1"]  # one scan-to-mesh evaluation (about a second each)
    return load_config(CONFIG, over + list(extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """configs/mica.yml trained 3 steps on 3 subjects (features cached in the run's tmp folder)."""
    from ppengine.trainer import Trainer

    tmp_path = tmp_path_factory.mktemp("mica")
    tr = Trainer(_tiny(tmp_path))
    before = {k: v.numpy().copy() for k, v in tr.model.mapping.state_dict().items()}
    logs = tr.train()
    return tmp_path, tr, before, logs


def test_config_trains_caches_and_evaluates(trained):
    tmp_path, tr, before, logs = trained
    cfg = tr.cfg
    assert np.isfinite(logs["loss"]) and logs["vertex_mm"] > 0
    assert any(not np.allclose(v.numpy(), before[k]) for k, v in tr.model.mapping.state_dict().items())
    chunks = sorted(os.listdir(os.path.join(str(tmp_path / "features"), os.listdir(str(tmp_path / "features"))[0])))
    assert chunks == ["chunk_00000.npy", "chunk_00001.npy", "key.json"]  # 3 subjects in chunks of 2
    res = tr.evaluate()
    for k in ("s2m_median", "baseline_s2m_median", "identity_spread_mm", "between_subjects_mm", "gt_between_subjects_mm"):
        assert np.isfinite(res[k]), k
    assert "lmk_nme" not in res  # MICA predicts no landmarks
    assert os.path.isfile(tmp_path / "run" / "final.safetensors") and os.path.isfile(tmp_path / "run" / "config.yml")
    # the cached features are the dataset's: a second dataset reads them back without rendering
    from ppengine.trainer import build_dataset

    ds = build_dataset(cfg, "train")
    ds._generate_many = None  # any rendering would fail now
    item = ds[2]
    assert item["identity"].shape == (2, 128) and "image" not in item and "gt_verts_neutral" not in item
    np.testing.assert_allclose(np.linalg.norm(item["identity"], axis=1), 1.0, atol=1e-5)
    # and they are the features of the rendered images with their true landmarks
    from ppface3d.data.identity_features import DlibFaceDescriptor
    from ppface3d.render.cameras import ndc_to_pixels

    full = build_dataset(load_config(CONFIG, [f"{k}" for k in _over_images(tmp_path)]), "train")
    s = full[2]
    img = (s["image"][1].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    ref = DlibFaceDescriptor().describe(img, ndc_to_pixels(s["landmark"][1, :, :2], 64))
    np.testing.assert_allclose(s["identity"][1], ref, atol=1e-5)
    np.testing.assert_allclose(s["identity"], item["identity"], atol=1e-6)


def _over_images(tmp_path):
    return ["data.train.num_subjects=3", "data.train.K=2", "data.train.image_size=64", "data.train.images=true",
            f"data.train.feature_cache={tmp_path / 'features'}", "data.train.chunk=2"]


def test_config_disagreements_name_both_keys(tmp_path):
    from ppengine.trainer import build_model

    cfg = _tiny(tmp_path, ["data.train.features={type: onnx, path: /x/w600k_r50.onnx}"])
    with pytest.raises(ConfigError, match="data.train.features.*model.identity"):
        build_model(cfg)
    cfg = _tiny(tmp_path, ["data.test.shape_components=20"])
    with pytest.raises(ConfigError, match="data.test.shape_components.*model.n_shape"):
        build_model(cfg)
    with pytest.raises(ConfigError, match="augment"):
        from ppface3d.data import IdentitySyntheticFaces

        IdentitySyntheticFaces(augment=True)


def test_infer_mica_with_the_fitter_and_with_deca(trained, tmp_path):
    """tools/infer.py face3d --model mica: codes.npz carries MICA's shape of the crop; the fitter
    fits the rest around it; with a DECA model (base) its other codes are DECA's."""
    import skimage.data
    from PIL import Image

    from ppengine.checkpoint import save_weights
    from ppengine.trainer import build_model
    from ppface3d.apps.cli import main
    from ppface3d.apps.mica_reconstruct import MICAReconstructor, load_mica
    from ppface3d.apps.reconstruct import FaceReconstructor
    from ppface3d.data.preprocess import FacePreprocessor

    run = trained[0] / "run"
    photo = str(tmp_path / "astro.jpg")
    Image.fromarray(skimage.data.astronaut()).save(photo)
    out = tmp_path / "out"
    assert main(["--image", photo, "--output", str(out), "--model", "mica", "--weights", str(run),
                 "--fit-iters", "4", "2", "--fit-size", "32", "--no-progress"]) == 0
    codes = np.load(out / "astro" / "codes.npz")
    mica = trained[1].model.eval()  # the run's final weights (what --weights loaded)
    crop = FacePreprocessor()(photo).faces[0]
    ref = mica.predict_shape([crop.image], [crop.landmarks])
    np.testing.assert_allclose(codes["shape"], ref, rtol=1e-5, atol=1e-6)
    assert codes["exp"].shape == (1, 50) and np.abs(codes["exp"]).max() > 0  # fitted
    assert (out / "astro" / "mesh.obj").is_file() and (out / "astro" / "overlay.png").is_file()
    assert main(["--image", photo, "--output", str(out), "--model", "mica"]) == 2  # no weights: one-line error
    # a DECA model for the other codes (untrained weights: only the plumbing is checked)
    deca_cfg = os.path.join(os.path.dirname(CONFIG), "deca.yml")
    over = ["model.image_size=64", "data.train.num_subjects=2"]
    weights = str(tmp_path / "deca.safetensors")
    save_weights(weights, build_model(load_config(deca_cfg, over)))
    rec = MICAReconstructor(mica, base=weights, base_config=deca_cfg, base_overrides=over, progress=False)
    c = rec.codes(crop)
    d = rec.base.codes(crop)  # DECA's own codes (a FaceReconstructor of that run)
    assert isinstance(rec.base, FaceReconstructor) and rec.base.model is not None
    np.testing.assert_allclose(c["shape"], ref, rtol=1e-5, atol=1e-6)
    for k in ("exp", "pose", "cam", "tex", "light"):
        np.testing.assert_allclose(c[k], d[k], rtol=1e-5, atol=1e-6)
    mica20 = load_mica(str(run), overrides=["model.n_tex=20"])  # another albedo space than DECA's
    with pytest.raises(InputError, match="not MICA's"):
        MICAReconstructor(mica20, base=weights, base_config=deca_cfg, base_overrides=over)
