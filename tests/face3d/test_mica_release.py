"""MICA's released checkpoint layout read into Paddle: parity with MICA's modules built in torch.

The torch modules below are written here from MICA's models/arcface.py (insightface's iresnet100:
[3, 13, 30, 3] IBasicBlocks, PReLU, BatchNorm1d features) and models/generator.py (MappingNetwork
as ``regressor``, MICA's FLAME copy as ``generator``), with MICA's key names; the trunk keeps
iresnet100's depth at 4 stem channels instead of 64 (a small file). Random weights, random
batch-norm statistics and PReLU slopes; saved with ``torch.save`` as MICA saves ``mica.tar``
({'arcface', 'flameModel'}) and read back without torch.
"""
import os

import numpy as np
import paddle
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
tF = torch.nn.functional

try:  # DECA's torch test helpers, beside this file: tests/face3d/torch_deca.py (or, before it, test_deca_release)
    from torch_deca import randomise_bn as _randomise_bn  # noqa: E402
except ImportError:
    from test_deca_release import _randomise_bn  # noqa: E402

from ppengine.errors import ConfigError, InputError  # noqa: E402
from ppengine.safe_load import UnsafePickleError, load_pickle  # noqa: E402
from ppface3d.data.identity_features import arcface_blob, arcface_crop  # noqa: E402
from ppface3d.flame.generate import default_model_path  # noqa: E402
from ppface3d.models.mica import MICA, read_mica_checkpoint  # noqa: E402

WIDTH = 4  # iresnet100 stem channels here (64 in MICA's file)
N_SHAPE = 300


# ----------------------------------------------------------------------------- MICA in torch
class IBasicBlock(tnn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = tnn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = tnn.PReLU(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class Arcface(tnn.Module):
    def __init__(self, w=64, layers=(3, 13, 30, 3)):
        super().__init__()
        self.inplanes = w
        self.conv1 = tnn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(w, eps=1e-05)
        self.prelu = tnn.PReLU(w)
        for i, n in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make(w * 2 ** i, n))
        self.bn2 = tnn.BatchNorm2d(8 * w, eps=1e-05)
        self.dropout = tnn.Dropout(p=0, inplace=True)
        self.fc = tnn.Linear(8 * w * 49, 512)
        self.features = tnn.BatchNorm1d(512, eps=1e-05)

    def _make(self, planes, blocks):
        down = tnn.Sequential(tnn.Conv2d(self.inplanes, planes, 1, 2, bias=False), tnn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, 2, down)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.bn2(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return self.features(self.fc(self.dropout(torch.flatten(x, 1))))


class MappingNetwork(tnn.Module):
    def __init__(self, z_dim, map_hidden_dim, map_output_dim, hidden=2):
        super().__init__()
        self.skips = [int(hidden / 2)] if hidden > 5 else []
        self.network = tnn.ModuleList(
            [tnn.Linear(z_dim, map_hidden_dim)]
            + [tnn.Linear(map_hidden_dim + (z_dim if i in self.skips else 0), map_hidden_dim) for i in range(hidden)])
        self.output = tnn.Linear(map_hidden_dim, map_output_dim)

    def forward(self, z):
        h = z
        for i, layer in enumerate(self.network):
            h = tF.leaky_relu(layer(h), negative_slope=0.2)
            if i in self.skips:
                h = torch.cat([z, h], 1)
        return self.output(h)


class FlameCopy(tnn.Module):
    """The FLAME arrays MICA's Generator keeps as buffers (a few of them, with MICA's names)."""

    def __init__(self, model):
        super().__init__()
        self.register_buffer("faces_tensor", torch.from_numpy(np.asarray(model["f"], np.int64)))
        self.register_buffer("v_template", torch.from_numpy(np.asarray(model["v_template"], np.float32)))
        sd = np.asarray(model["shapedirs"], np.float32)
        self.register_buffer("shapedirs", torch.from_numpy(np.concatenate([sd[:, :, :N_SHAPE], sd[:, :, 300:]], 2)))
        self.eye_pose = tnn.Parameter(torch.zeros(1, 6), requires_grad=False)

    def forward(self, shape):
        return self.v_template[None] + torch.einsum("bl,mkl->bmk", shape, self.shapedirs[:, :, :N_SHAPE])


class Generator(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.regressor = MappingNetwork(512, 300, N_SHAPE, 3)
        self.generator = FlameCopy(model)

    def forward(self, arcface):
        shape = self.regressor(arcface)
        return self.generator(shape), shape


def _randomise(module, gen):
    """Random batch-norm statistics and affine terms (DECA's test helper; the 1-d ``features`` norm
    through a 2-d view of it) and random PReLU slopes."""
    _randomise_bn(module, gen)
    feats = module.features
    view = tnn.BatchNorm2d(feats.num_features)
    _randomise_bn(view, gen)
    feats.load_state_dict(view.state_dict())
    for m in module.modules():
        if isinstance(m, tnn.PReLU):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) * 0.4)


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    arcface, flame_model = Arcface(WIDTH), Generator(load_pickle(default_model_path()))
    with torch.no_grad():
        _randomise(arcface, gen)
        for lin in flame_model.regressor.modules():  # MICA's scale: its trained codes are of order 1
            if isinstance(lin, tnn.Linear):
                lin.weight.mul_(2.0)
    arcface.eval()
    flame_model.eval()
    path = str(tmp_path_factory.mktemp("mica") / "mica.tar")
    torch.save({"arcface": arcface.state_dict(), "flameModel": flame_model.state_dict()}, path)
    blob = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        feat = arcface(torch.from_numpy(blob))
        verts, shape = flame_model(tF.normalize(feat))
    return {"path": path, "blob": blob, "feat": feat.numpy(), "shape": shape.numpy(), "verts": verts.numpy(),
            "torch": (arcface, flame_model)}


@pytest.fixture(scope="module")
def model(release):
    m = MICA(identity={"type": "arcface"}, checkpoint=release["path"], arcface_width=WIDTH, n_shape=N_SHAPE,
             image_size=64)
    m.eval()
    return m


def test_checkpoint_keys(release):
    states = read_mica_checkpoint(release["path"])
    assert set(states) == {"arcface", "flameModel"}
    a, f = states["arcface"], states["flameModel"]
    assert len([k for k in a if k.startswith("layer3.") and k.endswith(".conv1.weight")]) == 30  # iresnet100 depth
    assert a["fc.weight"].shape == (512, 8 * WIDTH * 49) and a["features.running_var"].shape == (512,)
    assert f["regressor.network.0.weight"].shape == (300, 512) and f["regressor.output.weight"].shape == (N_SHAPE, 300)
    assert len([k for k in f if k.startswith("regressor.network.") and k.endswith(".weight")]) == 4


def test_outputs_match_mica(release, model):
    feat = model.arcface_features(paddle.to_tensor(release["blob"])).numpy()
    out = model({"arcface": paddle.to_tensor(release["blob"])})
    errs = {"arcface": _rel(feat, release["feat"]), "shape": _rel(out["shape"].numpy(), release["shape"]),
            "vertices": _rel(out["verts_neutral"].numpy(), release["verts"])}
    print("max relative error vs MICA (torch):", {k: f"{v:.1e}" for k, v in errs.items()})
    assert np.abs(release["shape"]).max() > 0.1  # codes of a useful size, not all ~0
    assert max(errs.values()) <= 1e-4, errs


def test_photo_path_matches_mica(release, model):
    """predict_shape on the astronaut: insightface's alignment + MICA's normalisation, same as torch on that crop."""
    import skimage.data

    from ppface3d.data.identity_features import DlibFaceDescriptor

    img = skimage.data.astronaut()
    lm = DlibFaceDescriptor().landmarks(img)
    shape = model.predict_shape([img], [lm])
    blob = arcface_blob([arcface_crop(img, lm)])
    with torch.no_grad():
        _, ref = release["torch"][1](tF.normalize(release["torch"][0](torch.from_numpy(blob))))
    assert shape.shape == (1, N_SHAPE)
    assert _rel(shape, ref.numpy()) <= 1e-4


def test_config_loads_the_file(release):
    """configs/mica_release.yml takes mica.tar by path: as model.weights the engine hands the .tar to
    MICA.load_checkpoint (model.checkpoint, read in the constructor, is what the fixture uses)."""
    from ppengine.config import load_config
    from ppengine.trainer import build_model

    cfg_path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "mica_release.yml")
    cfg = load_config(cfg_path, [f"model.weights={release['path']}", f"model.arcface_width={WIDTH}"])
    m = build_model(cfg)
    m.eval()
    out = m({"arcface": paddle.to_tensor(release["blob"])})
    assert _rel(out["shape"].numpy(), release["shape"]) <= 1e-4


