"""Run a saved Core ML ML Program on Linux: a NumPy interpreter of its MIL operations.

Core ML itself predicts only on macOS (coremltools has no ``libcoremlpython`` here), so the export
checks read the program a package holds (coremltools' milproto loader: the very ops and weights
Core ML compiles) and evaluate it op by op:

    out = predict("out/coreml/Unet.mlpackage", {"sample": x, "timestep": t, "encoder_hidden_states": c})
    out["noise_pred"]                                 # float32 ndarray

Numerics: every op computes in float32 (float64 for the normalisation statistics) and rounds its
result to the dtype the program declares for it, so an fp16 program is evaluated with fp16 storage
between ops, as Core ML's GPU / Neural Engine run it (their accumulation inside an op is not
modelled). Compressed weights (``constexpr_lut_to_dense`` palettes, ``constexpr_affine_dequantize``
int8) are decoded from their packed form. Inputs are cast to the program's input dtypes (int64 token
ids -> int32, as Core ML takes them). An op this interpreter does not know is an ExportError naming
it; :data:`OPS` lists the known ones.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from ..errors import ExportError, InputError

OpFn = Callable[["_Op"], Union[np.ndarray, List[np.ndarray]]]
OPS: Dict[str, OpFn] = {}


def op(*names: str):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn

    return deco


class _Op:
    """An op's inputs as NumPy values (``o["x"]``, ``o.get("bias")``), with attributes as Python values."""

    def __init__(self, mil_op, value_of):
        self.op = mil_op
        self._value_of = value_of

    def get(self, name: str, default=None):
        var = self.op.inputs.get(name)
        if var is None:
            return default
        if isinstance(var, (list, tuple)):
            return [self._value_of(v) for v in var]
        return self._value_of(var)

    def __getitem__(self, name: str):
        v = self.get(name)
        if v is None:
            raise ExportError(f"MIL op {self.op.op_type} {self.op.name!r}: input {name!r} missing")
        return v

    def f(self, name: str) -> np.ndarray:
        """Input ``name`` as float32 (the compute type)."""
        return np.asarray(self[name], dtype=np.float32)

    def scalar(self, name: str, default=None):
        v = self.get(name)
        if v is None:
            return default
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.reshape(-1)[0].item()

    def ints(self, name: str, default=None) -> Optional[List[int]]:
        v = self.get(name)
        return default if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


# --------------------------------------------------------------------------- elementwise
_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}


def _operand(v):
    v = np.asarray(v)
    return v.astype(np.float32) if v.dtype == np.float16 else v


def _binary(fn):
    return lambda o: fn(_operand(o["x"]), _operand(o["y"]))


for _name, _fn in _BINARY.items():
    OPS[_name] = _binary(_fn)


def erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf as _erf

    return _erf(x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x)).astype(np.float32)


