"""ONNX target: a saved Paddle program -> ``.onnx`` through paddle2onnx (opset 17), with the fixes
paddle2onnx 2.1.0 needs, and its runner on onnxruntime.

    export_onnx(component, "tmp/paddle/unet", "out/onnx/unet.onnx", ops)
    run = OrtRunner("out/onnx/unet.onnx")
    run(feeds)                                   # {"noise_pred": ndarray}

What is done after paddle2onnx (see ../shared ENVIRONMENT.md's export traps):

* Lost float attributes: paddle2onnx writes a GroupNorm as Reshape + InstanceNormalization + ... with
  a random epsilon, a LeakyReLU with alpha 0 and a constant Pad with value 0 whatever the layer
  says; :func:`fix_float_attributes` restores each from the traced program (the layers' values).
* paddle2onnx runs in a forked child process: some of its converters abort the process.
* Outputs are renamed from ``fetch_name_<i>`` to the component's names.
* An operator paddle2onnx cannot convert is an
  :class:`~ppengine.errors.ExportError` naming the Paddle op, the layer it comes from (its path
  in the component's layer and the source line) and what to change.
* The file must exist, pass ``onnx.checker`` and open in onnxruntime (a failed conversion is only
  logged by paddle2onnx). ``optimize_tool`` is off: polygraphy would pip-install packages.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import ExportError
from ..io import atomic_path
from .paddle_target import program_files
from .spec import Component

OPSET = 17
_CONTAINERS = ("LayerList", "LayerDict", "ParameterList")

# what to change, by Paddle op (the ones seen failing here)
ADVICE = {
    "nearest_interp": "use F.interpolate(x, size=[h, w]) (or an expand + reshape upsample) instead of scale_factor",
    "bilinear_interp": "use F.interpolate(x, size=[h, w], mode='bilinear') instead of scale_factor / nn.Upsample",
    "bicubic_interp": "use F.interpolate(x, size=[h, w], mode='bicubic') instead of scale_factor",
}
DEFAULT_ADVICE = ("write that step with operators paddle2onnx supports (python -c \"import "
                  "paddle2onnx.paddle2onnx_cpp2py_export as c; print(c.get_all_supported_operators_pir())\")")


@contextlib.contextmanager
def captured_native_output() -> Iterator[List[str]]:
    """Capture what native code writes to file descriptors 1 and 2 inside the block; the text
    is appended to the yielded list when the block ends."""
    import sys

    out: List[str] = []
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (OSError, ValueError, AttributeError):
            pass
    tmp = tempfile.TemporaryFile()
    saved = []
    try:
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(tmp.fileno(), fd)
    except OSError:  # no real descriptors (some notebook kernels): capture nothing
        for fd, s in saved:
            os.dup2(s, fd)
            os.close(s)
        saved = []
    try:
        yield out
    finally:
        for fd, s in saved:
            os.dup2(s, fd)
            os.close(s)
        tmp.seek(0)
        out.append(tmp.read().decode("utf-8", "replace"))
        tmp.close()


def _short(op_name: str) -> str:
    return op_name.split(".", 1)[1] if "." in op_name else op_name


def _subsequence(small, big) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def layer_paths(layer, struct_name: str) -> List[str]:
    """Sub-layer paths of ``layer`` that ``struct_name`` (the ``/Class/Class/`` chain of *called*
    layers Paddle gives each traced op) points to: the path's last layer is of the chain's last class
    and the chain is a subsequence of the path's classes (a layer reached through an attribute of
    another, without calling that one, is skipped in the chain). Exact matches first."""
    want = [p for p in (struct_name or "").strip("/").split("/") if p]
    if not want:
        return ["(the component's own forward)"]
    exact, loose = [], []
    for path, _ in layer.named_sublayers():
        chain, cur = [], layer
        for part in path.split("."):
            cur = cur[int(part)] if part.isdigit() else getattr(cur, part, None)
            if cur is None:
                break
            if type(cur).__name__ not in _CONTAINERS:
                chain.append(type(cur).__name__)
        if not chain or chain[-1] != want[-1]:
            continue
        if chain == want:
            exact.append(path)
        elif _subsequence(want, chain):
            loose.append(path)
    return exact or loose or [struct_name]


def _source_line(attrs: dict) -> Optional[str]:
    """The last stack frame of the op's ``op_callstack`` outside Paddle's own code."""
    stack = attrs.get("op_callstack")
    lines = list(stack) if isinstance(stack, (list, tuple)) else []
    frames = [(i, ln) for i, ln in enumerate(lines) if ln.strip().startswith("File ")]
    for i, ln in reversed(frames):
        if "site-packages" in ln or "/paddle/" in ln:
            continue
        m = re.search(r'File "([^"]+)", line (\d+)', ln)
        code = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if m:
            rel = os.path.relpath(m.group(1))
            return f"{m.group(1) if rel.startswith('..') else rel}:{m.group(2)}" + (f" `{code}`" if code else "")
    return None


def op_error(component: Component, op: dict, why: str) -> ExportError:
    name = _short(op["name"])
    paths = layer_paths(component.layer, op["attrs"].get("struct_name", ""))
    where = ", ".join(paths[:3]) + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")
    src = _source_line(op["attrs"])
    return ExportError(f"component {component.name!r}: paddle2onnx cannot export the Paddle op {op['name']!r} "
                       f"({why}) in layer {where}" + (f" at {src}" if src else "") + "; "
                       f"{ADVICE.get(name, DEFAULT_ADVICE)}")


def _p2o_version() -> str:
    try:
        import paddle2onnx

        return paddle2onnx.__version__
    except Exception:  # noqa: BLE001
        return ""


def _convert_here(prefix: str, verbose: bool) -> Tuple[Optional[bytes], str]:
    import paddle2onnx

    model, params = program_files(prefix)
    with captured_native_output() as log:
        try:
            data = paddle2onnx.export(model, params if os.path.isfile(params) else "", None, opset_version=OPSET,
                                      auto_upgrade_opset=False, enable_onnx_checker=True, enable_optimize=True,
                                      optimize_tool=None, verbose=verbose)
        except (Exception, SystemExit):  # noqa: BLE001 - paddle2onnx logs the failure, then sys.exit(-1)s
            data = None
    return data, "".join(log)


def _wait(pid: int, timeout: float) -> int:
    """waitpid with a deadline: a child that hangs (a lock held by another thread at fork time) is
    killed and reported instead of blocking the export forever."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    delay = 0.005
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() > deadline:
                raise ExportError(f"paddle2onnx did not finish within {timeout:.0f} s (PPENGINE_P2O_TIMEOUT); "
                                  "nothing was written")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    except BaseException:  # the deadline, Ctrl-C: the child goes too
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def _convert(prefix: str) -> Tuple[Optional[bytes], str]:
    """paddle2onnx on the saved program, in a forked child process where the OS allows (some
    converters abort the process, e.g. softplus): -> (ONNX bytes or None, paddle2onnx's verbose log)."""
    if not hasattr(os, "fork"):
        return _convert_here(prefix, verbose=True)
    with tempfile.TemporaryDirectory(prefix="p2o_") as d:
        out, log = os.path.join(d, "model.onnx"), os.path.join(d, "log.txt")
        pid = os.fork()
        if pid == 0:  # child: convert with its output in the log file, leave without the parent's handlers
            code = 1
            try:
                import sys

                import paddle2onnx

                fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = sys.stderr = os.fdopen(fd, "w", buffering=1)
                model, params = program_files(prefix)
                try:
                    data = paddle2onnx.export(model, params if os.path.isfile(params) else "", None,
                                              opset_version=OPSET, auto_upgrade_opset=False, enable_onnx_checker=True,
                                              enable_optimize=True, optimize_tool=None, verbose=True)
                except (Exception, SystemExit):  # noqa: BLE001
                    data = None
                if data:
                    with open(out, "wb") as f:
                        f.write(data)
                    code = 0
            finally:
                os._exit(code)
        status = _wait(pid, float(os.environ.get("PPENGINE_P2O_TIMEOUT", "1800")))
        text = open(log).read() if os.path.isfile(log) else ""
        if os.WIFSIGNALED(status):
            text += f"\n[ERROR] paddle2onnx aborted (signal {os.WTERMSIG(status)})"
        data = open(out, "rb").read() if os.path.isfile(out) and os.WIFEXITED(status) and \
            os.WEXITSTATUS(status) == 0 else None
        return data, text