def test_wrong_files_are_clear_errors(tmp_path, release):
    p = str(tmp_path / "other.tar")
    torch.save({"model": {"w": torch.zeros(3)}}, p)
    with pytest.raises(InputError, match="not a MICA checkpoint"):
        MICA(identity={"type": "arcface"}, checkpoint=p, arcface_width=WIDTH)
    p2 = str(tmp_path / "small.tar")
    torch.save({"arcface": Arcface(WIDTH).state_dict(), "flameModel": {"regressor.output.weight": torch.zeros(3, 300)}}, p2)
    with pytest.raises(InputError, match="does not match MICA's"):
        MICA(identity={"type": "arcface"}, checkpoint=p2, arcface_width=WIDTH)
    with pytest.raises(InputError, match="does not match MICA's IResNet"):  # a trunk of another width
        MICA(identity={"type": "arcface"}, checkpoint=release["path"], arcface_width=8)
    with pytest.raises(ConfigError, match="model.identity"):  # mica.tar's mapping needs its own trunk
        MICA(identity={"type": "dlib"}, checkpoint=release["path"])
    with pytest.raises(InputError, match="not found"):
        MICA(identity={"type": "arcface"}, checkpoint=str(tmp_path / "none.tar"), arcface_width=WIDTH)


def test_malicious_files_refused(tmp_path):
    """safe_load's malicious containers (zip, legacy, zip named .tar, old tar, Lightning .ckpt, whole
    module) given to MICA as mica.tar: each refused, nothing run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "safe_load_tests", os.path.join(os.path.dirname(__file__), "..", "engine", "test_safe_load.py"))
    safe_load_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(safe_load_tests)
    malicious_files = safe_load_tests.malicious_files
    marker = tmp_path / "pwned"
    for kind, (path, _) in malicious_files(tmp_path, marker).items():
        with pytest.raises(UnsafePickleError, match="refused to load"):
            MICA(identity={"type": "arcface"}, checkpoint=str(path), arcface_width=WIDTH)
        assert not marker.exists(), kind
