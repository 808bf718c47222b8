"""The export pipeline: components -> Paddle program / ONNX / Core ML files, each checked, plus
``manifest.json``, written into a temporary folder renamed to the output at the end.

    from ppengine.export import ExportOptions, export
    manifest = export(model, cfg, "output/export/digits", targets=["paddle", "onnx"])

Output layout::

    OUT/manifest.json            inputs, outputs, shapes, dtypes, files, parity, versions, the zoo's
                                 pipeline facts (scheduler, latent scale, tokenizer, ...)
    OUT/config.yml               the config the model was built from
    OUT/paddle/<name>.json .pdiparams    --target paddle (paddle.jit.save)
    OUT/onnx/<name>.onnx                 --target onnx (paddle2onnx, opset 17)
    OUT/coreml/<Role>.mlpackage          --target coreml (apple/ml-stable-diffusion's names for the SD
                                         roles: TextEncoder, Unet / UnetChunk1-2, VAEDecoder, VAEEncoder)
    OUT/coreml/failed/...                packages below their PSNR floor (never beside the good ones)
    OUT/<files the zoo adds>             e.g. tokenizer/vocab.txt, coreml/vocab.json + merges.txt, faces.npy

Every file is checked against the dygraph layer on :func:`~ppengine.export.spec.example_inputs`
(``check=False`` skips the numbers, not the loading): Paddle programs through Paddle Inference,
ONNX through onnxruntime (both at the fp32 floor, else an ExportError and nothing is written), Core
ML packages through the NumPy ML Program interpreter (:mod:`ppengine.export.mil_eval`).
"""
from __future__ import annotations

import datetime
import os
import platform
import shutil
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import ExportError, InputError
from ..io import atomic_write_json, make_temp_dir
from . import checks
from .onnx_target import OrtRunner, export_onnx
from .paddle_target import PaddleInferenceRunner, program_files, run_dygraph, save_program
from .spec import Component, ExportOptions, components_of, example_inputs, pipeline_info, select

TARGETS = ("paddle", "onnx", "coreml")
PRECISIONS = ("fp32", "fp16")
COMPRESSIONS = ("none", "palettize6", "palettize4", "int8")
MANIFEST_FORMAT = "ppdigitalhuman-export/1"


def software_versions() -> Dict[str, str]:
    """Versions of the packages an export depends on (absent ones are left out)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("ppdigitalhuman", "paddlepaddle", "paddle2onnx", "onnx", "onnxruntime", "coremltools",
                "onnx2coreml", "numpy", "ppdiffusers", "paddlenlp"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def jsonable(obj):
    """``obj`` with non-finite floats as the strings "inf" / "-inf" / "nan" (strict JSON has none)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return "nan" if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def check_options(targets: Sequence[str], precision: str, compress: str, chunk: int):
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise InputError(f"--target {bad[0] if bad else ''!r}: choose from {', '.join(TARGETS)}")
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: choose fp32 or fp16")
    if compress not in COMPRESSIONS:
        raise InputError(f"--compress {compress!r}: choose from {', '.join(COMPRESSIONS)}")
    if int(chunk) not in (0, 2):
        raise InputError(f"--chunk {chunk}: 0 (one package) or 2 (the UNet in two, as apple's --chunk-unet)")
    if (precision != "fp32" or compress != "none" or int(chunk)) and "coreml" not in targets:
        raise InputError("--precision fp16, --compress and --chunk apply to --target coreml (Paddle and ONNX "
                         "files are fp32)")


def is_export_folder(path: str) -> bool:
    """An earlier export (its manifest.json says so): the only non-empty folder an export replaces."""
    import json

    try:
        with open(os.path.join(path, "manifest.json")) as f:
            return json.load(f).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output(output: str):
    """A clear error before any work when ``output`` cannot become a folder we write: a file, a
    non-empty folder that is not an earlier export (never deleted), a place we cannot write."""
    out = os.path.abspath(output)
    if os.path.isfile(out):
        raise InputError(f"--output {output!r} is a file; give a folder")
    if os.path.isdir(out) and os.listdir(out) and not is_export_folder(out):
        raise InputError(f"--output {output!r} exists and is not an earlier export (no manifest.json of ours): "
                         "give a new or empty folder; nothing there is deleted")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--output {output!r}: {parent!r} is not writable; choose a folder you can write to")


