"""Paddle target: a component as a PIR program (``prefix.json`` + ``prefix.pdiparams``, written by
``paddle.jit.save``) and its runner on Paddle Inference (``paddle.inference`` Config/Predictor).

    ops = save_program(component, "out/paddle/unet")          # -> unet.json, unet.pdiparams
    run = PaddleInferenceRunner("out/paddle/unet", ["noise_pred"])
    run({"sample": ..., "timestep": ..., "encoder_hidden_states": ...})   # {"noise_pred": ndarray}

Paddle Inference runs without oneDNN by default: Paddle 3.3.1's oneDNN kernels gave wrong UNet
outputs here; ``onednn=True`` turns it on (check its numbers, :mod:`ppengine.export.checks`).
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Sequence

import numpy as np
import paddle

from ..errors import ExportError
from .spec import Component


def input_specs(component: Component) -> List[paddle.static.InputSpec]:
    return [paddle.static.InputSpec(list(t.shape), t.dtype, t.name) for t in component.inputs]


def program_files(prefix: str) -> List[str]:
    return [prefix + ".json", prefix + ".pdiparams"]


def save_program(component: Component, prefix: str) -> List[dict]:
    """``paddle.jit.save`` the component's layer at its fixed input shapes (full graph) to
    ``prefix.json`` / ``prefix.pdiparams``. Returns the traced program's operators as
    ``{"name", "attrs"}`` dicts (attrs as strings), in program order, for the ONNX target."""
    layer = component.layer
    layer.eval()
    own_forward = layer.__dict__.get("forward")
    try:
        with warnings.catch_warnings():  # paddle's own notes while tracing ("no 'place' interface for pir")
            warnings.simplefilter("ignore", UserWarning)
            static = paddle.jit.to_static(layer, input_spec=input_specs(component), full_graph=True)
            program = static.forward.concrete_program.main_program
            ops = [{"name": op.name(), "attrs": {k: v for k, v in op.attrs().items() if k != "value"}}
                   for op in program.global_block().ops]
            paddle.jit.save(static, prefix)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - a tracing failure is the user's model's, say where
        first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise ExportError(f"component {component.name!r}: paddle.jit.save could not trace "
                          f"{type(layer).__name__}.forward ({type(e).__name__}: {first[:300]}); the forward must "
                          "take the inputs in order and return a tuple of tensors, without Python branches on "
                          "tensor values") from e
    finally:  # to_static replaced the layer's forward: the model stays a dygraph model
        if own_forward is None:
            layer.__dict__.pop("forward", None)
        else:
            layer.__dict__["forward"] = own_forward
    missing = [f for f in program_files(prefix) if not os.path.isfile(f)]
    if missing:
        raise ExportError(f"component {component.name!r}: paddle.jit.save wrote no {missing[0]}")
    return ops


def _as_tensor(v: np.ndarray, dtype: str) -> paddle.Tensor:
    return paddle.to_tensor(np.ascontiguousarray(v, dtype=dtype))


@paddle.no_grad()
def run_dygraph(component: Component, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The component's layer in dygraph on ``feeds`` -> {output name: ndarray} (the reference)."""
    component.layer.eval()
    outs = component.layer(*[_as_tensor(feeds[t.name], t.dtype) for t in component.inputs])
    if not isinstance(outs, (tuple, list)):
        outs = (outs,)
    if len(outs) != len(component.outputs):
        raise ExportError(f"component {component.name!r}: forward returned {len(outs)} outputs, "
                          f"{len(component.outputs)} declared ({', '.join(t.name for t in component.outputs)})")
    return {t.name: o.numpy() for t, o in zip(component.outputs, outs)}


class PaddleInferenceRunner:
    """A saved program on ``paddle.inference``: ``runner(feeds) -> {output name: ndarray}``.

    Args:
        prefix: the program's path without ``.json`` / ``.pdiparams``.
        output_names: the component's output names, in order (the program's fetch order).
        threads: CPU math threads.
        onednn: use oneDNN kernels (off by default: see the module docstring).
    """

    def __init__(self, prefix: str, output_names: Sequence[str], threads: int = 1, onednn: bool = False):
        from paddle import inference

        model, params = program_files(prefix)
        if not os.path.isfile(model):
            raise ExportError(f"{model} not found: export the component with --target paddle first")
        config = inference.Config(model, params)
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(max(1, int(threads)))
        if onednn:
            config.enable_mkldnn()
        else:
            config.disable_mkldnn()
        config.disable_glog_info()
        self.predictor = inference.create_predictor(config)
        self.input_names = list(self.predictor.get_input_names())
        fetch = list(self.predictor.get_output_names())
        if len(fetch) != len(output_names):
            raise ExportError(f"{model}: the program has {len(fetch)} outputs, {len(output_names)} expected")
        self._fetch = dict(zip(output_names, fetch))
        self.output_names = list(output_names)

    def __call__(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        for name in self.input_names:
            if name not in feeds:
                raise ExportError(f"Paddle Inference: input {name!r} missing (given: {', '.join(feeds)})")
            h = self.predictor.get_input_handle(name)
            h.copy_from_cpu(np.ascontiguousarray(feeds[name]))
        self.predictor.run()
        return {n: self.predictor.get_output_handle(f).copy_to_cpu() for n, f in self._fetch.items()}
