"""Core ML target: an exported ONNX graph -> Core ML ML Program packages (``.mlpackage``).

    paths = convert("out/onnx/unet.onnx", "out/coreml/Unet.mlpackage", component,
                    precision="fp16", compress="palettize6", chunk=2,
                    metadata={"author": "...", "license": "...", "version": "1.0"})
    # ["out/coreml/UnetChunk1.mlpackage", "out/coreml/UnetChunk2.mlpackage"]

The way apple/ml-stable-diffusion's ``torch2coreml`` makes its packages, from ONNX instead of
TorchScript:

* the graph is lowered to MIL by onnx2coreml (pinned; coremltools has had no ONNX frontend since
  6.0), with our handlers for the operators it lacks (:mod:`.onnx_ops_coreml`: Einsum for the
  split-einsum attention, CumSum, Trilu); an operator nobody handles is an ExportError naming it;
* ``precision``: ``fp16`` (the default, as apple's; float32 inputs/outputs, fp16 inside) or ``fp32``;
  deployment target iOS17 / macOS14;
* ``compress`` (``coremltools.optimize.coreml``, post-training, on the weights): ``palettize6`` /
  ``palettize4`` (k-means palettization, 6 / 4 bits per weight, as apple's ``--quantize-nbits``),
  ``int8`` (linear symmetric per-channel int8); only the weights of convolutions, linear layers,
  matmuls and embedding gathers, and only those of at least ``min_compress_size`` elements
  (coremltools' default 2048);
* ``chunk=2``: ``coremltools.models.utils.bisect_model`` cuts the program in two packages of about
  equal weight size (apple's ``--chunk-unet``), named ``<Name>Chunk1`` / ``<Name>Chunk2``
  (``Unet.mlpackage`` -> ``UnetChunk1.mlpackage`` + ``UnetChunk2.mlpackage``, the names apple's Swift
  package looks for); the second takes the first's outputs (plus any original inputs it needs).
  Only the UNet is chunked (apple role ``Unet``, or a component with ``extra["chunk"]``): the text
  encoder, VAE and other components stay whole, as the Swift package loads them;
* metadata: short description, author, licence, version, each input's and output's description,
  and ``user_defined_metadata`` (component, precision, compression, chunk part, software versions).

Nothing half-written is left: the packages are built in a hidden folder beside ``out_path`` and
moved into place at the end. Core ML cannot run on Linux; :mod:`.mil_eval` evaluates the written
programs with NumPy to check them.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
from typing import Dict, Iterator, List, Optional

from ..errors import ExportError, InputError
from ..io import make_temp_dir
from .spec import Component

PRECISIONS = ("fp16", "fp32")
COMPRESSIONS = ("none", "palettize6", "palettize4", "int8")
CHUNKS = (0, 2)
DEPLOYMENT_TARGET = "iOS17"
MIN_COMPRESS_SIZE = 2048     # coremltools.optimize.coreml's default weight_threshold
WEIGHT_OPS = ("conv", "conv_transpose", "linear", "matmul", "einsum", "gather")   # compressed weights feed these
AUTHOR = "ppdigitalhuman (ppengine.export, Paddle -> ONNX -> Core ML)"


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """coremltools' and onnx2coreml's chatter off (the Linux ``Failed to load _MLModelProxy`` and
    untested-version warnings, onnxruntime's constant-folding warnings), unless ``PPENGINE_VERBOSE=1``.
    coremltools' progress bars (MIL passes, compression) stay on a terminal, where a large UNet
    takes minutes, and are dropped elsewhere (logs, notebooks, tests). Errors still raise."""
    from ..quiet import verbose_requested

    if verbose_requested(argv=()):
        yield
        return
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    real = sys.stderr
    try:
        interactive = real.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        sys.stderr = io.StringIO()       # tqdm progress bars of the MIL passes
    try:
        try:
            import onnxruntime as ort

            ort.set_default_logger_severity(3)
        except ImportError:
            pass
        yield
    finally:
        sys.stderr = real
        logger.setLevel(level)


@contextlib.contextmanager
def _real_torch_uint16() -> Iterator[None]:
    """ppdiffusers sets ``torch.uint16 = torch.bfloat16`` when it loads; torch.ao.quantization, which
    ``import coremltools`` pulls in when torch is installed, then fails (``torch.iinfo() requires an
    integer input type``). The real dtype is put back for the import, ppdiffusers' alias after it."""
    torch = sys.modules.get("torch")
    patched = getattr(torch, "uint16", None) if torch is not None else None
    if patched is None or patched is not getattr(torch, "bfloat16", None):
        yield
        return
    import numpy as np

    torch.uint16 = torch.from_numpy(np.zeros(1, np.uint16)).dtype
    try:
        yield
    finally:
        torch.uint16 = patched


def coremltools():
    """``import coremltools`` without its Linux warnings (and whichever of torch / ppdiffusers came first)."""
    with quiet_coremltools(), _real_torch_uint16():
        import coremltools as ct
    return ct


def converter():
    """An ``onnx2coreml.Converter`` with our handlers (:mod:`.onnx_ops_coreml`) registered."""
    coremltools()
    import onnx2coreml

    from .onnx_ops_coreml import register

    return register(onnx2coreml.Converter())


def unsupported_ops(model) -> Dict[str, List[str]]:
    """ONNX operators of ``model`` (a ModelProto or path) that neither onnx2coreml nor our handlers
    lower: ``{op type: [node names]}`` (empty when the graph converts)."""
    from .onnx_ops_coreml import HANDLERS

    coremltools()
    import onnx2coreml

    with quiet_coremltools():
        report = onnx2coreml.analyze(model)
    return {k: v for k, v in report.unsupported.items() if k not in HANDLERS}


def _check_args(precision: str, compress: str, chunk: int):
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if compress not in COMPRESSIONS:
        raise InputError(f"compress {compress!r}: choose one of {', '.join(COMPRESSIONS)}")
    if int(chunk) not in CHUNKS:
        raise InputError(f"chunk {chunk!r}: 0 (one package) or 2 (two halves, as apple's --chunk-unet)")


def _check_io(model, component: Component, onnx_path: str):
    init = {i.name for i in model.graph.initializer}
    ins = [i.name for i in model.graph.input if i.name not in init]
    outs = [o.name for o in model.graph.output]
    want_in, want_out = [t.name for t in component.inputs], [t.name for t in component.outputs]
    if sorted(ins) != sorted(want_in) or sorted(outs) != sorted(want_out):
        raise ExportError(f"{onnx_path}: the graph's inputs {ins} / outputs {outs} are not component "
                          f"{component.name!r}'s {want_in} / {want_out}; export its ONNX file again")


def to_mlmodel(model, precision: str = "fp16", component_name: str = "graph"):
    """An ONNX ModelProto -> an in-memory ML Program ``MLModel`` (not loadable on Linux, savable)."""
    ct = coremltools()
    from onnx2coreml import UnsupportedOpError
    from onnx2coreml._backend import program_to_mlmodel
    from onnx2coreml._target import Format, resolve_precision, resolve_target

    fmt = Format.MLPACKAGE
    target = resolve_target(DEPLOYMENT_TARGET, fmt)
    prec = resolve_precision(precision, fmt)
    with quiet_coremltools():
        try:
            program = converter().to_mil(model, target=target, precision=prec)
            return program_to_mlmodel(program, fmt=fmt, precision=prec, target=target,
                                      compute_units=ct.ComputeUnit.ALL)
        except UnsupportedOpError as e:
            op, nodes = next(iter(e.missing.items()))
            raise ExportError(f"component {component_name!r}: the ONNX operator {op!r} (node {nodes[0]!r}"
                              f"{f' and {len(nodes) - 1} more' if len(nodes) > 1 else ''}) has no Core ML lowering; "
                              f"add a handler to ppengine/export/onnx_ops_coreml.py (unsupported: "
                              f"{', '.join(e.missing)})") from None
        except Exception as e:  # noqa: BLE001 - onnx2coreml / coremltools errors, made one line
            msg = " ".join(str(e).split())[:400]
            raise ExportError(f"component {component_name!r}: ONNX -> Core ML failed ({type(e).__name__}: {msg})") from e


def compress_model(mlmodel, compress: str, min_size: int = MIN_COMPRESS_SIZE):
    """Post-training weight compression (``coremltools.optimize.coreml``) of an ML Program."""
    if compress == "none":
        return mlmodel
    ct = coremltools()
    opt = ct.optimize.coreml
    if compress.startswith("palettize"):
        op_cfg = opt.OpPalettizerConfig(mode="kmeans", nbits=int(compress[len("palettize"):]),
                                        weight_threshold=int(min_size))
        fn = opt.palettize_weights
    elif compress == "int8":
        op_cfg = opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=int(min_size))
        fn = opt.linear_quantize_weights
    else:
        raise InputError(f"compress {compress!r}: choose one of {', '.join(COMPRESSIONS)}")
    # only the weights of the ops that carry them: a constant mask (-inf / -1e4 entries) fed to an add
    # must stay exact (linear quantization would turn it into NaN, k-means would fail on it)
    config = opt.OptimizationConfig(global_config=None, op_type_configs={t: op_cfg for t in WEIGHT_OPS})
    with quiet_coremltools():
        return fn(mlmodel, config=config)


