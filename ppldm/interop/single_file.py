"""Stable Diffusion single-file checkpoints: the original CompVis / Stability key names.

    parts = load_single_file("v2-1_512-ema-pruned.safetensors")            # shapes tell the rest
    parts = load_single_file("sd.ckpt", original_config="v2-inference-v.yaml")
    parts.unet, parts.vae, parts.text_encoder, parts.settings              # ppldm UNet / AutoencoderKL, CLIP
    save_single_file(sd_model, "mine.safetensors")                          # the reverse

A single file holds the three networks under their original prefixes:

* ``model.diffusion_model.*``: the ``openaimodel.UNetModel`` (``input_blocks`` / ``middle_block``
  / ``output_blocks``), mapped to the diffusers names :class:`ppldm.models.UNet` uses;
* ``first_stage_model.*``: the KL autoencoder (``encoder.down.{i}.block.{j}``, ``mid.attn_1`` with
  1x1-conv q/k/v, ``decoder.up.{i}`` numbered from the lowest resolution);
* ``cond_stage_model.model.*``: OpenCLIP's text tower (SD 2.x: ``transformer.resblocks.{i}`` with
  a fused ``attn.in_proj_weight``; SD uses the *penultimate* block's output, so the last block
  is dropped), or ``cond_stage_model.transformer.*``: transformers' CLIP text model (SD 1.x).

The networks' settings come from the original inference YAML (``v2-inference.yaml``,
``v2-inference-v.yaml``, ``v1-inference.yaml``) when given, else from the tensor shapes; what
shapes cannot tell follows SD's own rules: attention heads of 64 channels with linear
projections (SD 2.x) or 8 heads with 1x1-conv projections (SD 1.x), text heads of 64 channels,
GELU for OpenCLIP and quick-GELU for CLIP, and the prediction type of the ppldm config
(``v`` for SD 2.1 768, ``eps`` for 2.1-base: only the YAML's ``parameterization`` says so).
Files are ``.safetensors`` (read without pickle) or ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``
(read with :func:`ppengine.safe_load.load_torch_checkpoint`: no code from the file runs).

:func:`save_single_file` writes a ``.safetensors`` file in these names (PyTorch layout) and its
inference YAML beside it, refusing (unless ``strict=False``) settings SD cannot express; an SD
2.x-style text encoder is written as OpenCLIP with one extra all-zero residual block, which is
the identity, so readers that use the penultimate block (as SD does) or the last one both get
this model's text features.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ppengine.errors import CheckpointError, InputError

from ..models import AutoencoderKL, UNet
from .weights import linear_weight_names, load_arrays_into, to_paddle_layout

UNET = "model.diffusion_model."
VAE = "first_stage_model."
OPENCLIP = "cond_stage_model.model."
CLIP = "cond_stage_model.transformer."
TORCH_EXTS = (".ckpt", ".pt", ".pth", ".bin", ".tar")

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_UNET_FIXED = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
               "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
_VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


@dataclass
class SingleFile:
    """What :func:`load_single_file` read: the three networks and the settings it used."""

    unet: UNet
    vae: AutoencoderKL
    text_encoder: object = None
    settings: Dict = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)  # file keys no network uses (EMA copies, schedule buffers)


# --------------------------------------------------------------------------- reading files
def read_single_file(path: str) -> Dict[str, np.ndarray]:
    """The flat name -> array dict of a ``.safetensors`` or torch checkpoint (``state_dict`` unwrapped)."""
    return _read(path)[0]


def _read(path: str):
    """-> (arrays, safetensors metadata or {})."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: checkpoint not found. Give the path of a Stable Diffusion single file "
                         "(.safetensors or .ckpt), e.g. v2-1_512-ema-pruned.safetensors")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="np") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot be read as safetensors ({' '.join(str(e).split())}); the file "
                                  "may be truncated. Download it again.") from None
    if not path.endswith(TORCH_EXTS):
        raise InputError(f"{path}: unknown checkpoint type; expected .safetensors or one of {', '.join(TORCH_EXTS)}")
    from ppengine.safe_load import load_torch_checkpoint, torch_state_dict

    return torch_state_dict(load_torch_checkpoint(path), path), {}