_UNARY = {
    "abs": np.abs, "exp": np.exp, "exp2": np.exp2, "log": np.log, "sqrt": np.sqrt, "sin": np.sin,
    "cos": np.cos, "tan": np.tan, "tanh": np.tanh, "sigmoid": sigmoid, "erf": erf, "floor": np.floor,
    "ceil": np.ceil, "round": np.round, "sign": np.sign, "square": np.square, "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6), "silu": lambda x: x * sigmoid(x), "softplus": lambda x: np.logaddexp(0, x),
    "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "atanh": np.arctanh,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = (lambda fn: lambda o: fn(o.f("x")))(_fn)


@op("logical_not")
def _logical_not(o):
    return np.logical_not(o["x"])


@op("identity")
def _identity(o):
    return np.asarray(o["x"])


@op("rsqrt")
def _rsqrt(o):
    return 1.0 / np.sqrt(o.f("x") + o.scalar("epsilon", 1e-12))


@op("inverse")
def _inverse(o):
    return 1.0 / (o.f("x") + o.scalar("epsilon", 1e-4))


@op("clip")
def _clip(o):
    return np.clip(o.f("x"), o.scalar("alpha"), o.scalar("beta"))


@op("leaky_relu")
def _leaky_relu(o):
    x = o.f("x")
    return np.where(x >= 0, x, x * o.scalar("alpha", 0.01))


@op("elu")
def _elu(o):
    x = o.f("x")
    return np.where(x > 0, x, o.scalar("alpha", 1.0) * np.expm1(x))


@op("sigmoid_hard")
def _sigmoid_hard(o):
    return np.clip(o.scalar("alpha", 0.2) * o.f("x") + o.scalar("beta", 0.5), 0, 1)


@op("gelu")
def _gelu(o):
    x, mode = o.f("x"), str(o.scalar("mode", "EXACT"))
    if mode == "EXACT":
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * sigmoid(1.702 * x)
    raise ExportError(f"MIL gelu: unknown mode {mode!r}")


@op("select")
def _select(o):
    return np.where(np.asarray(o["cond"]).astype(bool), _operand(o["a"]), _operand(o["b"]))


_DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int32": np.int32, "int64": np.int64,
           "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "bool": np.bool_}


@op("cast")
def _cast(o):
    dtype = str(o.scalar("dtype"))
    if dtype not in _DTYPES:
        raise ExportError(f"MIL cast: unknown dtype {dtype!r}")
    x = np.asarray(o["x"])
    if np.issubdtype(_DTYPES[dtype], np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)
    return x.astype(_DTYPES[dtype])


# --------------------------------------------------------------------------- linear algebra
@op("linear")
def _linear(o):
    y = np.matmul(o.f("x"), o.f("weight").T)
    b = o.get("bias")
    return y if b is None else y + np.asarray(b, np.float32)


@op("matmul")
def _matmul(o):
    x, y = o.f("x"), o.f("y")
    if o.scalar("transpose_x", False):
        x = np.swapaxes(x, -1, -2) if x.ndim > 1 else x
    if o.scalar("transpose_y", False):
        y = np.swapaxes(y, -1, -2) if y.ndim > 1 else y
    return np.matmul(x, y)


@op("einsum")
def _einsum(o):
    return np.einsum(str(o.scalar("equation")), *[np.asarray(v, np.float32) for v in o["values"]])


# --------------------------------------------------------------------------- convolution, pooling
def _pads(pad_type: str, pad, in_sizes, kernel, strides, dilations) -> List[tuple]:
    """Per spatial axis (begin, end) padding of MIL conv / pool ``pad_type``."""
    n = len(in_sizes)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        p = [int(v) for v in np.asarray(pad).reshape(-1)] if pad is not None else [0] * (2 * n)
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            out.append((small, total - small) if pad_type == "same" else (total - small, small))
        return out
    raise ExportError(f"MIL pad_type {pad_type!r} unknown")


def _windows(x: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """(N, C, H, W) padded -> (N, C, Ho, Wo, kh, kw) strided view of the receptive fields."""
    n, c, h, w = x.shape
    kh, kw = kernel
    (sh, sw), (dh, dw) = strides, dilations
    ho = (h - (kh - 1) * dh - 1) // sh + 1
    wo = (w - (kw - 1) * dw - 1) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, ho, wo, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)


def _to_2d(x, kernel, strides, dilations, pads):
    """1-D ops run as 2-D ones with a unit height."""
    if x.ndim == 3:
        return x[:, :, None, :], [1] + list(kernel), [1] + list(strides), [1] + list(dilations), [(0, 0)] + pads, True
    if x.ndim != 4:
        raise ExportError(f"MIL conv / pool: {x.ndim - 2}-D spatial inputs are not supported by this evaluator")
    return x, list(kernel), list(strides), list(dilations), pads, False


@op("conv")
def _conv(o):
    x, w = o.f("x"), o.f("weight")
    nsp = x.ndim - 2
    strides = o.ints("strides", [1] * nsp)
    dilations = o.ints("dilations", [1] * nsp)
    kernel = list(w.shape[2:])
    pads = _pads(str(o.scalar("pad_type", "valid")), o.get("pad"), x.shape[2:], kernel, strides, dilations)
    x, kernel, strides, dilations, pads, squeeze = _to_2d(x, kernel, strides, dilations, pads)
    if w.ndim == 3:
        w = w[:, :, None, :]
    x = np.pad(x, [(0, 0), (0, 0)] + pads)
    groups = int(o.scalar("groups", 1))
    n, cin = x.shape[:2]
    cout, cg = w.shape[:2]
    og = cout // groups
    win = _windows(np.ascontiguousarray(x), kernel, strides, dilations)   # (N, C, Ho, Wo, kh, kw)
    ho, wo = win.shape[2:4]
    outs = []
    for g in range(groups):
        cols = win[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, -1)
        wg = w[g * og:(g + 1) * og].reshape(og, -1)
        outs.append((cols @ wg.T).reshape(n, ho, wo, og))
    y = np.concatenate(outs, axis=3).transpose(0, 3, 1, 2)
    b = o.get("bias")
    if b is not None:
        y = y + np.asarray(b, np.float32).reshape(1, -1, 1, 1)
    return y[:, :, 0, :] if squeeze else y


def _pool(o, reduce: str):
    x = o.f("x")
    nsp = x.ndim - 2
    kernel = o.ints("kernel_sizes")
    strides = o.ints("strides", [1] * nsp)
    if o.scalar("ceil_mode", False):
        raise ExportError("MIL pool: ceil_mode is not supported by this evaluator")
    pads = _pads(str(o.scalar("pad_type", "valid")), o.get("pad"), x.shape[2:], kernel, strides, [1] * nsp)
    x, kernel, strides, dil, pads, squeeze = _to_2d(x, kernel, strides, [1] * nsp, pads)
    fill = -np.inf if reduce == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=fill)
    win = _windows(np.ascontiguousarray(xp), kernel, strides, dil)
    if reduce == "max":
        y = win.max(axis=(4, 5))
    else:
        y = win.sum(axis=(4, 5))
        if o.scalar("exclude_padding_from_average", False):
            ones = np.pad(np.ones((1, 1) + x.shape[2:], np.float32), [(0, 0), (0, 0)] + pads)
            y = y / _windows(ones, kernel, strides, dil).sum(axis=(4, 5))
        else:
            y = y / float(np.prod(kernel))
    return y[:, :, 0, :] if squeeze else y