def _size(paths: Iterable[str]) -> int:
    total = 0
    for p in paths:
        if os.path.isdir(p):
            for d, _, names in os.walk(p):
                total += sum(os.path.getsize(os.path.join(d, n)) for n in names)
        elif os.path.isfile(p):
            total += os.path.getsize(p)
    return total


def _rel(paths: Iterable[str], root: str) -> List[str]:
    return [os.path.relpath(p, root) for p in paths]


def _check(component: Component, name: str, reference: Dict[str, np.ndarray], outputs: Dict[str, np.ndarray],
           floor: float, check: bool) -> dict:
    res = checks.compare(reference, outputs)
    if check and not checks.passes(res, floor):
        raise ExportError(f"component {component.name!r}: the {name} file differs from the dygraph model "
                          f"({checks.describe(res)}; floor {floor:.0f} dB); nothing was written")
    return res


def _coreml_predict(paths: List[str], feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Run a package, or its chunks in order (each chunk's outputs feed the next)."""
    from . import mil_eval

    values = dict(feeds)
    out: Dict[str, np.ndarray] = {}
    for p in paths:
        out = mil_eval.predict(p, values)
        values.update(out)
    return out


def _coreml_convert():
    try:
        from . import coreml
    except ImportError as e:
        raise ExportError(f"--target coreml: the Core ML converter could not be imported ({e}); install the "
                          "pinned onnx2coreml and coremltools (requirements.txt)") from e
    return coreml


def _export_coreml(component, onnx_path, tmp, precision, compress, chunk, metadata, reference, feeds, check, log):
    coreml = _coreml_convert()
    role = component.extra.get("apple_role") or component.name
    out_path = os.path.join(tmp, "coreml", f"{role}.mlpackage")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    paths = list(coreml.convert(onnx_path, out_path, component, precision=precision, compress=compress,
                                chunk=chunk, metadata=metadata))
    floor = checks.floor_for(precision, compress)
    entry = {"files": _rel(paths, tmp), "precision": precision, "compress": compress, "chunk": int(chunk),
             "floor_db": floor, "size_bytes": _size(paths)}
    if check:
        res = checks.compare(reference, _coreml_predict(paths, feeds))
        entry["parity"] = res
        if not checks.passes(res, floor):
            failed = os.path.join(tmp, "coreml", "failed")
            os.makedirs(failed, exist_ok=True)
            moved = []
            for p in paths:
                dest = os.path.join(failed, os.path.basename(p))
                shutil.move(p, dest)
                moved.append(dest)
            entry.update(files=_rel(moved, tmp), failed=True)
            log(f"  coreml {component.name}: FAILED {checks.describe(res)} < {floor:.0f} dB -> coreml/failed/")
            return entry
        log(f"  coreml {component.name}: {checks.describe(res)}")
    return entry


def export(model, config: Optional[dict], output: str, targets: Sequence[str] = ("onnx",),
           components: Optional[Sequence[str]] = None, options: Optional[ExportOptions] = None,
           precision: str = "fp32", compress: str = "none", chunk: int = 0, check: bool = True, seed: int = 0,
           log: Callable[[str], None] = print) -> dict:
    """Export ``model``'s components (all, or those named) to ``targets`` under ``output``.

    Args:
        model: a model whose type a zoo declared components for (``ppldm.export``, ``ppface3d.export``).
        config: the config the model was built from (saved as ``config.yml``; None: none saved).
        output: the folder to write (replaced when it exists; written under a temporary name first).
        targets: any of ``paddle``, ``onnx``, ``coreml`` (Core ML goes through the ONNX file).
        options: batch, attention form, image size (:class:`ExportOptions`).
        precision, compress, chunk: Core ML package options (see :mod:`ppengine.export.coreml`).
        check: compare each file's outputs with the dygraph model's (floors in :mod:`.checks`).
    Returns the manifest (also written as ``output/manifest.json``).
    """
    targets = list(dict.fromkeys(targets))
    options = options or ExportOptions()
    check_options(targets, precision, compress, chunk)
    check_output(output)
    comps = select(components_of(model, options), components)
    info = pipeline_info(model, comps, options)
    try:
        tmp = make_temp_dir(output)
    except OSError as e:
        raise InputError(f"--output {output!r}: cannot create a folder there ({e.strerror})") from None
    scratch = tempfile.mkdtemp(prefix="ppexport_")
    try:
        manifest = _export_into(tmp, scratch, model, config, comps, info, targets, options, precision, compress,
                                chunk, check, seed, log)
        atomic_write_json(os.path.join(tmp, "manifest.json"), jsonable(manifest))
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, ExportError):
            raise InputError(f"--output {output!r}: writing failed ({e.strerror or e}); nothing was written") from None
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def _export_into(tmp, scratch, model, config, comps, info, targets, options, precision, compress, chunk, check,
                 seed, log) -> dict:
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"type": type(model).__name__},
        "targets": targets,
        "options": {"batch": options.batch, "attention": options.attention, "image_size": options.image_size,
                    "precision": precision, "compress": compress, "chunk": int(chunk), "check": bool(check),
                    "check_seed": int(seed)},
        "software": software_versions(),
        "components": {},
        "pipeline": dict(info.get("pipeline") or {}),
    }
    if config is not None:
        from ..config import Config

        cfg = config if isinstance(config, Config) else Config(dict(config))
        cfg.save(os.path.join(tmp, "config.yml"))
        manifest["model"]["config"] = "config.yml"
    copies = dict(info.get("files") or {})
    if "coreml" in targets:
        copies.update(info.get("coreml_files") or {})
    for dest, src in copies.items():
        path = os.path.join(tmp, dest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(src, path)
    for dest, arr in (info.get("arrays") or {}).items():
        np.save(os.path.join(tmp, dest), np.asarray(arr))
        copies[dest] = None
    manifest["files"] = sorted(copies)
    metadata = dict(info.get("metadata") or {})
    for i, comp in enumerate(comps):
        t0 = time.time()
        log(f"[{i + 1}/{len(comps)}] {comp.name}: " + ", ".join(f"{t.name} {list(t.shape)}" for t in comp.inputs)
            + " -> " + ", ".join(f"{t.name} {list(t.shape)}" for t in comp.outputs))
        feeds = example_inputs(comp, seed)
        reference = run_dygraph(comp, feeds)
        entry = comp.to_dict()
        entry.update(files={}, parity={}, size_bytes={}, group_norm_eps=sorted(set(comp.group_norm_eps.values())))
        keep_paddle = "paddle" in targets
        prefix = os.path.join(tmp if keep_paddle else scratch, "paddle", comp.name)
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        ops = save_program(comp, prefix)
        if keep_paddle:
            files = program_files(prefix)
            entry["files"]["paddle"] = _rel(files, tmp)
            entry["size_bytes"]["paddle"] = _size(files)
            out = PaddleInferenceRunner(prefix, [t.name for t in comp.outputs])(feeds)
            entry["parity"]["paddle"] = _check(comp, "Paddle Inference", reference, out, checks.FLOORS["fp32"], check)
            log(f"  paddle {comp.name}: {checks.describe(entry['parity']['paddle'])}")
        if "onnx" in targets or "coreml" in targets:
            keep_onnx = "onnx" in targets
            path = os.path.join(tmp if keep_onnx else scratch, "onnx", comp.name + ".onnx")
            facts = export_onnx(comp, prefix, path, ops)
            res = _check(comp, "ONNX", reference, OrtRunner(path)(feeds), checks.FLOORS["fp32"], check)
            if keep_onnx:
                entry["files"]["onnx"] = _rel([path], tmp)
                entry["size_bytes"]["onnx"] = _size([path])
                entry["parity"]["onnx"] = res
                entry["onnx"] = facts
                log(f"  onnx {comp.name}: {checks.describe(res)}")
            if "coreml" in targets:
                desc = "; ".join(d for d in (metadata.get("description"), comp.description) if d)
                meta = dict(metadata, description=desc,
                            inputs={t.name: t.description for t in comp.inputs},
                            outputs={t.name: t.description for t in comp.outputs})
                entry["coreml"] = _export_coreml(comp, path, tmp, precision, compress, chunk, meta, reference,
                                                 feeds, check, log)
                entry["files"]["coreml"] = entry["coreml"]["files"]
                entry["size_bytes"]["coreml"] = entry["coreml"]["size_bytes"]
        entry["export_seconds"] = round(time.time() - t0, 2)
        manifest["components"][comp.name] = entry
    failed = [n for n, e in manifest["components"].items() if e.get("coreml", {}).get("failed")]
    manifest["failed"] = failed
    return manifest
