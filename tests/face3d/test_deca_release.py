"""DECA's released checkpoint layout read into Paddle: parity with DECA's modules built in torch.

The torch reference modules below are written here from DECA's decalib/models (resnet.py's ResNet
+ Bottleneck with torchvision's key names, encoders.ResnetEncoder, decoders.Generator), given
random weights and random batch-norm statistics, saved with ``torch.save`` as DECA saves
``deca_model.tar`` ({'E_flame', 'E_detail', 'D_detail'}), and read back without torch.
"""
import os

import numpy as np
import paddle
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from ppengine.errors import InputError  # noqa: E402
from ppengine.safe_load import UnsafePickleError  # noqa: E402
from ppface3d.models.deca_release import DECA_CODES, DECARelease, read_deca_checkpoint  # noqa: E402


# ----------------------------------------------------------------------------- DECA in torch
class Bottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(tnn.Module):
    def __init__(self, w=64):  # w: first-stage width (DECA 64; 16 keeps the end-to-end test's file small)
        super().__init__()
        self.inplanes = w
        self.conv1 = tnn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = tnn.BatchNorm2d(w)
        self.relu = tnn.ReLU()
        self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make(w, 3)
        self.layer2 = self._make(2 * w, 4, 2)
        self.layer3 = self._make(4 * w, 6, 2)
        self.layer4 = self._make(8 * w, 3, 2)

    def _make(self, planes, blocks, stride=1):
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = tnn.Sequential(tnn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                  tnn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # DECA: AvgPool2d(7) on the 7x7 map of a 224 input, i.e. the global mean; the tests use 64x64
        return x.mean((2, 3))


class ResnetEncoder(tnn.Module):
    def __init__(self, outsize, w=64):
        super().__init__()
        self.encoder = ResNet50(w)
        self.layers = tnn.Sequential(tnn.Linear(32 * w, 16 * w), tnn.ReLU(), tnn.Linear(16 * w, outsize))

    def forward(self, x):
        return self.layers(self.encoder(x))


class Generator(tnn.Module):
    def __init__(self, latent_dim=181, out_scale=0.01):
        super().__init__()
        self.out_scale = out_scale
        self.l1 = tnn.Sequential(tnn.Linear(latent_dim, 128 * 8 * 8))
        blocks = [tnn.BatchNorm2d(128)]
        for cin, cout in ((128, 128), (128, 64), (64, 64), (64, 32), (32, 16)):
            blocks += [tnn.Upsample(scale_factor=2, mode="bilinear"), tnn.Conv2d(cin, cout, 3, 1, 1),
                       tnn.BatchNorm2d(cout, 0.8), tnn.LeakyReLU(0.2, inplace=True)]
        blocks += [tnn.Conv2d(16, 1, 3, 1, 1), tnn.Tanh()]
        self.conv_blocks = tnn.Sequential(*blocks)

    def forward(self, z):
        return self.conv_blocks(self.l1(z).view(z.shape[0], 128, 8, 8)) * self.out_scale


def _randomise_bn(module, gen):
    for m in module.modules():
        if isinstance(m, tnn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=gen) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
            m.num_batches_tracked.fill_(7)


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def _deca_nets(path, w=64):
    """DECA's three networks with random weights, saved as deca_model.tar at ``path``."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    nets = {"E_flame": ResnetEncoder(236, w), "E_detail": ResnetEncoder(128, w), "D_detail": Generator()}
    with torch.no_grad():
        for net in nets.values():
            _randomise_bn(net, gen)
            net.eval()
    torch.save({k: v.state_dict() for k, v in nets.items()}, path)
    return nets


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("deca") / "deca_model.tar")
    nets = _deca_nets(path)
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        x = torch.from_numpy(images)
        params = nets["E_flame"](x).numpy()
        detail = nets["E_detail"](x).numpy()
        pose = params[:, 200:206]
        exp = params[:, 150:200]
        z = torch.from_numpy(np.concatenate([pose[:, 3:], exp, detail], 1))
        disp = nets["D_detail"](z).numpy()
    return {"path": path, "images": images, "params": params, "detail": detail, "disp": disp}


@pytest.fixture(scope="module")
def model(release):
    m = DECARelease(checkpoint=release["path"], image_size=64)
    m.eval()
    return m


def test_codes_match_deca(release, model):
    codes = model.encode(paddle.to_tensor(release["images"]))
    off, errs = 0, {}
    for k, n in DECA_CODES.items():
        ref = release["params"][:, off:off + n]
        errs[k] = _rel(codes[k].numpy().reshape(ref.shape), ref)
        off += n
    errs["detail"] = _rel(codes["detail"].numpy(), release["detail"])
    print("max relative error vs DECA (torch):", {k: f"{v:.1e}" for k, v in errs.items()})
    assert max(errs.values()) <= 1e-4, errs
    assert codes["light"].shape == [2, 9, 3]


def test_detail_map_matches_deca(release, model):
    codes = model.encode(paddle.to_tensor(release["images"]))
    disp = model.displacement(codes).numpy()
    assert disp.shape == (2, 1, 256, 256)
    assert np.abs(release["disp"]).max() > 1e-4  # not a trivially flat map
    err = _rel(disp, release["disp"])
    print(f"detail map max relative error vs DECA (torch): {err:.1e}")
    assert err <= 1e-4


def test_checkpoint_keys(release):
    states = read_deca_checkpoint(release["path"])
    assert set(states) == {"E_flame", "E_detail", "D_detail"}
    assert states["E_flame"]["layers.2.weight"].shape == (236, 2048 // 2)
    assert states["D_detail"]["l1.0.weight"].shape == (8192, 181)


def test_wrong_file_is_a_clear_error(tmp_path):
    p = str(tmp_path / "other.tar")
    torch.save({"model": {"w": torch.zeros(3)}}, p)
    with pytest.raises(InputError, match="not a DECA checkpoint"):
        DECARelease(checkpoint=p, image_size=64)
    p2 = str(tmp_path / "small.tar")
    torch.save({k: {"w": torch.zeros(2)} for k in ("E_flame", "E_detail", "D_detail")}, p2)
    with pytest.raises(InputError, match="does not match DECA's"):
        DECARelease(checkpoint=p2, image_size=64)
    with pytest.raises(InputError, match="not found"):
        DECARelease(checkpoint=str(tmp_path / "none.tar"), image_size=64)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_checkpoint_refused(tmp_path, zipped):
    marker = tmp_path / "ran"
    p = str(tmp_path / "deca_model.tar")
    torch.save({"E_flame": {"x": _Evil(str(marker))}, "E_detail": {}, "D_detail": {}}, p,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafePickleError, match="system"):
        DECARelease(checkpoint=p, image_size=64)
    assert not marker.exists()


# ----------------------------------------------------------------------------- end to end
CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "deca_release.yml")


def _deca_data(folder):
    """A DECA data/ folder in DECA's formats for the generated FLAME model: the landmark
    embedding (copied from the generated FLAME cache), the fixed displacement (256, 256) and the two UV mask PNGs."""
    import shutil

    from PIL import Image

    from ppface3d.flame.generate import default_model_path

    folder.mkdir()
    shutil.copy(os.path.join(os.path.dirname(default_model_path()), "landmark_embedding.npy"), folder)
    rng = np.random.default_rng(3)
    np.save(folder / "fixed_displacement_256.npy", rng.normal(0, 1e-3, (256, 256)).astype(np.float32))
    r, c = np.mgrid[:256, :256]
    for name, radius in (("uv_face_eye_mask.png", 0.8), ("uv_face_mask.png", 0.7)):
        m = ((r - 128) / 128.0) ** 2 + ((c - 128) / 128.0) ** 2 < radius ** 2
        Image.fromarray(np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1)).save(folder / name)
    return folder


def test_convert_and_infer_end_to_end(tmp_path):
    """deca_model.tar (width-16 trunks: small file) -> tools/convert_deca.py -> tools/infer.py face3d
    with configs/deca_release.yml: codes.npz holds E_flame's codes of DECA's crop (torch reference)."""
    import skimage.data
    from PIL import Image

    from ppface3d.apps.cli import main as infer_main
    from ppface3d.data.preprocess import FacePreprocessor
    from ppface3d.models.deca_release import main as convert_main

    tar = str(tmp_path / "deca_model.tar")
    nets = _deca_nets(tar, w=16)
    data = _deca_data(tmp_path / "data")
    common = ["-o", f"model.deca_data={data}", "-o", "model.encoder_width=16"]
    st = str(tmp_path / "deca.safetensors")
    assert convert_main(["-c", CONFIG, "--out", st, "-o", f"model.checkpoint={tar}"] + common) == 0
    assert convert_main(["-c", CONFIG, "--out", str(tmp_path / "x.safetensors")] + common) == 2  # no checkpoint
    assert not (tmp_path / "x.safetensors").exists()
    photo = str(tmp_path / "astro.jpg")
    Image.fromarray(skimage.data.astronaut()).save(photo)
    out = tmp_path / "out"
    assert infer_main(["--image", photo, "--output", str(out), "-c", CONFIG, "--weights", st, "--no-progress"]
                      + common) == 0
    codes = np.load(out / "astro" / "codes.npz")
    crop = FacePreprocessor(crop_size=224, scale=1.25)(photo).faces[0].image  # the crop infer used
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))[None].astype(np.float32))
        ref = nets["E_flame"](x).numpy()
        ref_detail = nets["E_detail"](x).numpy()
    off = 0
    for k, n in DECA_CODES.items():
        assert codes[k].size == n, k
        assert _rel(codes[k].reshape(1, n), ref[:, off:off + n]) <= 1e-4, k
        off += n
    assert codes["light"].shape == (1, 9, 3)
    assert (out / "astro" / "mesh.obj").is_file() and (out / "astro" / "textured.png").is_file()
    assert _rel(codes["detail"], ref_detail) <= 1e-4  # codes.npz carries DECA's 128-d detail code too
    # the released file itself, no conversion: as model.weights (the command) and as model.checkpoint
    for i, how in enumerate([["-o", f"model.weights={tar}"], ["-o", f"model.checkpoint={tar}"]]):
        o = tmp_path / f"direct{i}"
        assert infer_main(["--image", photo, "--output", str(o), "-c", CONFIG, "--no-progress"] + how + common) == 0
        direct = np.load(o / "astro" / "codes.npz")
        for k in list(DECA_CODES) + ["detail"]:
            np.testing.assert_allclose(direct[k], codes[k], rtol=1e-5, atol=1e-6)
    # the model's reconstruct (what infer calls) also gives DECA's detail code and detail maps
    model = DECARelease(deca_data=str(data), encoder_width=16, checkpoint=tar)
    model.eval()
    r = model.reconstruct(paddle.to_tensor(x.numpy()))
    assert _rel(r["codes"]["detail"].numpy(), ref_detail) <= 1e-4
    assert r["displacement_map"].shape == [1, 1, 256, 256] and r["shape_detail"].shape == [1, 3, 224, 224]
    verts, faces, _ = model.dense_mesh(r)
    assert len(verts) == int(((model.face_mask > 0.5) & model.uvmap.covered).sum()) and len(faces) > 1000


def test_deca_data_folder_errors(tmp_path):
    from ppengine.errors import ConfigError

    with pytest.raises(ConfigError, match="not a folder"):
        DECARelease(deca_data=str(tmp_path / "nope"))
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="landmark_embedding.npy is missing"):
        DECARelease(deca_data=str(tmp_path / "d"))


def test_flame_without_uv_layout_is_refused(tmp_path):
    import pickle

    from ppengine.safe_load import load_pickle
    from ppface3d.flame.generate import default_model_path

    model = {k: v for k, v in load_pickle(default_model_path()).items() if k not in ("vt", "ft")}
    (tmp_path / "generic_model.pkl").write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(InputError, match="no UV layout.*head_template.obj"):
        DECARelease(flame_model_path=str(tmp_path / "generic_model.pkl"))