OPS["max_pool"] = lambda o: _pool(o, "max")
OPS["avg_pool"] = lambda o: _pool(o, "avg")


@op("pad")
def _pad(o):
    x = _operand(o["x"])
    p = o.ints("pad")
    k = len(p) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    mode = str(o.scalar("mode", "constant"))
    if mode == "constant":
        return np.pad(x, widths, constant_values=o.scalar("constant_val", 0.0))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


@op("upsample_nearest_neighbor")
def _upsample_nearest(o):
    x = _operand(o["x"])
    sh, sw = o.scalar("scale_factor_height", 1), o.scalar("scale_factor_width", 1)
    if float(sh) != int(sh) or float(sw) != int(sw):
        raise ExportError("MIL upsample_nearest_neighbor: only integer scale factors are supported")
    return np.repeat(np.repeat(x, int(sh), axis=-2), int(sw), axis=-1)


def _grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Sample positions of MIL's bilinear resampling along one axis (coremltools' documented modes)."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            g = np.array([(n_in - 1) / 2.0 if mode == "ALIGN_CORNERS" else 0.0])
        else:
            g = i * (n_in - 1) / (n_out - 1)
    elif mode == "DEFAULT":
        g = i * ((n_in - n_in / n_out) / (n_out - 1) if n_out > 1 else 0.0)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        spacing = n_in / n_out
        g = i * spacing + 0.5 * spacing - 0.5
    else:
        raise ExportError(f"MIL bilinear resampling: unknown sampling mode {mode!r}")
    return np.clip(g, 0, n_in - 1)