def set_metadata(mlmodel, component: Component, metadata: Optional[dict], precision: str, compress: str,
                 part: Optional[str] = None):
    """Fill the package's metadata (what Xcode's model viewer and ``MLModel.description`` show).

    ``metadata`` keys (all optional): ``description``, ``author``, ``license``, ``version``,
    ``inputs`` / ``outputs`` ({name: description}, default the component's), ``user_defined``
    ({key: value}); other string values go to ``user_defined_metadata`` too.
    """
    from .pipeline import software_versions

    meta = dict(metadata or {})
    versions = software_versions()
    desc = meta.pop("description", None) or component.description or component.name
    mlmodel.short_description = desc + (f" ({part})" if part else "")
    mlmodel.author = str(meta.pop("author", None) or AUTHOR)
    mlmodel.license = str(meta.pop("license", None) or "the licence of the exported model's weights")
    mlmodel.version = str(meta.pop("version", None) or versions.get("ppdigitalhuman", "0"))
    descs = {t.name: t.description for t in component.inputs + component.outputs}
    descs.update(meta.pop("inputs", None) or {})
    descs.update(meta.pop("outputs", None) or {})
    spec = mlmodel.get_spec()
    for f in spec.description.input:
        if descs.get(f.name):
            mlmodel.input_description[f.name] = descs[f.name]
    for f in spec.description.output:
        if descs.get(f.name):
            mlmodel.output_description[f.name] = descs[f.name]
    user = {"ppengine.component": component.name, "ppengine.precision": precision, "ppengine.compress": compress}
    if component.extra.get("apple_role"):
        user["ppengine.apple_role"] = str(component.extra["apple_role"])
    if part:
        user["ppengine.part"] = part
    user.update({f"ppengine.version.{k}": v for k, v in versions.items()})
    user.update({str(k): str(v) for k, v in (meta.pop("user_defined", None) or {}).items()})
    user.update({str(k): str(v) for k, v in meta.items() if isinstance(v, (str, int, float, bool))})
    for k, v in user.items():
        mlmodel.user_defined_metadata[k] = v
    return mlmodel