def _sub(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- UNet names
def _unet_layout(model: UNet):
    c = model.config
    n = len(c["block_channels"])
    attn = [2 ** i in c["attention_resolutions"] for i in range(n)]
    return n, int(c["layers_per_block"]), attn


def unet_key_to_original(key: str, levels: int, layers: int, attn: List[bool]) -> str:
    """A diffusers-named UNet parameter -> its ``openaimodel.UNetModel`` name (without prefix)."""
    for a, b in _UNET_FIXED.items():
        if key.startswith(a):
            return b + key[len(a):]
    step = layers + 1
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "resnets":
            rest = _rename(rest, _RESNET)
        if side == "down":
            if kind == "downsamplers":
                return f"input_blocks.{step * (i + 1)}.0.op." + rest[len("conv."):]
            return f"input_blocks.{step * i + j + 1}.{0 if kind == 'resnets' else 1}.{rest}"
        if kind == "upsamplers":
            up_attn = attn[levels - 1 - i]
            return f"output_blocks.{step * i + layers}.{2 if up_attn else 1}.{rest}"
        return f"output_blocks.{step * i + j}.{0 if kind == 'resnets' else 1}.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        if m.group(1) == "resnets":
            return f"middle_block.{2 * int(m.group(2))}.{_rename(m.group(3), _RESNET)}"
        return f"middle_block.1.{m.group(3)}"
    raise InputError(f"UNet parameter {key!r} has no Stable Diffusion name (class-conditional or "
                     "non-SD UNets cannot be written as an SD single file)")


def _rename(rest, pairs):
    for a, b in pairs:
        if rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


# --------------------------------------------------------------------------- VAE names
def vae_key_to_original(key: str, levels: int) -> str:
    """A diffusers-named AutoencoderKL parameter -> its ``ldm.models.autoencoder`` name."""
    key = key.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.*)", key)
    if m:
        i = int(m.group(1))
        mid = f"block.{m.group(3)}" if m.group(3) is not None else "downsample"
        return f"encoder.down.{i}.{mid}.{m.group(4)}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", key)
    if m:
        i = levels - 1 - int(m.group(1))
        mid = f"block.{m.group(3)}" if m.group(3) is not None else "upsample"
        return f"decoder.up.{i}.{mid}.{m.group(4)}"
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets\.(\d+)|attentions\.0)\.(.*)", key)
    if m:
        if m.group(3) is not None:
            return f"{m.group(1)}.mid.block_{int(m.group(3)) + 1}.{m.group(4)}"
        return f"{m.group(1)}.mid.attn_1." + _vae_attn(m.group(4))
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv


def _vae_attn(rest):
    for a, b in _VAE_ATTN:
        if rest.startswith(a):
            return b + rest[len(a):]
    return rest