def _bilinear(x: np.ndarray, h_out: int, w_out: int, mode: str) -> np.ndarray:
    out = x.astype(np.float32)
    for axis, n_out in ((-2, h_out), (-1, w_out)):
        g = _grid(out.shape[axis], n_out, mode)
        lo = np.floor(g).astype(np.int64)
        hi = np.minimum(lo + 1, out.shape[axis] - 1)
        frac = (g - lo).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = -1
        frac = frac.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out


@op("resize_bilinear")
def _resize_bilinear(o):
    return _bilinear(o["x"], int(o.scalar("target_size_height", 1)), int(o.scalar("target_size_width", 1)),
                     str(o.scalar("sampling_mode", "DEFAULT")))


@op("upsample_bilinear")
def _upsample_bilinear(o):
    x = np.asarray(o["x"])
    sh, sw = float(o.scalar("scale_factor_height", 1)), float(o.scalar("scale_factor_width", 1))
    mode = "STRICT_ALIGN_CORNERS" if o.scalar("align_corners", True) else "UNALIGN_CORNERS"
    return _bilinear(x, int(math.floor(x.shape[-2] * sh)), int(math.floor(x.shape[-1] * sw)), mode)


# --------------------------------------------------------------------------- normalisation
def _norm(x: np.ndarray, axes, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    return ((x64 - mean) / np.sqrt(var + eps)).astype(np.float32)


def _channel(v, ndim: int):
    return None if v is None else np.asarray(v, np.float32).reshape((1, -1) + (1,) * (ndim - 2))


@op("instance_norm")
def _instance_norm(o):
    x = o.f("x")
    y = _norm(x, tuple(range(2, x.ndim)), float(o.scalar("epsilon", 1e-5)))
    g, b = _channel(o.get("gamma"), x.ndim), _channel(o.get("beta"), x.ndim)
    return (y if g is None else y * g) + (0 if b is None else b)


@op("batch_norm")
def _batch_norm(o):
    x = o.f("x")
    mean, var = _channel(o["mean"], x.ndim), _channel(o["variance"], x.ndim)
    y = (x - mean) / np.sqrt(var + float(o.scalar("epsilon", 1e-5)))
    g, b = _channel(o.get("gamma"), x.ndim), _channel(o.get("beta"), x.ndim)
    return (y if g is None else y * g) + (0 if b is None else b)


@op("layer_norm")
def _layer_norm(o):
    x = o.f("x")
    axes = o.ints("axes", list(range(x.ndim)))
    axes = tuple(a % x.ndim for a in axes)
    y = _norm(x, axes, float(o.scalar("epsilon", 1e-5)))
    g, b = o.get("gamma"), o.get("beta")
    if g is not None:
        y = y * np.asarray(g, np.float32)
    if b is not None:
        y = y + np.asarray(b, np.float32)
    return y


@op("softmax")
def _softmax(o):
    x = o.f("x")
    axis = int(o.scalar("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --------------------------------------------------------------------------- reductions
def _reduce(fn):
    def run(o):
        x = _operand(o["x"])
        axes = o.ints("axes")
        return fn(x, axis=None if axes is None else tuple(axes), keepdims=bool(o.scalar("keep_dims", False)))

    return run


for _name, _fn in {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
                   "reduce_prod": np.prod}.items():
    OPS[_name] = _reduce(_fn)
OPS["reduce_sum_square"] = _reduce(lambda x, **k: np.sum(np.square(x), **k))
OPS["reduce_l2_norm"] = _reduce(lambda x, **k: np.sqrt(np.sum(np.square(x), **k)))
OPS["reduce_l1_norm"] = _reduce(lambda x, **k: np.sum(np.abs(x), **k))
OPS["reduce_log_sum_exp"] = _reduce(lambda x, **k: np.log(np.sum(np.exp(x), **k)))


@op("reduce_argmax", "reduce_argmin")
def _argreduce(o):
    x = _operand(o["x"])
    axis = int(o.scalar("axis", -1))
    fn = np.argmax if o.op.op_type == "reduce_argmax" else np.argmin
    y = fn(x, axis=axis).astype(np.int32)
    return np.expand_dims(y, axis) if o.scalar("keep_dims", False) else y


@op("cumsum")
def _cumsum(o):
    x = _operand(o["x"])
    axis = int(o.scalar("axis", 0))
    rev = bool(o.scalar("reverse", False))
    if rev:
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis, dtype=x.dtype)
    if o.scalar("exclusive", False):
        y = y - x
    return np.flip(y, axis) if rev else y


# --------------------------------------------------------------------------- shapes and data movement
@op("reshape")
def _reshape(o):
    x = np.asarray(o["x"])
    shape = o.ints("shape")
    if 0 in shape and len(shape) == x.ndim:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("transpose")
def _transpose(o):
    return np.transpose(np.asarray(o["x"]), o.ints("perm"))


@op("expand_dims")
def _expand_dims(o):
    x = np.asarray(o["x"])
    axes = o.ints("axes")
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = np.expand_dims(x, a)
    return x


@op("squeeze")
def _squeeze(o):
    x = np.asarray(o["x"])
    axes = o.ints("axes")
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(a % x.ndim for a in axes))


@op("concat")
def _concat(o):
    vals = [np.asarray(v) for v in o["values"]]
    axis = int(o.scalar("axis"))
    if o.scalar("interleave", False):
        stacked = np.stack(vals, axis=axis % vals[0].ndim + 1)
        shape = list(vals[0].shape)
        shape[axis] *= len(vals)
        return stacked.reshape(shape)
    return np.concatenate(vals, axis=axis)


@op("split")
def _split(o):
    x = np.asarray(o["x"])
    axis = int(o.scalar("axis"))
    sizes = o.ints("split_sizes")
    if sizes is None:
        return np.split(x, int(o.scalar("num_splits")), axis=axis)
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


@op("slice_by_index")
def _slice_by_index(o):
    x = np.asarray(o["x"])
    n = x.ndim
    begin, end = o.ints("begin"), o.ints("end")
    stride = o.ints("stride", [1] * n)
    bmask = [bool(v) for v in np.asarray(o.get("begin_mask", [False] * n)).reshape(-1)]
    emask = [bool(v) for v in np.asarray(o.get("end_mask", [False] * n)).reshape(-1)]
    smask = [bool(v) for v in np.asarray(o.get("squeeze_mask", [False] * n)).reshape(-1)]
    idx = []
    for i in range(n):
        if smask[i]:
            idx.append(begin[i])
            continue
        idx.append(slice(None if bmask[i] else begin[i], None if emask[i] else end[i], stride[i]))
    return x[tuple(idx)]


@op("slice_by_size")
def _slice_by_size(o):
    x = np.asarray(o["x"])
    begin, size = o.ints("begin"), o.ints("size")
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))]


