"""tools/export.py on face models: DECA's encoder / FLAME / reconstruct graphs and DECARelease's
detail decoder, each checked against the model's own methods with onnxruntime / Paddle Inference."""
import json

import numpy as np
import paddle
import pytest
from conftest import dygraph_model, export_cli, feeds_for, make_run, randomize_model

from ppengine.export.checks import psnr

DECA_SMALL = ["model.image_size=32", "model.encoder_width=8", "model.test_flip=true"]


@pytest.fixture(scope="module")
def deca(tmp_path_factory):
    root = tmp_path_factory.mktemp("deca")
    run = make_run(root / "run", "configs/deca.yml", DECA_SMALL, scale=0.05)
    out = root / "export"
    assert export_cli("--weights", run, "--target", "paddle", "onnx", "--output", out) == 0
    with open(out / "manifest.json") as f:
        return run, out, json.load(f)


def _onnx(out, m, name, feeds):
    import onnxruntime as ort

    s = ort.InferenceSession(str(out / m["components"][name]["files"]["onnx"][0]))
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _pi(out, m, name, feeds):
    from ppengine.export.paddle_target import PaddleInferenceRunner

    prefix = str(out / m["components"][name]["files"]["paddle"][0])[: -len(".json")]
    return PaddleInferenceRunner(prefix, [o["name"] for o in m["components"][name]["outputs"]])(feeds)


def test_deca_components_match_the_model(deca):
    run, out, m = deca
    model, _ = dygraph_model(run)
    assert sorted(m["components"]) == ["encoder", "flame", "reconstruct"]
    faces = np.load(out / "faces.npy")
    assert faces.shape == (len(model.face.faces), 3) and faces.dtype == np.int32
    image = np.random.RandomState(1).uniform(0, 1, (1, 3, 32, 32)).astype("float32")
    codes = model.encode_test(paddle.to_tensor(image))
    rec = model.decode(codes, render=False)
    f = feeds_for(m, "flame")
    flame = model.face.decode({"shape": paddle.to_tensor(f["shape"]), "exp": paddle.to_tensor(f["expression"]),
                               "pose": paddle.to_tensor(f["pose"])})
    expected = {
        "encoder": ({"image": image}, {k: codes[k].numpy() for k in ("shape", "tex", "exp", "pose", "cam", "light")}),
        "reconstruct": ({"image": image}, {k: rec[k].numpy() for k in ("vertices", "landmarks3d", "landmarks2d", "cam")}),
        "flame": (f, {"vertices": flame["vertices"].numpy(), "landmarks3d": flame["landmarks3d"].numpy()}),
    }
    for name, (feeds, ref) in expected.items():
        for target, got in (("onnx", _onnx(out, m, name, feeds)), ("paddle", _pi(out, m, name, feeds))):
            for k, v in ref.items():
                assert np.std(v) > 1e-6, (name, k)
                assert psnr(v, got[k]) >= 60, (name, target, k, psnr(v, got[k]))


def test_deca_release_detail_decoder(tmp_path):
    """DECARelease (small fake weights as in tests/face3d): the detail decoder graph (its 2x
    upsamplings and LeakyReLU(0.2) exported) against the model's own displacement."""
    from ppengine.export import ExportOptions, components_of, export
    from ppface3d.models.deca_release import DECARelease

    model = randomize_model(DECARelease(encoder_width=4, image_size=32), 1, 0.05)
    assert [c.name for c in components_of(model)] == ["encoder", "flame", "reconstruct", "detail_decoder"]
    assert [t.name for t in components_of(model)[0].outputs][-1] == "detail"  # DECA's encoder graph, + detail
    m = export(model, None, str(tmp_path / "out"), targets=["onnx"], components=["detail_decoder"],
               options=ExportOptions(batch=1), log=lambda s: None)
    f = feeds_for(m, "detail_decoder")
    ref = model.displacement({"detail": paddle.to_tensor(f["detail"]), "exp": paddle.to_tensor(f["expression"]),
                              "pose": paddle.to_tensor(np.concatenate([np.zeros((1, 3), "float32"), f["jaw_pose"]], 1))})
    got = _onnx(tmp_path / "out", m, "detail_decoder", f)["displacement"]
    assert ref.shape == [1, 1, 256, 256] and float(ref.std()) > 1e-6
    assert psnr(ref.numpy(), got) >= 60
    assert m["components"]["detail_decoder"]["onnx"]["float_attributes_restored"]["leaky_relu"] == 5