# --------------------------------------------------------------------------- text encoder names
def _text_to_openclip(arrays: Dict[str, np.ndarray], extra_zero_block: bool) -> Dict[str, np.ndarray]:
    """transformers CLIP text names (PyTorch layout) -> OpenCLIP names."""
    out, qkv = {}, {}
    n_layers = 0
    for k, v in arrays.items():
        if k.endswith("position_ids"):
            continue
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            n_layers = max(n_layers, i + 1)
            p = f"transformer.resblocks.{i}."
            q = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
            if q:
                qkv.setdefault((i, q.group(2)), {})[q.group(1)] = v
                continue
            rest = _rename(rest, [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                                  ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")])
            out[p + rest] = v
            continue
        name = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                "text_model.embeddings.position_embedding.weight": "positional_embedding",
                "text_model.final_layer_norm.weight": "ln_final.weight",
                "text_model.final_layer_norm.bias": "ln_final.bias"}.get(k)
        if name is None:
            raise InputError(f"text encoder parameter {k!r} has no OpenCLIP name")
        out[name] = v
    for (i, kind), d in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = np.concatenate([d["q"], d["k"], d["v"]], 0)
    width = out["token_embedding.weight"].shape[1]
    if extra_zero_block:  # a residual block of zeros is the identity: penultimate == last
        src = f"transformer.resblocks.{n_layers - 1}."
        for k in [k for k in out if k.startswith(src)]:
            out[f"transformer.resblocks.{n_layers}." + k[len(src):]] = np.zeros_like(out[k])
    out["text_projection"] = np.eye(width, dtype=np.float32)  # unused by SD; OpenCLIP's layout
    out["logit_scale"] = np.asarray(math.log(100.0), dtype=np.float32)
    return out


def _openclip_to_text(arrays: Dict[str, np.ndarray], n_layers: int) -> Dict[str, np.ndarray]:
    """OpenCLIP text names -> transformers CLIP names (PyTorch layout), blocks >= n_layers dropped."""
    out = {}
    for k, v in arrays.items():
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            if i >= n_layers:
                continue
            p = f"text_model.encoder.layers.{i}."
            q = re.match(r"attn\.in_proj_(weight|bias)", rest)
            if q:
                for name, part in zip("qkv", np.split(v, 3, axis=0)):
                    out[f"{p}self_attn.{name}_proj.{q.group(1)}"] = part
                continue
            out[p + _rename(rest, [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                                   ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")])] = v
            continue
        name = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                "positional_embedding": "text_model.embeddings.position_embedding.weight",
                "ln_final.weight": "text_model.final_layer_norm.weight",
                "ln_final.bias": "text_model.final_layer_norm.bias"}.get(k)
        if name is not None:
            out[name] = v
    return out


# --------------------------------------------------------------------------- settings
def _yaml_settings(path: Optional[str]) -> Dict:
    if not path:
        return {}
    import yaml

    if not os.path.isfile(path):
        raise InputError(f"original_config {path!r} not found (the inference YAML, e.g. v2-inference-v.yaml)")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
        p = cfg["model"]["params"]
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not a Stable Diffusion inference YAML (model.params missing: {e})") from None
    u = (p.get("unet_config") or {}).get("params") or {}
    dd = ((p.get("first_stage_config") or {}).get("params") or {}).get("ddconfig") or {}
    cond = p.get("cond_stage_config") or {}
    out = {"prediction_type": "v" if p.get("parameterization") == "v" else "eps",
           "scale_factor": p.get("scale_factor"), "beta_start": p.get("linear_start"),
           "beta_end": p.get("linear_end"), "num_train_timesteps": p.get("timesteps"),
           "text_layer": (cond.get("params") or {}).get("layer")}
    if u:
        mult = u.get("channel_mult", [1, 2, 4, 4])
        ch = u["model_channels"]
        out["unet"] = dict(
            in_channels=u.get("in_channels", 4), out_channels=u.get("out_channels", 4),
            block_channels=[ch * m for m in mult], layers_per_block=u.get("num_res_blocks", 2),
            attention_resolutions=sorted(int(r) for r in u.get("attention_resolutions", [])),
            transformer_depth=u.get("transformer_depth", 1), context_dim=u.get("context_dim"),
            use_linear_projection=bool(u.get("use_linear_in_transformer", False)))
        if u.get("num_head_channels", -1) not in (-1, None):
            out["unet"].update(head_channels=u["num_head_channels"], num_heads=None)
        else:
            out["unet"].update(num_heads=u.get("num_heads", 8), head_channels=None)
    if dd:
        out["vae"] = dict(in_channels=dd.get("in_channels", 3), out_channels=dd.get("out_ch", 3),
                          block_channels=[dd["ch"] * m for m in dd.get("ch_mult", [1, 2, 4, 4])],
                          layers_per_block=dd.get("num_res_blocks", 2),
                          latent_channels=(p.get("first_stage_config", {}).get("params") or {}).get(
                              "embed_dim", dd.get("z_channels", 4)))
    return {k: v for k, v in out.items() if v is not None}


def _count(keys, pattern):
    ids = {int(m.group(1)) for k in keys for m in [re.match(pattern, k)] if m}
    return ids


def infer_unet_kwargs(sd: Dict[str, np.ndarray], source: str) -> Dict:
    """ppldm UNet kwargs from an ``openaimodel.UNetModel`` state dict (prefix removed)."""
    if "input_blocks.0.0.weight" not in sd:
        raise InputError(f"{source}: no {UNET}input_blocks.0.0.weight: not a Stable Diffusion checkpoint "
                         f"(found keys such as {sorted(sd)[:3]})")
    keys = list(sd)
    conv_in = sd["input_blocks.0.0.weight"]
    downs = sorted(_count(keys, r"input_blocks\.(\d+)\.0\.op\.weight"))
    n_inputs = max(_count(keys, r"input_blocks\.(\d+)\.")) + 1
    levels = len(downs) + 1
    step = downs[0] if downs else n_inputs  # (layers + 1)
    layers = step - 1
    block_channels, attn = [], []
    for i in range(levels):
        first = step * i + 1
        block_channels.append(int(sd[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        attn.append(f"input_blocks.{first}.1.proj_in.weight" in sd)
    proj = next((k for k in keys if k.endswith(".proj_in.weight")), None)
    linear = proj is not None and sd[proj].ndim == 2
    to_k = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
    depth = len(_count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")) or 1
    kw = dict(in_channels=int(conv_in.shape[1]), out_channels=int(sd["out.2.weight"].shape[0]),
              block_channels=block_channels, layers_per_block=layers,
              attention_resolutions=[2 ** i for i, a in enumerate(attn) if a], transformer_depth=depth,
              context_dim=int(sd[to_k].shape[1]) if to_k else None, use_linear_projection=linear)
    # heads are not in the shapes: SD 2.x (linear projections) uses 64-channel heads, SD 1.x 8 heads
    kw.update(head_channels=64, num_heads=None) if linear else kw.update(num_heads=8, head_channels=None)
    return kw


def infer_vae_kwargs(sd: Dict[str, np.ndarray], source: str) -> Dict:
    if "encoder.conv_in.weight" not in sd:
        raise InputError(f"{source}: no {VAE}encoder.conv_in.weight: the checkpoint has no SD autoencoder")
    keys = list(sd)
    levels = max(_count(keys, r"encoder\.down\.(\d+)\.")) + 1
    layers = max(_count(keys, r"encoder\.down\.0\.block\.(\d+)\.")) + 1
    chans = [int(sd[f"encoder.down.{i}.block.{layers - 1}.conv2.weight"].shape[0]) for i in range(levels)]
    return dict(in_channels=int(sd["encoder.conv_in.weight"].shape[1]), out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
                block_channels=chans, layers_per_block=layers, latent_channels=int(sd["post_quant_conv.weight"].shape[1]),
                mid_attention="encoder.mid.attn_1.q.weight" in sd)


# --------------------------------------------------------------------------- load / save
def _map_into(model, arrays: Dict[str, np.ndarray], to_original, source: str, what: str):
    """Load ``arrays`` (original names, PyTorch layout) into ``model`` through ``to_original``;
    returns the original names used."""
    own = model.state_dict()
    names = {k: to_original(k) for k in own}
    picked, missing = {}, []
    for k, orig in names.items():
        if orig in arrays:
            picked[k] = arrays[orig]
        else:
            missing.append(orig)
    if missing:
        extra = sorted(set(arrays) - set(names.values()))
        raise CheckpointError(
            f"{source}: the {what} does not match the settings it was built with: {len(missing)} missing "
            f"key(s) such as {missing[:4]}" + (f"; unexpected {extra[:4]}" if extra else "") +
            ". Give the checkpoint's own inference YAML with original_config=... if the shapes mislead.")
    load_arrays_into(model, to_paddle_layout(model, picked, "pt"), source)
    return set(names.values())


def load_single_file(path: str, original_config: Optional[str] = None, attention_type: str = "standard",
                     text_layer: Optional[str] = None) -> SingleFile:
    """Build ppldm's UNet, AutoencoderKL and (when present) the CLIP text encoder from an SD single file.

    Args:
        path: ``.safetensors`` or ``.ckpt`` (``.pt``/``.pth``/``.bin``) with the original key names.
        original_config: the original inference YAML; None infers the networks from the shapes.
        text_layer: ``penultimate`` (SD 2.x's default) or ``last``; None: the YAML's, else
            ``penultimate`` for OpenCLIP and ``last`` for CLIP.
    """
    arrays, meta = _read(path)
    settings = _yaml_settings(original_config)
    own = {k: json.loads(meta[f"ppldm.{k}"]) for k in ("unet", "vae", "text") if f"ppldm.{k}" in meta}
    unet_sd, vae_sd = _sub(arrays, UNET), _sub(arrays, VAE)
    ukw = settings.get("unet") or own.get("unet") or infer_unet_kwargs(unet_sd, path)
    unet = UNet(**ukw, attention_type=attention_type)
    n, layers, attn = _unet_layout(unet)
    used = {UNET + k for k in _map_into(unet, unet_sd, lambda k: unet_key_to_original(k, n, layers, attn), path,
                                        "UNet")}
    vkw = dict(settings.get("vae") or own.get("vae") or infer_vae_kwargs(vae_sd, path))
    vkw.setdefault("mid_attention", "encoder.mid.attn_1.q.weight" in vae_sd)
    vkw["scaling_factor"] = settings.get("scale_factor", vkw.get("scaling_factor", 0.18215))
    vae = AutoencoderKL(**vkw)
    nv = len(vae.config["block_channels"])
    used |= {VAE + k for k in _map_into(vae, vae_sd, lambda k: vae_key_to_original(k, nv), path, "autoencoder")}
    text, tinfo = _load_text(arrays, path, text_layer or settings.get("text_layer"), own.get("text") or {})
    if text is not None:
        prefix = OPENCLIP if tinfo["format"] == "openclip" else CLIP
        used |= {k for k in arrays if k.startswith(prefix)}
    ignored = sorted(set(arrays) - used)
    settings = dict(settings, unet=ukw, vae=vkw, text=tinfo)
    for m in (unet, vae) + ((text,) if text is not None else ()):
        m.eval()
    return SingleFile(unet, vae, text, settings, ignored)


def _load_text(arrays, path, layer, own):
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel

    oc, cl = _sub(arrays, OPENCLIP), _sub(arrays, CLIP)
    if oc:
        blocks = len(_count(oc, r"transformer\.resblocks\.(\d+)\."))
        layer = layer or "penultimate"
        if layer not in ("penultimate", "last"):
            raise InputError(f"text_layer must be 'penultimate' or 'last', got {layer!r}")
        n_layers = blocks - 1 if layer == "penultimate" else blocks
        tsd, act, fmt = _openclip_to_text(oc, n_layers), "gelu", "openclip"
    elif cl:
        tsd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in cl.items()
               if not k.endswith("position_ids")}
        n_layers = len(_count(tsd, r"text_model\.encoder\.layers\.(\d+)\."))
        act, fmt = "quick_gelu", "clip"
    else:
        return None, None
    tok = tsd["text_model.embeddings.token_embedding.weight"]
    width = int(tok.shape[1])
    heads = int(own.get("heads", max(1, width // 64)))
    act = own.get("hidden_act", act)
    cfg = CLIPTextConfig(vocab_size=int(tok.shape[0]), hidden_size=width,
                         intermediate_size=int(tsd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                         num_hidden_layers=n_layers, num_attention_heads=heads,
                         max_position_embeddings=int(tsd["text_model.embeddings.position_embedding.weight"].shape[0]),
                         hidden_act=act, layer_norm_eps=1e-5)
    model = CLIPTextModel(cfg)
    own = model.state_dict()
    tsd = {k: v for k, v in tsd.items() if k in own or not k.startswith("text_model.encoder.layers.")}
    load_arrays_into(model, to_paddle_layout(model, tsd, "pt"), path)
    return model, {"format": fmt, "layers": n_layers, "hidden_act": act, "heads": heads}


def _pt_arrays(model) -> Dict[str, np.ndarray]:
    """A Paddle model's state in PyTorch layout (Linear weights transposed)."""
    linear = linear_weight_names(model)
    out = {}
    for k, v in model.state_dict().items():
        a = np.asarray(v.numpy())
        out[k] = np.ascontiguousarray(a.T) if k in linear else a
    return out


def single_file_arrays(model, text_format: Optional[str] = None) -> Dict[str, np.ndarray]:
    """``model`` (a StableDiffusion, or anything with ``unet`` and ``vae`` / ``ae``) in SD names."""
    unet = getattr(model, "unet", None)
    vae = getattr(model, "vae", None) or getattr(model, "ae", None)
    if not isinstance(unet, UNet) or not isinstance(vae, AutoencoderKL):
        raise InputError("save_single_file: the model needs a ppldm UNet (.unet) and a KL autoencoder (.vae / .ae); "
                         "VQ autoencoders have no Stable Diffusion single-file form")
    n, layers, attn = _unet_layout(unet)
    out = {}
    for k, v in _pt_arrays(unet).items():
        out[UNET + unet_key_to_original(k, n, layers, attn)] = v
    nv = len(vae.config["block_channels"])
    for k, v in _pt_arrays(vae).items():
        name = vae_key_to_original(k, nv)
        if ".mid.attn_1." in name and name.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            v = v[:, :, None, None]  # SD's autoencoder attention uses 1x1 convs
        out[VAE + name] = v
    text = getattr(model, "text_encoder", None)
    if text is not None:
        tsd = _pt_arrays(text)
        if text_format is None:
            text_format = "clip" if getattr(text.config, "hidden_act", "gelu") == "quick_gelu" else "openclip"
        if text_format == "openclip":
            for k, v in _text_to_openclip(tsd, extra_zero_block=True).items():
                out[OPENCLIP + k] = v
        elif text_format == "clip":
            for k, v in tsd.items():
                out[CLIP + k] = v
            width = tsd["text_model.embeddings.position_embedding.weight"].shape[0]
            out[CLIP + "text_model.embeddings.position_ids"] = np.arange(width, dtype=np.int64)[None]
        else:
            raise InputError(f"text_format must be 'openclip' (SD 2.x) or 'clip' (SD 1.x), got {text_format!r}")
    return out


def _scale_factor(model, vae) -> float:
    """The latent scale: a LatentDiffusion's (fitted) LatentScale, else the autoencoder's."""
    scale = getattr(model, "scale", None)
    if scale is not None and hasattr(scale, "scale_factor"):
        return float(np.asarray(scale.scale_factor.numpy()).reshape(-1)[0])
    return float(getattr(vae, "scaling_factor", 0.18215))


def sd_incompatibilities(model) -> List[str]:
    """Settings of ``model`` that Stable Diffusion's original code cannot express (empty: none)."""
    unet = getattr(model, "unet", None)
    vae = getattr(model, "vae", None) or getattr(model, "ae", None)
    bad = []
    u = unet.config
    for key, ok in (("position_encoding", None), ("num_classes", None), ("norm_groups", 32), ("norm_eps", 1e-5),
                    ("flip_sin_to_cos", True), ("freq_shift", 0)):
        if u.get(key) != ok:
            bad.append(f"unet.{key}={u.get(key)!r} (SD: {ok!r})")
    if any(ch % 32 for ch in u["block_channels"]):
        bad.append(f"unet.block_channels={u['block_channels']} (SD's GroupNorm(32) needs multiples of 32)")
    v = vae.config
    if v.get("norm_groups") != 32:
        bad.append(f"vae.norm_groups={v.get('norm_groups')!r} (SD: 32)")
    if not v.get("mid_attention", True):
        bad.append("vae.mid_attention=False (SD's autoencoder has mid.attn_1)")
    diff = getattr(model, "diffusion", None)
    if diff is not None and diff.config.get("beta_schedule") not in ("scaled_linear", "linear"):
        bad.append(f"diffusion.beta_schedule={diff.config.get('beta_schedule')!r} (SD: scaled_linear)")
    return bad


def original_config_for(model) -> Dict:
    """An inference YAML in the layout of Stability's ``v2-inference(-v).yaml`` for ``model``."""
    unet = model.unet
    vae = getattr(model, "vae", None) or getattr(model, "ae", None)
    u, v = unet.config, vae.config
    ch = u["block_channels"][0]
    up = {"image_size": 32, "in_channels": u["in_channels"] + u["concat_channels"],
          "out_channels": u["out_channels"], "model_channels": ch,
          "attention_resolutions": sorted(u["attention_resolutions"], reverse=True),
          "num_res_blocks": u["layers_per_block"], "channel_mult": [c // ch for c in u["block_channels"]],
          "use_spatial_transformer": True, "use_linear_in_transformer": bool(u["use_linear_projection"]),
          "transformer_depth": u["transformer_depth"], "context_dim": u["context_dim"], "legacy": False}
    if u["head_channels"]:
        up["num_head_channels"] = u["head_channels"]
    else:
        up["num_heads"] = u["num_heads"]
    bc = v["block_channels"]
    params = {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "first_stage_key": "jpg",
              "cond_stage_key": "txt", "image_size": 64, "channels": v["latent_channels"],
              "cond_stage_trainable": False, "conditioning_key": "crossattn",
              "scale_factor": _scale_factor(model, vae),
              "use_ema": False,
              "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": up},
              "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
                  "embed_dim": v["latent_channels"], "ddconfig": {
                      "double_z": True, "z_channels": v["latent_channels"], "resolution": 256,
                      "in_channels": v["in_channels"], "out_ch": v["out_channels"], "ch": bc[0],
                      "ch_mult": [c // bc[0] for c in bc], "num_res_blocks": v["layers_per_block"],
                      "attn_resolutions": [], "dropout": 0.0},
                  "lossconfig": {"target": "torch.nn.Identity"}}}}
    diff = getattr(model, "diffusion", None)
    if diff is not None:
        d = diff.config
        params.update(linear_start=float(d["beta_start"]), linear_end=float(d["beta_end"]),
                      timesteps=int(d["num_train_timesteps"]))
        if d["beta_schedule"] == "linear":  # diffusers' linear = ldm's sqrt_linear
            params["beta_schedule"] = "sqrt_linear"
        if d["prediction_type"] == "v":
            params["parameterization"] = "v"
    text = getattr(model, "text_encoder", None)
    if text is not None:
        if getattr(text.config, "hidden_act", "gelu") == "quick_gelu":
            params["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
        else:
            params["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                                           "params": {"freeze": True, "layer": "penultimate"}}
    return {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                      "params": params}}


def save_single_file(model, path: str, text_format: Optional[str] = None, strict: bool = True,
                     write_yaml: bool = True) -> str:
    """Write ``model`` as an SD single file (``.safetensors``, original key names, PyTorch layout),
    atomically, with its inference YAML beside it (``<name>.yaml``, Stability's layout: the file
    SD tools look for next to a checkpoint).

    ``text_format``: ``openclip`` (SD 2.x) / ``clip`` (SD 1.x); default from the text encoder's
    activation (GELU -> OpenCLIP, quick-GELU -> CLIP). ``strict``: refuse models with settings SD's
    code cannot express (:func:`sd_incompatibilities`); with ``strict=False`` they are written all the
    same and only ppldm reads them back exactly (their settings travel in the file's metadata).
    """
    import yaml
    from safetensors.numpy import save

    from ppengine.checkpoint import atomic_write_bytes

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise InputError(f"save_single_file: {path!r}: write a .safetensors file (it needs no pickle and every "
                         "SD tool reads it)")
    arrays = {k: np.ascontiguousarray(v) for k, v in single_file_arrays(model, text_format).items()}
    bad = sd_incompatibilities(model)
    if bad and strict:
        raise InputError("save_single_file: this model has settings Stable Diffusion's code cannot express: "
                         + "; ".join(bad) + ". Pass strict=False to write it for ppldm only.")
    vae = getattr(model, "vae", None) or getattr(model, "ae", None)
    meta = {"format": "pt", "ppldm.unet": json.dumps({k: v for k, v in model.unet.config.items()
                                                      if k != "attention_type"}),
            "ppldm.vae": json.dumps(dict(vae.config, scaling_factor=_scale_factor(model, vae)))}
    text = getattr(model, "text_encoder", None)
    if text is not None:
        meta["ppldm.text"] = json.dumps({"heads": int(text.config.num_attention_heads),
                                         "hidden_act": text.config.hidden_act})
    data = save(arrays, metadata=meta)  # everything is built before anything is written
    yml = yaml.safe_dump(original_config_for(model), sort_keys=False).encode() if write_yaml else None
    atomic_write_bytes(path, data)
    if yml is not None:
        atomic_write_bytes(path[: -len(".safetensors")] + ".yaml", yml)
    return path