@op("gather")
def _gather(o):
    x, idx = np.asarray(o["x"]), np.asarray(o["indices"]).astype(np.int64)
    axis = int(o.scalar("axis", 0))
    if int(o.scalar("batch_dims", 0)) != 0:
        raise ExportError("MIL gather: batch_dims > 0 is not supported by this evaluator")
    return np.take(x, idx, axis=axis)


@op("gather_along_axis")
def _gather_along_axis(o):
    x, idx = np.asarray(o["x"]), np.asarray(o["indices"]).astype(np.int64)
    axis = int(o.scalar("axis", 0))
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take_along_axis(x, idx, axis=axis)


@op("gather_nd")
def _gather_nd(o):
    x, idx = np.asarray(o["x"]), np.asarray(o["indices"]).astype(np.int64)
    if int(o.scalar("batch_dims", 0)) != 0:
        raise ExportError("MIL gather_nd: batch_dims > 0 is not supported by this evaluator")
    k = idx.shape[-1]
    idx = np.where(idx < 0, idx + np.asarray(x.shape[:k]), idx)
    return x[tuple(np.moveaxis(idx, -1, 0))]


@op("tile")
def _tile(o):
    return np.tile(np.asarray(o["x"]), o.ints("reps"))


@op("shape")
def _shape(o):
    return np.asarray(np.asarray(o["x"]).shape, np.int32)