def failing_op(log: str, ops: List[dict]) -> Tuple[Optional[dict], str]:
    """The op paddle2onnx failed on, from its verbose log -> (op of the traced program or None, why).

    Its checker names the op (``[OP: pd_op.X] reason``); otherwise the op it was converting
    (``Start export pd_op.X`` without the matching ``Finish``) is the k-th op of that name."""
    clean = re.sub(r"\x1b\[[0-9;]*m", "", log)
    errors = [ln.strip() for ln in clean.splitlines() if "ERROR" in ln or "Unimplemented" in ln]
    why = errors[0] if errors else "conversion failed"
    why = re.sub(r"^.*?(Failed to convert PaddlePaddle model: |\[ERROR\](\[Paddle2ONNX\])? )", "", why)[:240]
    m = re.search(r"\[OP: (\S+?)\] ?(.*)", clean)
    if m:
        same = [op for op in ops if op["name"] == m.group(1)]
        return (same[0] if same else {"name": m.group(1), "attrs": {}}), m.group(2).strip()[:240]
    started = re.findall(r"Start export (\S+), op_id", clean)
    finished = re.findall(r"Finish export (\S+), op_id", clean)
    if not started or len(started) == len(finished):
        return None, why
    name = started[-1]
    k = started.count(name) - 1
    same = [op for op in ops if op["name"] == name]
    return (same[k] if k < len(same) else (same[-1] if same else {"name": name, "attrs": {}})), why


