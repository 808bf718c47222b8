"""apple/ml-stable-diffusion's resource layout: what its Swift package (``StableDiffusion``,
``StableDiffusionSample``) expects in a ``--resource-path`` folder, and a check of a folder of
packages against it.

The Swift pipeline loads compiled models (``xcrun coremlcompiler compile X.mlpackage Resources/``
makes ``X.mlmodelc``) by these names, feeds them Float32 arrays by these input names and reads
these outputs (``StableDiffusionPipeline+Resources.swift``, ``TextEncoder.swift``, ``Unet.swift``,
``Decoder.swift``, ``Encoder.swift``):

==============  ============================================  ==========================================
package         inputs (Float32)                              outputs
==============  ============================================  ==========================================
TextEncoder     ``input_ids`` (1, L): token ids as floats     ``last_hidden_state`` (1, L, D)
Unet            ``sample`` (B, C, h, w), ``timestep`` (B,),   ``noise_pred`` (B, C, h, w) (its first)
(UnetChunk1/2)  ``encoder_hidden_states`` (B, D, 1, L)
VAEDecoder      ``z`` (1, C, h, w), the latent / scale factor  ``image`` (1, 3, H, W) in [-1, 1]
VAEEncoder      ``x`` (1, 3, H, W) in [-1, 1] (optional)       ``latent`` (1, 2C, h, w): mean | logvar
==============  ============================================  ==========================================

plus ``vocab.json`` and ``merges.txt`` (the CLIP BPE tokenizer). B is 2 (the guidance pair, one
call) or 1 (two calls). When ``UnetChunk1`` and ``UnetChunk2`` both exist they are used instead of
``Unet``; the sample shape is read from the first chunk.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

MODELS = ("TextEncoder", "Unet", "VAEDecoder", "VAEEncoder")
REQUIRED_FILES = ("vocab.json", "merges.txt")
INPUTS = {"TextEncoder": ("input_ids",), "Unet": ("sample", "timestep", "encoder_hidden_states"),
          "VAEDecoder": ("z",), "VAEEncoder": ("x",)}
OUTPUTS = {"TextEncoder": ("last_hidden_state",), "Unet": ("noise_pred",), "VAEDecoder": ("image",),
           "VAEEncoder": ("latent",)}


def _features(path: str) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
    """{name: (dtype name, shape)} of a package's inputs and outputs (read from its spec)."""
    from .coreml import coremltools, quiet_coremltools

    ct = coremltools()
    with quiet_coremltools():
        spec = ct.models.MLModel(path, skip_model_load=True).get_spec()

    def read(features):
        out = {}
        for f in features:
            arr = f.type.multiArrayType
            dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
            out[f.name] = (dtype, tuple(int(s) for s in arr.shape))
        return out

    return read(spec.description.input), read(spec.description.output)


def unet_packages(folder: str) -> List[str]:
    """The UNet package(s) the Swift package would load from ``folder``: both chunks, or Unet."""
    chunks = [os.path.join(folder, f"UnetChunk{i}.mlpackage") for i in (1, 2)]
    if all(os.path.isdir(c) for c in chunks):
        return chunks
    whole = os.path.join(folder, "Unet.mlpackage")
    return [whole] if os.path.isdir(whole) else []


def check_resources(folder: str, require_encoder: bool = False) -> List[str]:
    """What in ``folder`` would stop apple's Swift pipeline from running it (empty: nothing found).

    Checks the names, that every input is Float32 with the expected name and rank, the outputs'
    names, and that the shapes agree between the packages (token count and width between the text
    encoder and the UNet, latent channels and size between the UNet and the VAE)."""
    problems: List[str] = []
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(folder, name)):
            problems.append(f"{name} missing (the CLIP tokenizer)")
    feats: Dict[str, Tuple[dict, dict]] = {}
    for model in ("TextEncoder", "VAEDecoder", "VAEEncoder"):
        path = os.path.join(folder, f"{model}.mlpackage")
        if os.path.isdir(path):
            feats[model] = _features(path)
        elif model != "VAEEncoder" or require_encoder:
            problems.append(f"{model}.mlpackage missing")
    unet = unet_packages(folder)
    if not unet:
        problems.append("Unet.mlpackage (or UnetChunk1.mlpackage + UnetChunk2.mlpackage) missing")
    else:
        parts = [_features(p) for p in unet]
        ins = dict(parts[0][0])
        for p_in, _ in parts[1:]:
            ins.update({k: v for k, v in p_in.items() if k in INPUTS["Unet"]})
        feats["Unet"] = (ins, parts[-1][1])
        if "sample" not in parts[0][0]:
            problems.append(f"{os.path.basename(unet[0])} must take 'sample' (the Swift package reads its shape)")
    for model, (ins, outs) in feats.items():
        for name in INPUTS[model]:
            if name not in ins:
                problems.append(f"{model}: input {name!r} missing (has {sorted(ins)})")
            elif ins[name][0] != "FLOAT32":
                problems.append(f"{model}: input {name!r} is {ins[name][0]}; the Swift package feeds FLOAT32")
        extra = sorted(set(ins) - set(INPUTS[model])) if model != "Unet" or len(unet) == 1 else []
        if extra:
            problems.append(f"{model}: inputs {extra} the Swift package does not feed")
        for name in OUTPUTS[model]:
            if name not in outs:
                problems.append(f"{model}: output {name!r} missing (has {sorted(outs)})")
    problems += _shape_problems(feats)
    return problems


def _shape_problems(feats) -> List[str]:
    out = []

    def shape(model, kind, name) -> Optional[tuple]:
        if model not in feats:
            return None
        return feats[model][0 if kind == "in" else 1].get(name, (None, None))[1]

    ids, hidden = shape("TextEncoder", "in", "input_ids"), shape("TextEncoder", "out", "last_hidden_state")
    sample, ctx = shape("Unet", "in", "sample"), shape("Unet", "in", "encoder_hidden_states")
    t = shape("Unet", "in", "timestep")
    z, image = shape("VAEDecoder", "in", "z"), shape("VAEDecoder", "out", "image")
    if ids is not None and (len(ids) != 2 or ids[0] != 1):
        out.append(f"TextEncoder: input_ids must be (1, L), is {ids}")
    if ctx is not None and (len(ctx) != 4 or ctx[2] != 1):
        out.append(f"Unet: encoder_hidden_states must be (B, D, 1, L), is {ctx}")
    if sample is not None and (len(sample) != 4 or sample[0] not in (1, 2)):
        out.append(f"Unet: sample must be (B, C, h, w) with B 1 or 2, is {sample}")
    if sample is not None and t is not None and tuple(t) != (sample[0],):
        out.append(f"Unet: timestep must be ({sample[0]},), is {t}")
    if hidden and ctx and len(hidden) == 3 and len(ctx) == 4 and (hidden[1], hidden[2]) != (ctx[3], ctx[1]):
        out.append(f"TextEncoder last_hidden_state {hidden} does not fit Unet encoder_hidden_states {ctx}")
    if sample and z and tuple(z[1:]) != tuple(sample[1:]):
        out.append(f"VAEDecoder z {z} does not fit Unet sample {sample}")
    if image is not None and (len(image) != 4 or image[1] != 3):
        out.append(f"VAEDecoder: image must be (1, 3, H, W), is {image}")
    return out
