"""FaceModel: one FLAME + albedo + renderer + camera object; its outputs against the parts
computed independently (camera formula in NumPy, the renderer called directly, a baked UV
normal map), and the build-time agreement checks of DECA configs."""
import numpy as np
import paddle
import pytest

import ppface3d  # noqa: F401
from ppface3d import FaceModel

S = 48


@pytest.fixture(scope="module")
def face():
    return FaceModel(n_shape=10, n_exp=6, n_tex=4, image_size=S, uv_size=32)


def _codes(seed=0, n=2):
    r = np.random.default_rng(seed)
    f = lambda *s: paddle.to_tensor(r.normal(size=s).astype(np.float32))  # noqa: E731
    return {"shape": f(n, 10) * 0.5, "exp": f(n, 6) * 0.5, "pose": f(n, 6) * 0.1, "tex": f(n, 4),
            "cam": paddle.to_tensor(np.array([[9.0, 0.0, -0.01], [8.0, 0.01, 0.0]][:n], np.float32)),
            "light": paddle.to_tensor(np.tile(ppface3d.sh_ambient(0.9)[None], (n, 1, 1)))}


def test_decode_is_flame_plus_decas_camera(face):
    c = _codes()
    dec = face.decode(c)
    fo = face.flame(shape=c["shape"], expression=c["exp"], global_pose=c["pose"][:, :3], jaw_pose=c["pose"][:, 3:])
    np.testing.assert_allclose(dec["vertices"].numpy(), fo.vertices.numpy(), atol=1e-6)
    cam = c["cam"].numpy()
    lm = fo.landmarks.numpy()
    # DECA's camera written out: x = s (X + tx), y = -s (Y + ty)
    want = np.stack([cam[:, :1] * (lm[..., 0] + cam[:, 1:2]), -cam[:, :1] * (lm[..., 1] + cam[:, 2:3])], -1)
    np.testing.assert_allclose(dec["landmarks2d"].numpy(), want, atol=1e-5)
    assert dec["transformed_vertices"].shape == dec["vertices"].shape
    # landmarks only: the same landmarks, no vertices
    light = face.decode(c, vertices=False)
    assert "vertices" not in light
    np.testing.assert_allclose(light["landmarks2d"].numpy(), want, atol=1e-5)
    # a shape-only predictor's codes: the neutral head
    neutral = face.neutral(c["shape"])
    fo0 = face.flame(shape=c["shape"])
    np.testing.assert_allclose(neutral["vertices"].numpy(), fo0.vertices.numpy(), atol=1e-6)
    np.testing.assert_allclose(neutral["landmarks68"].numpy(), fo0.landmarks_full68.numpy(), atol=1e-6)


def test_render_modes_match_the_renderer(face):
    from ppface3d.render import OrthographicCamera

    c = _codes()
    dec = face.decode(c)
    alb = face.albedo_map(c["tex"])
    r = face.render(dec, light=c["light"], albedo=alb)
    ref = face.renderer(dec["vertices"], OrthographicCamera(c["cam"]), albedos=alb, lights=c["light"])
    np.testing.assert_allclose(r["images"].numpy(), ref["images"].numpy(), atol=1e-6)
    assert r["alpha_images"].numpy().mean() > 0.2
    shp = face.render(dec, mode="shape")["images"].numpy()
    a = r["alpha_images"].numpy()[:, 0] > 0.5
    grey = shp.transpose(0, 2, 3, 1)[a]
    assert np.abs(grey[:, 0] - grey[:, 1]).max() < 1e-5 and grey.mean() > 0.3  # grey, lit
    nrm = face.render(dec, mode="normals")
    np.testing.assert_allclose(nrm["images"].numpy(), (ref["normal_images"].numpy() * 0.5 + 0.5) * ref["alpha_images"].numpy(),
                               atol=1e-6)
    with pytest.raises(Exception, match="mode"):
        face.render(dec, mode="wire")
    with pytest.raises(Exception, match="albedo"):
        face.render(dec, light=c["light"])