@op("fill")
def _fill(o):
    return np.full(o.ints("shape"), o.scalar("value", 0.0), np.float32)


@op("range_1d")
def _range_1d(o):
    return np.arange(o.scalar("start"), o.scalar("end"), o.scalar("step"))


@op("band_part")
def _band_part(o):
    x = np.asarray(o["x"])
    lower, upper = int(o.scalar("lower", -1)), int(o.scalar("upper", -1))
    rows, cols = x.shape[-2:]
    d = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    keep = np.ones((rows, cols), bool)
    if lower >= 0:
        keep &= -d <= lower
    if upper >= 0:
        keep &= d <= upper
    return np.where(keep, x, np.zeros((), x.dtype))


# --------------------------------------------------------------------------- compressed weights
def unpack_indices(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """MIL's packed palette indices (``nbits`` each, least significant bit first) -> integers."""
    bits = np.unpackbits(np.asarray(packed, np.uint8).reshape(-1), bitorder="little")[:count * nbits]
    bits = bits.reshape(count, nbits).astype(np.int64)
    return (bits << np.arange(nbits, dtype=np.int64)).sum(axis=1)


@op("constexpr_lut_to_dense")
def _lut_to_dense(o):
    lut = np.asarray(o["lut"])
    if lut.ndim != 1:
        raise ExportError("MIL constexpr_lut_to_dense: only the iOS16 per-tensor palette (a vector) is supported; "
                          "export with the iOS17 deployment target")
    shape = o.ints("shape")
    nbits = int(round(math.log2(lut.shape[0])))
    return lut[unpack_indices(o["indices"], nbits, int(np.prod(shape)))].reshape(shape)


@op("constexpr_affine_dequantize")
def _affine_dequantize(o):
    q = np.asarray(o["quantized_data"]).astype(np.float32)
    axis = int(o.scalar("axis", 0)) % q.ndim
    shape = [1] * q.ndim
    scale, zp = np.asarray(o["scale"], np.float32), np.asarray(o["zero_point"]).astype(np.float32)
    if scale.ndim:
        shape[axis] = -1
    scale = scale.reshape(shape) if scale.ndim else scale
    zp = zp.reshape(shape) if zp.ndim else zp
    return scale * (q - zp)


# --------------------------------------------------------------------------- programs
def load(path: str):
    """The MIL program of a saved ``.mlpackage`` (coremltools' milproto loader)."""
    from .coreml import coremltools, quiet_coremltools

    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "Manifest.json")):
        raise InputError(f"{path!r} is not a Core ML package (.mlpackage folder with Manifest.json)")
    ct = coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    with quiet_coremltools():
        model = ct.models.MLModel(path, skip_model_load=True)
        spec = model.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise InputError(f"{path!r} is not an ML Program (type {spec.WhichOneof('Type')})")
        return milproto_load(spec, spec.specificationVersion, model.weights_dir)


def _np_dtype(var):
    from coremltools.converters.mil.mil import types

    try:
        return np.dtype(types.nptype_from_builtin(var.dtype))
    except Exception:  # noqa: BLE001 - strings, lists: no array dtype
        return None


def op_types(program) -> Dict[str, int]:
    """How many ops of each type the ``main`` function holds."""
    out: Dict[str, int] = {}
    for o in program.functions["main"].operations:
        out[o.op_type] = out.get(o.op_type, 0) + 1
    return out


def unknown_ops(program) -> List[str]:
    return sorted(t for t in op_types(program) if t not in OPS and t != "const")


