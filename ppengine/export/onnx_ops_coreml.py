"""ONNX operators onnx2coreml 1.1.0 lacks, lowered to MIL for the Core ML target.

Each handler takes onnx2coreml's lowering context and an ONNX node and returns the MIL value(s)
of the node's output(s), named after them; :func:`register` adds them all to a
``onnx2coreml.Converter``. The graphs' shapes are fixed, so shape-dependent constants (masks) are
built at conversion time.

=========  ====================================================  ==========================================
ONNX op    where it comes from                                   MIL
=========  ====================================================  ==========================================
Einsum     ppldm's split-einsum attention (Neural Engine form)   coremltools' own einsum lowering (the one
                                                                 its PyTorch frontend uses: ``einsum`` /
                                                                 ``matmul`` for the known forms, transpose +
                                                                 reshape + ``matmul`` otherwise)
CumSum     paddlenlp BERT's position ids (MiniLM text encoder)   ``cumsum``
Trilu      causal masks (CLIP's text model) when not folded      ``select`` with a constant band mask
Reshape    (onnx2coreml has it) to a scalar: CLIP's pooled       ``reshape`` with an int32 empty shape,
           output around its GatherND                            else onnx2coreml's own lowering
=========  ====================================================  ==========================================
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _inputs(ctx, node, n=None):
    names = list(node.input) if n is None else list(node.input[:n])
    return [ctx.values_map[name] if name else None for name in names]


def _const(ctx, node, i: int):
    """The constant value of input ``i`` (None when absent or not known at conversion time)."""
    if i >= len(node.input) or not node.input[i]:
        return None
    val = getattr(ctx.values_map[node.input[i]], "val", None)
    return None if val is None else np.asarray(val)


def einsum(ctx, node) -> Any:
    """ONNX Einsum (explicit equations, one or more operands, no ellipsis)."""
    from coremltools.converters.mil.frontend._utils import build_einsum_mil

    eq = str(_attr(node, "equation")).replace(" ", "")
    if "..." in eq or "->" not in eq:
        raise ValueError(f"Einsum {eq!r}: only explicit equations without '...' are supported (write the "
                         "output subscripts, e.g. 'bchq,bchk->bkhq')")
    return build_einsum_mil(_inputs(ctx, node), eq, node.output[0])


def cumsum(ctx, node) -> Any:
    """ONNX CumSum(x, axis) with ``exclusive`` / ``reverse``."""
    from coremltools.converters.mil.mil import Builder as mb

    (x,) = _inputs(ctx, node, 1)
    axis = _const(ctx, node, 1)
    if axis is None:
        raise ValueError("CumSum: the axis must be a constant")
    return mb.cumsum(x=x, axis=int(axis.reshape(-1)[0]), exclusive=bool(_attr(node, "exclusive", 0)),
                     reverse=bool(_attr(node, "reverse", 0)), name=node.output[0])


def trilu_mask(shape, k: int, upper: bool) -> np.ndarray:
    """Which elements ONNX Trilu keeps on the last two axes: ``j - i >= k`` (upper) or ``<= k``."""
    rows, cols = int(shape[-2]), int(shape[-1])
    d = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    return (d >= k) if upper else (d <= k)


def trilu(ctx, node) -> Any:
    """ONNX Trilu(x, k): the upper (``upper=1``) or lower triangle, the rest zero."""
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    (x,) = _inputs(ctx, node, 1)
    k = _const(ctx, node, 1)
    if len(node.input) > 1 and node.input[1] and k is None:
        raise ValueError("Trilu: k must be a constant")
    k = 0 if k is None else int(k.reshape(-1)[0])
    shape = [int(s) for s in x.shape]
    keep = np.broadcast_to(trilu_mask(shape, k, bool(_attr(node, "upper", 1))), shape)
    zero = np.zeros((), types.nptype_from_builtin(x.dtype))
    return mb.select(cond=np.ascontiguousarray(keep), a=x, b=zero, name=node.output[0])


def reshape(ctx, node) -> Any:
    """ONNX Reshape; to a scalar (an empty shape, as paddle2onnx writes around a gather) onnx2coreml
    passes an empty float list to MIL's reshape, which refuses it: an int32 empty shape here."""
    from coremltools.converters.mil.mil import Builder as mb
    from onnx2coreml._lowering import resolve

    shape = _const(ctx, node, 1)
    if shape is not None and shape.size == 0:
        (x,) = _inputs(ctx, node, 1)
        if int(np.prod([int(d) for d in x.shape])) != 1:
            raise ValueError(f"Reshape to a scalar of a tensor of shape {tuple(x.shape)}")
        return mb.reshape(x=x, shape=np.zeros((0,), np.int32), name=node.output[0])
    return resolve("Reshape")(ctx, node)


HANDLERS: Dict[str, Any] = {"Einsum": einsum, "CumSum": cumsum, "Trilu": trilu, "Reshape": reshape}


def register(converter) -> Any:
    """Register every handler of :data:`HANDLERS` on an ``onnx2coreml.Converter``; returns it."""
    for op_type, fn in HANDLERS.items():
        converter.register(op_type)(fn)
    return converter