def test_normal_map_input_shades_like_the_vertex_normals_it_was_baked_from(face):
    """The UV normal-map path (where a detail displacement's normals enter) reproduces the vertex
    normals' shading when the map is the vertex normals baked into UV (independent baker)."""
    from ppface3d.apps.export import uv_normal_map

    c = _codes(1, n=1)
    c["light"] = paddle.to_tensor(np.array(ppface3d.face_model.shape_light()[None]))
    dec = face.decode(c)
    v = dec["vertices"].numpy()[0]
    nmap = uv_normal_map(v, face.faces, face.uv_coords, face.uv_faces, 256) * 2 - 1
    nmap = paddle.to_tensor(nmap.transpose(2, 0, 1)[None].astype(np.float32))
    plain = face.render(dec, mode="shape")
    mapped = face.render(dec, mode="shape", normal_map=nmap)
    a = plain["alpha_images"].numpy()[0, 0] > 0.5
    d = np.abs(plain["images"].numpy()[0] - mapped["images"].numpy()[0]).max(0)[a]
    assert np.median(d) < 0.01 and np.mean(d < 0.05) > 0.95, (np.median(d), np.mean(d < 0.05))
    flipped = face.render(dec, mode="shape", normal_map=-nmap)  # the map is really used
    assert np.abs(flipped["images"].numpy()[0] - plain["images"].numpy()[0]).max(0)[a].mean() > 0.1


def test_at_size_shares_the_head_and_framing(face):
    small = face.at_size(24)
    assert small.flame is face.flame and small.albedo is face.albedo and small.image_size == 24
    assert face.at_size(S) is face
    cam = face.framing_camera(face.mean_landmarks())
    c = {"shape": paddle.zeros([1, 10]), "cam": paddle.to_tensor(cam[None])}
    lm = face.decode(c)["landmarks2d"].numpy()[0]
    assert np.abs(lm).max() < 1.0 and abs(lm[:, 0].mean()) < 0.1  # framed, centred
    maps = face.mirror()
    assert maps is face.mirror() and maps.shape_sign.shape == (10,)


def _cfg(*overrides):
    from ppengine.config import load_config

    return load_config("configs/deca.yml", list(overrides))


def test_deca_config_checks_name_both_keys():
    from ppengine.errors import ConfigError
    from ppface3d.models import DECA

    DECA.check_config(_cfg())  # the committed config agrees with itself
    DECA.check_config(_cfg("model.image_size=64"))  # the data refer to the model's image size
    assert _cfg("model.image_size=64")["data"]["train"]["image_size"] == 64
    cases = {
        "data.train.geometry=false": ("model.loss.geometry", "data.train.geometry"),
        "data.val.image_size=64": ("data.val.image_size", "model.image_size"),
        "data.train.shape_components=20": ("data.train.shape_components", "model.n_shape"),
        "data.train.K=1": ("model.loss.shape_consistency", "data.train.K"),
        "data.train.flame_model_path=/x/generic_model.pkl": ("data.train.flame_model_path", "model.flame_model_path"),
    }
    for ov, keys in cases.items():
        with pytest.raises(ConfigError) as e:
            DECA.check_config(_cfg(ov))
        for k in keys:
            assert k in str(e.value), (ov, str(e.value))
    photos = "data.train={type: FaceImageFolder, root: /data, K: 2, image_size: 96}"
    with pytest.raises(ConfigError, match="model.loss.param"):
        DECA.check_config(_cfg(photos))
    DECA.check_config(_cfg(photos, "model.loss.param=0", "model.loss.shape_param=0", "model.loss.geometry=0"))


def test_build_model_runs_the_check():
    from ppengine.errors import ConfigError
    from ppengine.trainer import build_model

    with pytest.raises(ConfigError, match="data.train.geometry"):
        build_model(_cfg("data.train.geometry=false"))
