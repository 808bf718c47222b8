"""Identity features: dlib's descriptor on a real photo, the ArcFace ONNX path (insightface's
alignment) with a small ONNX model made here, against NumPy references."""
import numpy as np
import pytest
import skimage.data
import skimage.transform

from ppengine.errors import ConfigError, InputError
from ppface3d.data.identity_features import (
    ARCFACE_TEMPLATE,
    DlibFaceDescriptor,
    OnnxArcFace,
    arcface_crop,
    build_identity_extractor,
    five_points,
    identity_distance,
)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def dlib_desc():
    return DlibFaceDescriptor()


def test_dlib_descriptor_on_the_astronaut(astronaut, dlib_desc):
    f = dlib_desc.describe(astronaut)  # dlib finds the face (the best of its two detections)
    assert f.shape == (128,) and f.dtype == np.float32
    assert abs(np.linalg.norm(f) - 1.0) < 1e-5
    lm = dlib_desc.landmarks(astronaut)
    assert lm.shape == (68, 2) and 150 < lm[:, 0].mean() < 280 and 60 < lm[:, 1].mean() < 180  # her face, not the flag
    np.testing.assert_allclose(dlib_desc.describe(astronaut, lm), f, atol=1e-6)  # its own landmarks: same chip
    assert identity_distance(astronaut, astronaut.copy()) == 0.0
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    d = identity_distance(astronaut, mirrored)
    print(f"dlib distance astronaut vs mirrored: {d:.3f}")
    assert 0.0 < d < 0.6  # dlib: the same person
    # a crop 2.3x smaller (float image, landmarks given) is still her
    small = skimage.transform.rescale(astronaut, 1 / 2.3, channel_axis=2)
    assert identity_distance(astronaut, small, landmarks_b=(lm + 0.5) / 2.3 - 0.5) < 0.6


def test_dlib_refuses_a_faceless_image(dlib_desc):
    with pytest.raises(InputError, match="no face"):
        dlib_desc.describe(np.full((120, 120, 3), 128, np.uint8))
    with pytest.raises(InputError, match="68, 2"):
        dlib_desc.describe(np.zeros((64, 64, 3), np.uint8), np.zeros((5, 2)))


def test_arcface_alignment_puts_the_five_points_on_the_template(astronaut, dlib_desc):
    """insightface's norm_crop: bright dots drawn at 5 points that are an exact similarity of the
    ArcFace template (scaled 2.1x, turned 12 degrees, moved) land on the template in the crop."""
    lm = dlib_desc.landmarks(astronaut)
    np.testing.assert_allclose(five_points(lm)[0], lm[36:42].mean(0))  # image-left eye first, as insightface
    a = np.deg2rad(12.0)
    R = 2.1 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    five = ARCFACE_TEMPLATE @ R.T + [130.0, 90.0]
    img = np.zeros((400, 400, 3), np.float32)
    yy, xx = np.mgrid[:400, :400]
    for x, y in five:
        img[..., 0] += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 4.0 ** 2))
    crop = arcface_crop(img, five, 112)[..., 0]
    for k, (tx, ty) in enumerate(ARCFACE_TEMPLATE):
        y0, x0 = int(round(ty)) - 4, int(round(tx)) - 4
        win = crop[y0:y0 + 9, x0:x0 + 9]
        cy, cx = np.mgrid[:9, :9]
        px, py = (win * cx).sum() / win.sum() + x0, (win * cy).sum() / win.sum() + y0
        assert abs(px - tx) < 0.1 and abs(py - ty) < 0.1, (k, px, py, tx, ty)
    crop224 = arcface_crop(img, five, 224)[..., 0]  # multiples of 112 scale the template
    assert crop224.shape == (224, 224) and np.unravel_index(np.argmax(crop224), crop224.shape) != (0, 0)


def _onnx_model(path, normalised_inside: bool):
    """A small ArcFace-layout model: (N, 3, 112, 112) -> conv 8x8/8 -> ReLU -> global mean -> Gemm -> (N, 16)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (8, 3, 8, 8)).astype(np.float32)
    g = rng.normal(0, 0.5, (16, 8)).astype(np.float32)
    b = rng.normal(0, 0.1, 16).astype(np.float32)
    nodes, inits, x = [], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g"),
                           numpy_helper.from_array(b, "b")], "input.1"
    if normalised_inside:  # insightface's models that take 0..255 start with Sub / Mul nodes
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "m"),
                  numpy_helper.from_array(np.array(1 / 127.5, np.float32), "s")]
        nodes += [helper.make_node("Sub", [x, "m"], ["x0"], name="Sub_0"),
                  helper.make_node("Mul", ["x0", "s"], ["x1"], name="Mul_1")]
        x = "x1"
    nodes += [helper.make_node("Conv", [x, "w"], ["c"], name="Conv_2", strides=[8, 8], kernel_shape=[8, 8]),
              helper.make_node("Relu", ["c"], ["r"], name="Relu_3"),
              helper.make_node("GlobalAveragePool", ["r"], ["p"], name="GAP_4"),
              helper.make_node("Flatten", ["p"], ["f"], name="Flatten_5"),
              helper.make_node("Gemm", ["f", "g", "b"], ["683"], name="Gemm_6", transB=1)]
    graph = helper.make_graph(nodes, "arcface_small", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [None, 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, [None, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)

    def reference(x255):  # NumPy: (N, 112, 112, 3) aligned crops 0..255 -> (N, 16)
        x = (x255.astype(np.float64) - 127.5) / 127.5
        x = x.transpose(0, 3, 1, 2).reshape(len(x), 3, 14, 8, 14, 8)
        c = np.einsum("ncypxq,ocpq->noyx", x, w.astype(np.float64))
        return np.maximum(c, 0).mean((2, 3)) @ g.T.astype(np.float64) + b

    return reference


@pytest.mark.parametrize("inside", [False, True], ids=["mean-std-outside", "sub-mul-inside"])
def test_onnx_identity_path(tmp_path, astronaut, dlib_desc, inside):
    path = str(tmp_path / "arcface_small.onnx")
    reference = _onnx_model(path, inside)
    ext = build_identity_extractor({"type": "onnx", "path": path})
    assert isinstance(ext, OnnxArcFace) and ext.dim == 16 and ext.size == 112
    assert (ext.mean, ext.std) == ((0.0, 1.0) if inside else (127.5, 127.5))
    lm = dlib_desc.landmarks(astronaut)
    small = np.ascontiguousarray(astronaut[:300, 100:350])
    f = ext.describe_many([astronaut, small], [lm, lm - [100, 0]])
    ref = reference(np.stack([arcface_crop(astronaut, lm), arcface_crop(small, lm - [100, 0])]))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert f.shape == (2, 16)
    np.testing.assert_allclose(f, ref, atol=2e-5)
    np.testing.assert_allclose(f[0], f[1], atol=2e-5)  # the same face, wherever it is in the image


def test_onnx_and_spec_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        build_identity_extractor({"type": "onnx", "path": str(tmp_path / "none.onnx")})
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match="cannot load the ONNX model"):
        build_identity_extractor({"type": "onnx", "path": str(bad)})
    with pytest.raises(ConfigError, match="needs path"):
        build_identity_extractor({"type": "onnx"})
    with pytest.raises(ConfigError, match="use one of"):
        build_identity_extractor({"type": "vggface"})
    with pytest.raises(ConfigError, match="unknown key"):
        build_identity_extractor({"type": "dlib", "path": "x"})