def chunkable(component: Component) -> bool:
    """Whether ``chunk=2`` splits this component: the UNet (apple role ``Unet``, as apple's
    ``--chunk-unet``), or a component declaring ``extra={"chunk": True}``."""
    return component.extra.get("apple_role") == "Unet" or bool(component.extra.get("chunk"))


def chunk_names(out_path: str, n: int = 2) -> List[str]:
    """``.../Unet.mlpackage`` -> ``[.../UnetChunk1.mlpackage, .../UnetChunk2.mlpackage]``."""
    stem = os.path.splitext(out_path)[0]
    return [f"{stem}Chunk{i}.mlpackage" for i in range(1, n + 1)]


def _bisect(package: str, workdir: str, component, metadata, precision, compress) -> List[str]:
    ct = coremltools()
    from coremltools.models.utils import bisect_model

    with quiet_coremltools():
        bisect_model(package, workdir, merge_chunks_to_pipeline=False, check_output_correctness=False)
    stem = os.path.splitext(os.path.basename(package))[0]
    out = []
    for i in (1, 2):
        src = os.path.join(workdir, f"{stem}_chunk{i}.mlpackage")
        if not os.path.isdir(src):
            raise ExportError(f"component {component.name!r}: bisect_model wrote no {os.path.basename(src)}")
        with quiet_coremltools():
            m = ct.models.MLModel(src, skip_model_load=True)
        set_metadata(m, component, metadata, precision, compress, part=f"chunk {i} of 2")
        dest = os.path.join(workdir, f"{stem}Chunk{i}.mlpackage")
        with quiet_coremltools():
            m.save(dest)
        shutil.rmtree(src)
        out.append(dest)
    return out


