"""What a model exports: components, each a fixed-shape graph with named inputs and outputs.

A zoo declares, for each of its model types, a function that lists the model's components
(:func:`register_components`); the export pipeline (:mod:`ppengine.export.pipeline`) turns each
:class:`Component` into a Paddle program, an ONNX file and Core ML packages and checks every file
against the component's dygraph ``layer``. The engine knows nothing of faces or diffusion: it sees
layers and tensor specs only.

    comp = Component("unet", layer, inputs=[TensorSpec("sample", (2, 4, 8, 8)),
                                            TensorSpec("timestep", (2,), range=(0, 1000))],
                     outputs=[TensorSpec("noise_pred", (2, 4, 8, 8))])
    feeds = example_inputs(comp, seed=0)        # {"sample": float32 (2, 4, 8, 8), "timestep": ...}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import paddle

from ..errors import InputError

DTYPES = ("float32", "int64", "int32")


@dataclass
class TensorSpec:
    """One named input or output of a component.

    Args:
        name: the graph name (ONNX input/output name, Core ML feature name).
        shape: fixed shape.
        dtype: ``float32``, ``int64`` or ``int32``.
        description: one line for manifests and Core ML metadata.
        range: values :func:`example_inputs` draws from: integers in ``[low, high)`` (token ids within
            the vocabulary, timesteps in ``[0, T)``, class labels); floats uniform in ``[low, high]``.
            None: integers in ``[0, 10)``, floats standard normal.
    """

    name: str
    shape: Tuple[int, ...]
    dtype: str = "float32"
    description: str = ""
    range: Optional[Tuple[float, float]] = None

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorSpec {self.name!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if any(s < 1 for s in self.shape):
            raise ValueError(f"TensorSpec {self.name!r}: a fixed shape of positive sizes is needed, got {self.shape}")

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "description": self.description}
        if self.range is not None:
            d["range"] = [float(v) if self.dtype == "float32" else int(v) for v in self.range]
        return d


@dataclass
class Component:
    """A fixed-shape sub-graph of a model, exported as one file per target.

    Args:
        name: the component's name (``unet``, ``vae_decoder``, ``encoder``, ``flame`` ...).
        layer: a ``paddle.nn.Layer`` whose ``forward`` takes the inputs in order (one tensor each)
            and returns a tuple of the outputs in order.
        inputs, outputs: their :class:`TensorSpec`.
        description: one line (manifest, Core ML metadata).
        group_norm_eps: GroupNorm sub-layer path -> epsilon, read from the layer when not given
            (paddle2onnx writes a wrong epsilon into the InstanceNormalization it makes from a
            GroupNorm; the ONNX target rewrites it from these).
        extra: free-form facts for targets and manifests, e.g. ``{"apple_role": "Unet"}`` (the
            apple/ml-stable-diffusion resource name: Unet, TextEncoder, VAEDecoder, VAEEncoder).
    """

    name: str
    layer: paddle.nn.Layer
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    description: str = ""
    group_norm_eps: Dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        names = [t.name for t in self.inputs] + [t.name for t in self.outputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"component {self.name!r}: tensor names must be unique, repeated: {dup}")
        if not self.group_norm_eps:
            self.group_norm_eps = group_norm_epsilons(self.layer)

    def to_dict(self) -> dict:
        """The JSON-able description (no layer) written into manifests."""
        return {"name": self.name, "description": self.description,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "extra": dict(self.extra)}


def group_norm_epsilons(layer: paddle.nn.Layer) -> Dict[str, float]:
    """Every GroupNorm in ``layer`` -> ``{sub-layer path: epsilon}``."""
    return {name: float(sub._epsilon) for name, sub in layer.named_sublayers(include_self=True)
            if isinstance(sub, paddle.nn.GroupNorm)}


def example_inputs(component: Component, seed: int = 0) -> Dict[str, np.ndarray]:
    """Non-trivial random inputs of the right dtype and range for ``component`` (see
    :class:`TensorSpec`'s ``range``), the same for the same seed."""
    rng = np.random.RandomState(seed)
    feeds = {}
    for t in component.inputs:
        if t.dtype == "float32":
            if t.range is None:
                v = rng.standard_normal(t.shape)
            else:
                v = rng.uniform(float(t.range[0]), float(t.range[1]), t.shape)
        else:
            lo, hi = (0, 10) if t.range is None else (int(t.range[0]), int(t.range[1]))
            v = rng.randint(lo, max(hi, lo + 1), t.shape)
        feeds[t.name] = v.astype(t.dtype)
    return feeds


# --------------------------------------------------------------------------- declarations
_DECLARATIONS: Dict[str, Callable] = {}
_INFO: Dict[str, Callable] = {}


def register_components(model_type: str):
    """Decorator: ``fn(model, options) -> list[Component]`` declares the exportable components of
    the model class named ``model_type`` (each zoo registers its own in ``<zoo>/export.py``).
    ``options``: :class:`ExportOptions`."""

    def deco(fn):
        _DECLARATIONS[model_type] = fn
        return fn

    return deco


def register_pipeline_info(model_type: str):
    """Decorator: ``fn(model, components, options) -> dict`` gives the manifest facts a program needs
    to run the export without this library: ``{"pipeline": {...}`` (scheduler config, latent scale,
    how the components connect, tokenizer), ``"files": {dest in the export folder: source path}``
    (vocabularies to copy), ``"metadata": {...}`` (author, license, version for Core ML)``}``."""

    def deco(fn):
        _INFO[model_type] = fn
        return fn

    return deco


def pipeline_info(model, components: List[Component], options: "ExportOptions") -> dict:
    fn = _INFO.get(type(model).__name__)
    return fn(model, components, options) if fn is not None else {}


@dataclass
class ExportOptions:
    """What the command line asks of the declarations (each uses what applies to it).

    batch: batch size of the graphs (the UNet's default, 2, is classifier-free guidance's pair).
    attention: ``standard`` or ``split_einsum`` (the Neural Engine form, ppldm's attention).
    image_size: sample side in pixels (None: the model's default).
    """

    batch: Optional[int] = None
    attention: str = "standard"
    image_size: Optional[int] = None


def declared_types() -> List[str]:
    return sorted(_DECLARATIONS)


def components_of(model, options: Optional[ExportOptions] = None) -> List[Component]:
    """The components the model's zoo declares (an InputError when its type declares none)."""
    kind = type(model).__name__
    if kind not in _DECLARATIONS:
        raise InputError(f"model type {kind!r} declares no export components; exportable types: "
                         f"{', '.join(declared_types()) or 'none (import ppldm / ppface3d first)'}")
    return _DECLARATIONS[kind](model, options or ExportOptions())


def select(components: List[Component], names) -> List[Component]:
    """The components named in ``names`` (None, [] or ['all']: every one), in declaration order."""
    if not names or list(names) == ["all"]:
        return list(components)
    valid = [c.name for c in components]
    unknown = [n for n in names if n not in valid]
    if unknown:
        from ..registry import nearest

        near = nearest(unknown[0], valid)
        hint = f" Did you mean {near!r}?" if near else ""
        raise InputError(f"unknown component {unknown[0]!r} for this model.{hint} Valid: {', '.join(valid)} (or all)")
    return [c for c in components if c.name in names]