# paddle2onnx 2.1.0 reads some float attributes of PIR ops as garbage (seen here: 1e24, 0.0, NaN):
# Paddle op, its attribute -> the ONNX node type it becomes and where the value goes there
FLOAT_FIXES = (
    ("pd_op.group_norm", "epsilon", "InstanceNormalization", "epsilon"),
    ("pd_op.leaky_relu", "negative_slope", "LeakyRelu", "alpha"),
    ("pd_op.pad3d", "pad_value", "Pad", 2),  # the constant_value input
)


def _set_value(model, node, where, value: float):
    from onnx import helper, numpy_helper

    if isinstance(where, str):
        for a in list(node.attribute):
            if a.name == where:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(where, float(value)))
        return
    name = f"{node.output[0]}.restored_{where}"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    while len(node.input) <= where:
        node.input.append("")
    node.input[where] = name


def fix_float_attributes(model, ops: List[dict], component: Component) -> Dict[str, int]:
    """Restore the float attributes paddle2onnx loses (:data:`FLOAT_FIXES`) from the traced Paddle
    program: the k-th ONNX node of the type gets the k-th Paddle op's value (a node named
    ``p2o.pd_op.<op>.<k>.0`` when the counts differ). Returns how many were restored per op."""
    done = {}
    for op_name, attr, node_type, where in FLOAT_FIXES:
        values = [float(op["attrs"].get(attr)) for op in ops if op["name"] == op_name]
        nodes = [n for n in model.graph.node if n.op_type == node_type]
        if len(nodes) != len(values):
            prefix = f"p2o.{op_name}."
            nodes = [n for n in nodes if n.output and n.output[0].startswith(prefix)]
            if len(nodes) != len(values):
                raise ExportError(f"component {component.name!r}: the ONNX graph has {len(nodes)} {node_type} nodes "
                                  f"for {len(values)} {op_name} ops; cannot restore their {attr}")
        for node, v in zip(nodes, values):
            _set_value(model, node, where, v)
        if values:
            done[op_name.split(".", 1)[1]] = len(values)
    return done


def rename_outputs(model, component: Component):
    """Graph outputs ``fetch_name_<i>`` (in order) -> the component's output names, each through a
    Reshape to its declared shape: paddle2onnx drops a batch-1 axis on some ops while declaring the
    full shape (CLIP's pooled output, a gather_nd, came out (D,) for a declared (1, D)); a Reshape
    to the same shape costs nothing."""
    from onnx import TensorProto, helper, numpy_helper

    outs = list(model.graph.output)
    if len(outs) != len(component.outputs):
        raise ExportError(f"component {component.name!r}: the ONNX graph has {len(outs)} outputs, "
                          f"{len(component.outputs)} declared")
    for o, t in zip(outs, component.outputs):
        new = f"{t.name}.unshaped"
        for node in model.graph.node:
            node.output[:] = [new if n == o.name else n for n in node.output]
            node.input[:] = [new if n == o.name else n for n in node.input]
        shape_name = f"{t.name}.shape"
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(t.shape, np.int64), shape_name))
        model.graph.node.append(helper.make_node("Reshape", [new, shape_name], [t.name], name=f"{t.name}.reshape"))
        elem = o.type.tensor_type.elem_type or TensorProto.FLOAT
        o.CopyFrom(helper.make_tensor_value_info(t.name, elem, list(t.shape)))


def export_onnx(component: Component, prefix: str, path: str, ops: List[dict]) -> dict:
    """Convert the saved program ``prefix`` of ``component`` to ``path`` (atomically).
    ``ops``: the traced program's ops (:func:`~ppengine.export.paddle_target.save_program`).
    Returns facts for the manifest (opset, group norms fixed)."""
    import onnx

    data, log = _convert(prefix)
    if not data:
        op, why = failing_op(log, ops)
        if op is not None:
            raise op_error(component, op, why)
        raise ExportError(f"component {component.name!r}: paddle2onnx failed ({why})")
    model = onnx.load_from_string(data)
    restored = fix_float_attributes(model, ops, component)
    rename_outputs(model, component)
    model.producer_name = "ppengine.export (paddle2onnx " + _p2o_version() + ")"
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"component {component.name!r}: the ONNX graph fails onnx.checker: {e}") from e
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    OrtRunner(path)  # opens in onnxruntime, or raises
    return {"opset": OPSET, "float_attributes_restored": restored}


class OrtRunner:
    """An ONNX file on onnxruntime (CPU): ``runner(feeds) -> {output name: ndarray}``."""

    def __init__(self, path: str, threads: int = 1):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise ExportError(f"{path} not found: export the component with --target onnx first")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {str(e)[:300]})") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ExportError(f"onnxruntime: input {missing[0]!r} missing (given: {', '.join(feeds)})")
        outs = self.session.run(None, {n: np.ascontiguousarray(feeds[n]) for n in self.input_names})
        return dict(zip(self.output_names, outs))