def convert(onnx_path: str, out_path: str, component: Component, precision: str = "fp16", compress: str = "none",
            chunk: int = 0, metadata: Optional[dict] = None, min_compress_size: int = MIN_COMPRESS_SIZE) -> List[str]:
    """ONNX file of ``component`` -> ML Program package(s); returns the written ``.mlpackage`` paths.

    Args:
        onnx_path: the component's ONNX graph (its inputs / outputs named as the component's).
        out_path: ``<Name>.mlpackage`` (chunks: ``<Name>Chunk1/2.mlpackage`` beside it).
        precision: ``fp16`` or ``fp32`` compute precision (inputs / outputs stay float32).
        compress: ``none``, ``palettize6``, ``palettize4`` or ``int8``.
        chunk: 0, or 2 to split the program in two packages.
        metadata: see :func:`set_metadata`.
        min_compress_size: weights with fewer elements are not compressed.
    """
    import onnx

    _check_args(precision, compress, chunk)
    if not str(out_path).endswith(".mlpackage"):
        raise InputError(f"{out_path!r}: a Core ML package path ends with .mlpackage")
    if not os.path.isfile(onnx_path):
        raise InputError(f"{onnx_path!r} not found: export the component to ONNX first (--target onnx)")
    try:
        model = onnx.load(onnx_path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{onnx_path!r} is not a readable ONNX file ({type(e).__name__}: {e})") from e
    _check_io(model, component, onnx_path)
    mlmodel = to_mlmodel(model, precision, component.name)
    mlmodel = compress_model(mlmodel, compress, min_compress_size)
    set_metadata(mlmodel, component, metadata, precision, compress)

    if int(chunk) and not chunkable(component):
        chunk = 0   # as apple's --chunk-unet: the UNet in chunks (UnetChunk1/2), the others whole
    finals = chunk_names(out_path) if int(chunk) == 2 else [os.path.abspath(out_path)]
    work = make_temp_dir(out_path)
    try:
        package = os.path.join(work, os.path.basename(out_path))
        with quiet_coremltools():
            mlmodel.save(package)
        built = _bisect(package, work, component, metadata, precision, compress) if int(chunk) == 2 else [package]
        if not all(os.path.isfile(os.path.join(p, "Manifest.json")) for p in built):
            raise ExportError(f"component {component.name!r}: coremltools wrote an incomplete package")
        for src, dest in zip(built, finals):
            if os.path.isdir(dest):
                shutil.rmtree(dest)
            os.replace(src, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [os.path.abspath(p) for p in finals]