def eval_op(mil_op, value_of=None):
    """One MIL op's result(s) with NumPy; ``value_of(var)`` gives its inputs' values (default: the
    constant values, e.g. to decode a ``constexpr_*`` weight)."""
    if mil_op.op_type not in OPS:
        raise ExportError(f"MIL op {mil_op.op_type!r} is not known to this NumPy evaluator")
    return OPS[mil_op.op_type](_Op(mil_op, value_of or (lambda v: v.val)))


def run_program(program, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Evaluate the ``main`` function of a MIL ``program`` on ``feeds`` (extra feeds are ignored)."""
    func = program.functions["main"]
    missing = unknown_ops(program)
    if missing:
        raise ExportError(f"the Core ML program holds MIL ops this NumPy evaluator does not know: {', '.join(missing)}; "
                          "add them to ppengine/export/mil_eval.py")
    env: Dict[str, np.ndarray] = {}
    for name, var in func.inputs.items():
        if name not in feeds:
            raise InputError(f"Core ML program input {name!r} missing (given: {', '.join(feeds) or 'nothing'})")
        v = np.asarray(feeds[name])
        if tuple(v.shape) != tuple(int(s) for s in var.shape):
            raise InputError(f"Core ML program input {name!r}: shape {tuple(var.shape)} expected, got {v.shape}")
        env[name] = v.astype(_np_dtype(var))
    ops = list(func.operations)
    outputs = {v.name for v in func.outputs}
    last_use: Dict[str, int] = {}
    for i, o in enumerate(ops):
        for v in o.inputs.values():
            for u in (v if isinstance(v, (list, tuple)) else [v]):
                last_use[u.name] = i

    def value_of(var):
        if var.name in env:
            return env[var.name]
        if var.val is not None and var.op is not None and var.op.op_type == "const":
            return var.val
        raise ExportError(f"MIL value {var.name!r} used before it is computed")

    for i, o in enumerate(ops):
        if o.op_type == "const":
            env[o.outputs[0].name] = np.asarray(o.outputs[0].val)
            continue
        try:
            res = OPS[o.op_type](_Op(o, value_of))
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - one line naming the op
            raise ExportError(f"MIL op {o.op_type} {o.name!r} failed in the evaluator: {type(e).__name__}: {e}") from e
        res = list(res) if isinstance(res, (list, tuple)) else [res]
        if len(res) != len(o.outputs):
            raise ExportError(f"MIL op {o.op_type} {o.name!r}: {len(res)} results for {len(o.outputs)} outputs")
        for var, val in zip(o.outputs, res):
            dt = _np_dtype(var)
            val = np.asarray(val)
            env[var.name] = val.astype(dt) if dt is not None and val.dtype != dt else val
        for v in o.inputs.values():
            for u in (v if isinstance(v, (list, tuple)) else [v]):
                if last_use.get(u.name) == i and u.name not in outputs:
                    env.pop(u.name, None)
    return {v.name: np.asarray(env[v.name]) for v in func.outputs}


def predict(mlpackage_path, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Outputs of a saved ``.mlpackage`` (or an in-memory MIL program) on ``feeds``, float outputs as
    float32. ``feeds`` may hold more arrays than the program takes (a chunk takes only its own)."""
    program = mlpackage_path if hasattr(mlpackage_path, "functions") else load(mlpackage_path)
    out = run_program(program, feeds)
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}


def predict_chain(paths: List[str], feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Run packages in order (chunks), each seeing the feeds plus the outputs of those before (as
    apple's Swift pipeline runs UnetChunk1 then UnetChunk2); returns the last one's outputs."""
    values, out = dict(feeds), {}
    for p in paths:
        out = predict(p, values)
        values.update(out)
    return out


class Runner:
    """A component's package(s) loaded once: ``Runner(paths)(feeds) -> {output: ndarray}`` (chunks
    run in order), the Core ML counterpart of ``onnx_target.OrtRunner``."""

    def __init__(self, paths):
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.programs = [load(p) for p in self.paths]

    def __call__(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return predict_chain(self.programs, feeds)
