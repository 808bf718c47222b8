"""The Core ML target's pieces, one operator at a time: each MIL op of the NumPy evaluator
(ppengine.export.mil_eval) against onnxruntime running the equivalent ONNX operator on the same
inputs, and each ONNX handler we add to onnx2coreml (ppengine.export.onnx_ops_coreml) converted
and saved as a package, evaluated, and compared with onnxruntime."""
import numpy as np
import pytest

from ppengine.errors import ExportError
from ppengine.export import mil_eval
from ppengine.export.coreml import coremltools

ct = coremltools()
from coremltools.converters.mil.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

RNG = np.random.RandomState(0)


def rand(*shape, lo=None, hi=None):
    if lo is not None:
        return RNG.uniform(lo, hi, shape).astype(np.float32)
    return RNG.standard_normal(shape).astype(np.float32)


def onnx_run(op_type, inputs, attrs=None, outputs=1, consts=None):
    """One ONNX node on onnxruntime: ``inputs`` are graph inputs, ``consts`` initializers after them."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    names = [f"i{k}" for k in range(len(inputs))]
    cnames = [f"c{k}" for k in range(len(consts or []))]
    ins = [helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for n, v in zip(names, inputs)]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(cnames, consts or [])]
    outs = [helper.make_empty_tensor_value_info(f"o{k}") for k in range(outputs)]
    node = helper.make_node(op_type, names + cnames, [o.name for o in outs], **(attrs or {}))
    model = helper.make_model(helper.make_graph([node], "t", ins, outs, inits), opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    res = sess.run(None, dict(zip(names, inputs)))
    return res if outputs > 1 else res[0]


def mil_run(build, *inputs):
    """A MIL program of ``build(*vars)`` (inputs as placeholders of their dtype), run by mil_eval."""
    from coremltools.converters.mil.mil import Function, Program

    specs = {f"x{k}": mb.placeholder(shape=v.shape, dtype=types.numpy_type_to_builtin_type(v.dtype))
             for k, v in enumerate(inputs)}
    prog = Program()
    with Function(specs, opset_version=ct.target.iOS17) as func:
        out = build(*func.inputs.values())
        func.set_outputs(list(out) if isinstance(out, (list, tuple)) else [out])
    prog.add_function("main", func)
    vals = list(mil_eval.run_program(prog, {f"x{k}": v for k, v in enumerate(inputs)}).values())
    return vals if len(vals) > 1 else vals[0]


x4 = rand(2, 4, 6, 5)
w_conv = rand(6, 2, 3, 3)
b6 = rand(6)
c4 = rand(4)
var4 = rand(4, lo=0.5, hi=2.0)
m34 = rand(3, 4)
m45 = rand(2, 4, 5)
ids = np.array([[3, 0, 5], [1, 4, 2]], np.int32)
table = rand(7, 3)
g5, b5 = rand(5), rand(5)
w1d = rand(6, 4, 3)

# (name, MIL builder, reference from onnxruntime, inputs)
CASES = [
    ("conv_groups_stride_dilation_pad",
     lambda x: mb.conv(x=x, weight=w_conv, bias=b6, strides=[2, 1], dilations=[1, 2], pad_type="custom",
                       pad=[1, 0, 2, 1], groups=2),
     lambda x: onnx_run("Conv", [x], dict(strides=[2, 1], dilations=[1, 2], pads=[1, 2, 0, 1], group=2),
                        consts=[w_conv, b6]), [x4]),
    ("conv_same",
     lambda x: mb.conv(x=x, weight=w_conv[:, :, :, :2], pad_type="same", groups=2),
     lambda x: onnx_run("Conv", [x], dict(auto_pad="SAME_UPPER", group=2), consts=[w_conv[:, :, :, :2]]), [x4]),
    ("conv_1d",
     lambda x: mb.conv(x=x, weight=w1d, pad_type="valid", strides=[2]),
     lambda x: onnx_run("Conv", [x], dict(strides=[2]), consts=[w1d]), [x4[:, :, 0]]),
    ("linear", lambda x: mb.linear(x=x, weight=m34, bias=c4[:3]),
     lambda x: onnx_run("Gemm", [x], dict(transB=1), consts=[m34, c4[:3]]), [rand(5, 4)]),
    ("matmul_transpose_y", lambda a, b: mb.matmul(x=a, y=b, transpose_y=True),
     lambda a, b: onnx_run("MatMul", [a, np.ascontiguousarray(np.swapaxes(b, -1, -2))]), [m45, rand(2, 3, 5)]),
    ("einsum_nchw_nwhu", lambda a, b: mb.einsum(values=(a, b), equation="nchw,nwhu->nchu"),
     lambda a, b: onnx_run("Einsum", [a, b], dict(equation="nchw,nwhu->nchu")), [rand(2, 3, 4, 5), rand(2, 5, 4, 6)]),
    ("instance_norm", lambda x: mb.instance_norm(x=x, gamma=c4, beta=var4, epsilon=1e-5),
     lambda x: onnx_run("InstanceNormalization", [x], dict(epsilon=1e-5), consts=[c4, var4]), [x4 * 3 + 1]),
    ("batch_norm", lambda x: mb.batch_norm(x=x, mean=c4, variance=var4, gamma=var4, beta=c4, epsilon=1e-3),
     lambda x: onnx_run("BatchNormalization", [x], dict(epsilon=1e-3), consts=[var4, c4, c4, var4]), [x4]),
    ("layer_norm", lambda x: mb.layer_norm(x=x, axes=[-1], gamma=g5, beta=b5, epsilon=1e-5),
     lambda x: onnx_run("LayerNormalization", [x], dict(axis=-1, epsilon=1e-5), consts=[g5, b5]), [x4 * 2 + 1]),
    ("softmax", lambda x: mb.softmax(x=x, axis=1), lambda x: onnx_run("Softmax", [x], dict(axis=1)), [x4 * 4]),
    ("gelu_exact", lambda x: mb.gelu(x=x, mode="EXACT"),
     lambda x: 0.5 * x * (1 + onnx_run("Erf", [x / np.float32(np.sqrt(2))])), [x4]),
    ("gelu_tanh", lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"),
     lambda x: 0.5 * x * (1 + onnx_run("Tanh", [np.float32(np.sqrt(2 / np.pi)) * (x + 0.044715 * x ** 3)])), [x4]),
    ("silu", lambda x: mb.silu(x=x), lambda x: x * onnx_run("Sigmoid", [x]), [x4 * 5]),
    ("reshape_transpose", lambda x: mb.transpose(x=mb.reshape(x=x, shape=[0, 0, 5, -1]), perm=[3, 0, 2, 1]),
     lambda x: onnx_run("Transpose", [onnx_run("Reshape", [x], consts=[np.array([0, 0, 5, -1], np.int64)])],
                        dict(perm=[3, 0, 2, 1])), [x4]),
    ("expand_squeeze", lambda x: mb.squeeze(x=mb.expand_dims(x=x, axes=[1, -1]), axes=[-1]),
     lambda x: onnx_run("Unsqueeze", [x], consts=[np.array([1], np.int64)]), [x4[0]]),
    ("concat_interleave", lambda a, b: mb.concat(values=[a, b], axis=1, interleave=True),
     lambda a, b: np.stack([a, b], 2).reshape(2, 8, 6, 5), [x4, x4 + 1]),
    ("split_sizes", lambda x: mb.split(x=x, split_sizes=[1, 3], axis=1),
     lambda x: onnx_run("Split", [x], dict(axis=1), outputs=2, consts=[np.array([1, 3], np.int64)]), [x4]),
    ("slice_by_index", lambda x: mb.slice_by_index(x=x, begin=[0, 1, 5, 0], end=[2, 4, 0, 5], stride=[1, 2, -2, 1],
                                                   end_mask=[True, False, False, True]),
     lambda x: onnx_run("Slice", [x], consts=[np.array([1, 5], np.int64), np.array([4, 0], np.int64),
                                              np.array([1, 2], np.int64), np.array([2, -2], np.int64)]), [x4]),
    ("slice_by_size", lambda x: mb.slice_by_size(x=x, begin=[0, 1, 2, 0], size=[-1, 2, 3, -1]),
     lambda x: onnx_run("Slice", [x], consts=[np.array([1, 2], np.int64), np.array([3, 5], np.int64),
                                              np.array([1, 2], np.int64)]), [x4]),
    ("gather", lambda x, i: mb.gather(x=x, indices=i, axis=1),
     lambda x, i: onnx_run("Gather", [x, i], dict(axis=1)), [table.T.copy(), ids]),
    ("gather_along_axis", lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=1),
     lambda x, i: onnx_run("GatherElements", [x, i.astype(np.int64)], dict(axis=1)),
     [rand(2, 5), np.array([[0, 4, 1], [2, 2, 3]], np.int32)]),
    ("gather_nd", lambda x, i: mb.gather_nd(x=x, indices=i),
     lambda x, i: onnx_run("GatherND", [x, i.astype(np.int64)]), [rand(3, 4, 2), np.array([[2, 1], [0, 3]], np.int32)]),
    ("tile", lambda x: mb.tile(x=x, reps=[1, 2, 1, 3]),
     lambda x: onnx_run("Tile", [x], consts=[np.array([1, 2, 1, 3], np.int64)]), [x4]),
    ("pad_constant", lambda x: mb.pad(x=x, pad=[1, 0, 2, 3], mode="constant", constant_val=0.5),
     lambda x: onnx_run("Pad", [x], dict(mode="constant"), consts=[np.array([0, 0, 1, 2, 0, 0, 0, 3], np.int64),
                                                                   np.array(0.5, np.float32)]), [x4]),
    ("pad_reflect", lambda x: mb.pad(x=x, pad=[1, 1, 2, 1], mode="reflect"),
     lambda x: onnx_run("Pad", [x], dict(mode="reflect"), consts=[np.array([0, 0, 1, 2, 0, 0, 1, 1], np.int64)]),
     [x4]),
    ("max_pool", lambda x: mb.max_pool(x=x, kernel_sizes=[3, 2], strides=[2, 1], pad_type="custom", pad=[1, 1, 0, 1]),
     lambda x: onnx_run("MaxPool", [x], dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])), [x4]),
    ("avg_pool", lambda x: mb.avg_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid"),
     lambda x: onnx_run("AveragePool", [x], dict(kernel_shape=[2, 2], strides=[2, 2])), [x4]),
    ("upsample_nearest", lambda x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=2, scale_factor_width=3),
     lambda x: onnx_run("Resize", [x], dict(mode="nearest"),
                        consts=[np.zeros(0, np.float32), np.array([1, 1, 2, 3], np.float32)]), [x4]),
    ("resize_bilinear_align_corners",
     lambda x: mb.resize_bilinear(x=x, target_size_height=9, target_size_width=7, sampling_mode="STRICT_ALIGN_CORNERS"),
     lambda x: onnx_run("Resize", [x], dict(mode="linear", coordinate_transformation_mode="align_corners"),
                        consts=[np.zeros(0, np.float32), np.zeros(0, np.float32), np.array([2, 4, 9, 7], np.int64)]),
     [x4]),
    ("upsample_bilinear_half_pixel",
     lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=3, align_corners=False),
     lambda x: onnx_run("Resize", [x], dict(mode="linear", coordinate_transformation_mode="half_pixel"),
                        consts=[np.zeros(0, np.float32), np.array([1, 1, 2, 3], np.float32)]), [x4]),
    ("reduce_mean_keep", lambda x: mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True),
     lambda x: onnx_run("ReduceMean", [x], dict(axes=[2, 3], keepdims=1)), [x4]),
    ("reduce_sum", lambda x: mb.reduce_sum(x=x, axes=[1], keep_dims=False),
     lambda x: onnx_run("ReduceSum", [x], dict(keepdims=0), consts=[np.array([1], np.int64)]), [x4]),
    ("reduce_max", lambda x: mb.reduce_max(x=x, axes=[-1]),
     lambda x: onnx_run("ReduceMax", [x], dict(axes=[-1], keepdims=0)), [x4]),
    ("cumsum_exclusive_reverse", lambda x: mb.cumsum(x=x, axis=2, exclusive=True, reverse=True),
     lambda x: onnx_run("CumSum", [x], dict(exclusive=1, reverse=1), consts=[np.array(2, np.int64)]), [x4]),
    ("select", lambda c, a: mb.select(cond=c, a=a, b=np.float32(-2.0)),
     lambda c, a: onnx_run("Where", [c, a, np.full_like(a, -2.0)]), [x4 > 0, x4]),
    ("band_part", lambda x: mb.band_part(x=x, lower=1, upper=0),
     lambda x: onnx_run("Trilu", [onnx_run("Trilu", [x], dict(upper=0))], dict(upper=1),
                        consts=[np.array(-1, np.int64)]), [rand(2, 5, 5)]),
    ("cast_fp16", lambda x: mb.cast(x=x, dtype="fp16"),
     lambda x: onnx_run("Cast", [x], dict(to=10)), [x4 * 1000]),
    ("cast_int32", lambda x: mb.cast(x=x, dtype="int32"),
     lambda x: onnx_run("Cast", [x], dict(to=6)), [x4 * 10]),
    ("clip", lambda x: mb.clip(x=x, alpha=-0.5, beta=0.7),
     lambda x: onnx_run("Clip", [x], consts=[np.float32(-0.5), np.float32(0.7)]), [x4]),
    ("rsqrt", lambda x: mb.rsqrt(x=x, epsilon=1e-3), lambda x: 1 / onnx_run("Sqrt", [x + np.float32(1e-3)]),
     [var4]),
    ("leaky_relu", lambda x: mb.leaky_relu(x=x, alpha=0.2),
     lambda x: onnx_run("LeakyRelu", [x], dict(alpha=0.2)), [x4]),
]
for _mil, _onnx in [("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("real_div", "Div"), ("maximum", "Max"),
                    ("minimum", "Min"), ("pow", "Pow"), ("greater_equal", "GreaterOrEqual"), ("less", "Less"),
                    ("equal", "Equal")]:
    CASES.append((_mil, (lambda f: lambda a, b: f(x=a, y=b))(getattr(mb, _mil)),
                  (lambda t: lambda a, b: onnx_run(t, [a, b]))(_onnx),
                  [np.abs(x4) + 0.5 if _mil == "pow" else x4,
                   np.abs(x4) + 0.5 if _mil == "real_div" else np.round(x4 * 2) / 2]))
for _mil, _onnx in [("sin", "Sin"), ("cos", "Cos"), ("exp", "Exp"), ("sqrt", "Sqrt"), ("tanh", "Tanh"),
                    ("sigmoid", "Sigmoid"), ("erf", "Erf"), ("relu", "Relu"), ("abs", "Abs"), ("floor", "Floor"),
                    ("sign", "Sign"), ("round", "Round"), ("log", "Log"), ("atan", "Atan")]:
    CASES.append((_mil, (lambda f: lambda a: f(x=a))(getattr(mb, _mil)),
                  (lambda t: lambda a: onnx_run(t, [a]))(_onnx),
                  [np.abs(x4) + 0.1 if _mil in ("sqrt", "log") else x4 * 3]))


@pytest.mark.parametrize("name,build,reference,inputs", CASES, ids=[c[0] for c in CASES])
def test_mil_op_matches_onnxruntime(name, build, reference, inputs):
    got = mil_run(build, *inputs)
    want = reference(*inputs)
    got = got if isinstance(got, list) else [got]
    want = want if isinstance(want, list) else [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        if w.dtype == np.bool_ or np.issubdtype(w.dtype, np.integer):
            np.testing.assert_array_equal(g, w)
        else:
            assert g.dtype == w.dtype, (name, g.dtype, w.dtype)
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=2e-5, atol=2e-5,
                                       err_msg=name)


def test_fp16_program_rounds_between_ops():
    """An fp16 value is stored as fp16 (Core ML's storage): 1 + 2^-12 is 1 in fp16, not in fp32."""
    x = np.full((2,), 1.0, np.float32)
    out = mil_run(lambda v: mb.cast(x=mb.add(x=mb.cast(x=v, dtype="fp16"), y=np.float16(2 ** -12)), dtype="fp32"), x)
    np.testing.assert_array_equal(out, x)
    out32 = mil_run(lambda v: mb.add(x=v, y=np.float32(2 ** -12)), x)
    assert np.all(out32 > 1.0)


def test_unknown_op_is_an_error_naming_it(monkeypatch):
    monkeypatch.delitem(mil_eval.OPS, "softplus")
    with pytest.raises(ExportError, match="softplus"):
        mil_run(lambda v: mb.softplus(x=v), rand(3))


def test_missing_input_and_wrong_shape_are_clear_errors():
    from ppengine.errors import InputError

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.relu(x=x)

    with pytest.raises(InputError, match="input 'x' missing"):
        mil_eval.run_program(prog, {"y": rand(2, 3)})
    with pytest.raises(InputError, match=r"shape \(2, 3\) expected"):
        mil_eval.run_program(prog, {"x": rand(3, 2)})


def test_packed_palette_indices_unpack_like_coremltools():
    """MIL's packed n-bit indices (LSB first) against coremltools' own constexpr_lut_to_dense."""
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_lut_to_dense

    rng = np.random.RandomState(1)
    for nbits, shape in ((6, (5, 7)), (4, (3, 3)), (1, (9,)), (2, (2, 5))):
        idx = rng.randint(0, 2 ** nbits, int(np.prod(shape)))
        bits = ((idx[:, None] >> np.arange(nbits)) & 1).astype(np.uint8).reshape(-1)
        packed = np.packbits(bits, bitorder="little")
        lut = rng.standard_normal(2 ** nbits).astype(np.float32)
        ref = constexpr_lut_to_dense.decompress(lut, packed, np.array(shape, np.uint32))
        np.testing.assert_array_equal(mil_eval.unpack_indices(packed, nbits, idx.size), idx)
        np.testing.assert_array_equal(lut[mil_eval.unpack_indices(packed, nbits, idx.size)].reshape(shape), ref)


# --------------------------------------------------------------------------- our ONNX handlers
@pytest.fixture(scope="module")
def handler_package(tmp_path_factory):
    """One ONNX graph holding every handler of onnx_ops_coreml (split-einsum attention's two einsums,
    a generic einsum, CumSum, Trilu with k, a reshape to a scalar), converted to an fp32 package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ppengine.export.coreml import to_mlmodel

    f = TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("Einsum", ["q", "k"], ["w"], equation="bchq,bchk->bkhq"),
         helper.make_node("Softmax", ["w"], ["p"], axis=1),
         helper.make_node("Einsum", ["p", "v"], ["att"], equation="bkhq,bchk->bchq"),
         helper.make_node("Einsum", ["m", "n"], ["mn"], equation="ij,kj->ik"),
         helper.make_node("CumSum", ["m", "axis"], ["cs"], exclusive=1),
         helper.make_node("Trilu", ["sq", "kk"], ["tri"], upper=0),
         helper.make_node("ReduceSum", ["m"], ["tot"], keepdims=0),
         helper.make_node("Reshape", ["tot1", "empty"], ["scalar"]),
         helper.make_node("Mul", ["scalar", "mn"], ["scaled"])],
        "handlers",
        [helper.make_tensor_value_info(n, f, s) for n, s in
         (("q", [2, 4, 1, 6]), ("k", [2, 4, 1, 5]), ("v", [2, 4, 1, 5]), ("m", [3, 4]), ("n", [5, 4]),
          ("sq", [2, 4, 4]), ("tot1", [1]))],
        [helper.make_tensor_value_info(n, f, s) for n, s in
         (("att", [2, 4, 1, 6]), ("cs", [3, 4]), ("tri", [2, 4, 4]), ("scaled", [3, 5]), ("tot", []))],
        [numpy_helper.from_array(np.array(1, np.int64), "axis"), numpy_helper.from_array(np.array(1, np.int64), "kk"),
         numpy_helper.from_array(np.zeros(0, np.int64), "empty")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = str(tmp_path_factory.mktemp("handlers") / "handlers.mlpackage")
    to_mlmodel(model, "fp32").save(path)
    return model, path


def test_onnx_handlers_convert_and_match_onnxruntime(handler_package):
    import onnx2coreml
    import onnxruntime as ort

    from ppengine.export.coreml import unsupported_ops

    model, path = handler_package
    # onnx2coreml 1.1.0 alone lacks them; with our handlers nothing is missing
    assert {"Einsum", "CumSum", "Trilu"} <= set(onnx2coreml.analyze(model).unsupported)
    assert unsupported_ops(model) == {}
    rng = np.random.RandomState(3)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    got = mil_eval.predict(path, feeds)
    types_ = mil_eval.op_types(mil_eval.load(path))
    assert types_.get("cumsum") and types_.get("select"), types_   # CumSum, Trilu lowered as documented
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5, err_msg=name)


def test_unsupported_onnx_op_names_it():
    from onnx import TensorProto, helper

    from ppengine.export.coreml import to_mlmodel

    g = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(ExportError, match=r"'Det'.*onnx_ops_coreml"):
        to_mlmodel(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), "fp32", "det_graph")
