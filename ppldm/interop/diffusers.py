"""Load and save ppldm UNet / autoencoders as diffusers / ppdiffusers ``save_pretrained`` folders.

    unet = ppldm.interop.load_unet("stable-diffusion-2-1/unet")      # or the pipeline folder
    vae = ppldm.interop.load_autoencoder("stable-diffusion-2-1/vae")
    ppldm.interop.save_unet(unet, "out/unet")                         # diffusers layout (default)
    ppldm.interop.save_unet(unet, "out/unet", layout="pd")            # ppdiffusers' Paddle layout

Parameter names are shared, so loading is a rename of nothing: the config is translated,
PyTorch-layout Linear weights are transposed, and any missing / unexpected key or shape
mismatch is a :class:`ppengine.errors.CheckpointError` that lists them.
"""
from __future__ import annotations

import os

from ppengine.errors import InputError

from ..models import AutoencoderKL, UNet, VQModel
from .weights import load_arrays_into, read_config, read_folder_weights, to_paddle_layout, write_folder

DIFFUSERS_VERSION = "0.29.0"


def _resolve(folder: str, sub: str) -> str:
    if not os.path.isdir(folder):
        raise InputError(f"{folder!r} is not a folder. Give the folder written by save_pretrained "
                         f"(holding config.json and the weights), or a pipeline folder with {sub}/.")
    if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, sub)):
        return os.path.join(folder, sub)
    return folder


def _unsupported(folder, key, value, supported):
    raise InputError(f"{folder}/config.json: {key}={value!r} is not supported by ppldm "
                     f"(supported: {supported})")


def _int_or_list(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def unet_kwargs_from_diffusers(cfg: dict, folder: str = "") -> dict:
    """Translate a diffusers ``UNet2DConditionModel`` config into :class:`ppldm.models.UNet` kwargs."""
    down = list(cfg.get("down_block_types", []))
    up = list(cfg.get("up_block_types", []))
    for t in down:
        if t not in ("CrossAttnDownBlock2D", "DownBlock2D"):
            _unsupported(folder, "down_block_types", t, "CrossAttnDownBlock2D, DownBlock2D")
    expect_up = ["CrossAttnUpBlock2D" if t == "CrossAttnDownBlock2D" else "UpBlock2D" for t in reversed(down)]
    if up != expect_up:
        _unsupported(folder, "up_block_types", up, f"the mirror of down_block_types: {expect_up}")
    checks = {"mid_block_type": ("UNetMidBlock2DCrossAttn",), "act_fn": ("silu",),
              "center_input_sample": (False,), "class_embed_type": (None,), "addition_embed_type": (None,),
              "time_embedding_type": ("positional",), "resnet_time_scale_shift": ("default",),
              "only_cross_attention": (False,), "dual_cross_attention": (False,),
              "encoder_hid_dim": (None,), "time_cond_proj_dim": (None,), "conv_in_kernel": (3,),
              "conv_out_kernel": (3,), "downsample_padding": (1,), "mid_block_scale_factor": (1, 1.0)}
    for k, ok in checks.items():
        if k in cfg and cfg[k] not in ok:
            _unsupported(folder, k, cfg[k], ok)
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    cross = cfg.get("cross_attention_dim", 1280)
    if isinstance(cross, (list, tuple)):
        if len(set(cross)) != 1:
            _unsupported(folder, "cross_attention_dim", cross, "one value for all levels")
        cross = cross[0]
    in_ch, out_ch = cfg.get("in_channels", 4), cfg.get("out_channels", 4)
    concat = max(0, in_ch - out_ch)
    return dict(
        in_channels=in_ch - concat, out_channels=out_ch, concat_channels=concat,
        block_channels=list(cfg.get("block_out_channels", (320, 640, 1280, 1280))),
        layers_per_block=cfg.get("layers_per_block", 2),
        attention_resolutions=[2 ** i for i, t in enumerate(down) if t.startswith("CrossAttn")],
        num_heads=list(heads) if isinstance(heads, (list, tuple)) else heads, head_channels=None,
        transformer_depth=_int_or_list(cfg.get("transformer_layers_per_block", 1)),
        context_dim=cross, use_linear_projection=bool(cfg.get("use_linear_projection", False)),
        num_classes=cfg.get("num_class_embeds"), norm_groups=cfg.get("norm_num_groups", 32),
        norm_eps=cfg.get("norm_eps", 1e-5), flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
        freq_shift=cfg.get("freq_shift", 0))


def unet_config_to_diffusers(model: UNet) -> dict:
    """A diffusers ``UNet2DConditionModel`` config.json for ``model``."""
    c = model.config
    n = len(c["block_channels"])
    attn = [2 ** i in c["attention_resolutions"] for i in range(n)]
    if c["head_channels"]:
        heads = [ch // c["head_channels"] for ch in c["block_channels"]]
    else:
        heads = c["num_heads"]
    if c["context_dim"] is None:
        raise InputError("save_unet: diffusers' UNet2DConditionModel needs a cross_attention_dim; "
                         "this UNet has context_dim=None")
    depth = c["transformer_depth"]
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": 64, "in_channels": c["in_channels"] + c["concat_channels"],
        "out_channels": c["out_channels"], "center_input_sample": False,
        "flip_sin_to_cos": c["flip_sin_to_cos"], "freq_shift": c["freq_shift"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "only_cross_attention": False, "block_out_channels": list(c["block_channels"]),
        "layers_per_block": c["layers_per_block"], "downsample_padding": 1, "mid_block_scale_factor": 1,
        "act_fn": "silu", "norm_num_groups": c["norm_groups"], "norm_eps": c["norm_eps"],
        "cross_attention_dim": c["context_dim"],
        "transformer_layers_per_block": list(depth) if isinstance(depth, (list, tuple)) else depth,
        "attention_head_dim": heads, "num_attention_heads": None,
        "use_linear_projection": c["use_linear_projection"], "num_class_embeds": c["num_classes"],
        "class_embed_type": None, "upcast_attention": False, "resnet_time_scale_shift": "default",
    }


def load_unet(folder: str, attention_type: str = "standard", dtype: str = "float32", variant: str = None) -> UNet:
    """Build a :class:`ppldm.models.UNet` from a diffusers / ppdiffusers ``UNet2DConditionModel`` folder
    (or a Stable Diffusion pipeline folder, whose ``unet/`` is used).

    ``variant="fp16"`` reads ``diffusion_pytorch_model.fp16.safetensors``; weights are cast to ``dtype``.
    """
    folder = _resolve(folder, "unet")
    cfg = read_config(folder)
    cls = cfg.get("_class_name", "UNet2DConditionModel")
    if cls != "UNet2DConditionModel":
        raise InputError(f"{folder}/config.json describes a {cls}, not a UNet2DConditionModel")
    model = UNet(**unet_kwargs_from_diffusers(cfg, folder), attention_type=attention_type)
    arrays, layout, path = read_folder_weights(folder, variant)
    load_arrays_into(model, to_paddle_layout(model, arrays, layout), path, dtype)
    model.eval()
    return model


def save_unet(model: UNet, folder: str, layout: str = "pt") -> str:
    """Write ``model`` as a folder diffusers (``layout="pt"``) or ppdiffusers (``"pd"``) loads
    with ``UNet2DConditionModel.from_pretrained``."""
    return write_folder(model, folder, unet_config_to_diffusers(model), layout)


def _vae_kwargs_from_diffusers(cfg: dict, folder: str) -> dict:
    for t in cfg.get("down_block_types", []):
        if t != "DownEncoderBlock2D":
            _unsupported(folder, "down_block_types", t, "DownEncoderBlock2D")
    for t in cfg.get("up_block_types", []):
        if t != "UpDecoderBlock2D":
            _unsupported(folder, "up_block_types", t, "UpDecoderBlock2D")
    for k, ok in {"act_fn": ("silu",), "use_quant_conv": (True,), "use_post_quant_conv": (True,),
                  "norm_type": ("group",)}.items():
        if k in cfg and cfg[k] not in ok:
            _unsupported(folder, k, cfg[k], ok)
    return dict(in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
                block_channels=list(cfg.get("block_out_channels", (64,))),
                layers_per_block=cfg.get("layers_per_block", 1), latent_channels=cfg.get("latent_channels", 4),
                norm_groups=cfg.get("norm_num_groups", 32),
                mid_attention=cfg.get("mid_block_add_attention", True))


def autoencoder_config_to_diffusers(model) -> dict:
    c = model.config
    n = len(c["block_channels"])
    out = {"_diffusers_version": DIFFUSERS_VERSION, "in_channels": c["in_channels"],
           "out_channels": c["out_channels"], "down_block_types": ["DownEncoderBlock2D"] * n,
           "up_block_types": ["UpDecoderBlock2D"] * n, "block_out_channels": list(c["block_channels"]),
           "layers_per_block": c["layers_per_block"], "act_fn": "silu", "latent_channels": c["latent_channels"],
           "norm_num_groups": c["norm_groups"], "sample_size": 32, "scaling_factor": c["scaling_factor"],
           "mid_block_add_attention": c["mid_attention"]}
    if isinstance(model, VQModel):
        out.update({"_class_name": "VQModel", "num_vq_embeddings": c["num_codes"], "vq_embed_dim": c["embed_dim"]})
    else:
        out.update({"_class_name": "AutoencoderKL"})
    return out


def load_autoencoder(folder: str, dtype: str = "float32", variant: str = None):
    """Build a :class:`ppldm.models.AutoencoderKL` (or :class:`VQModel`) from a diffusers / ppdiffusers
    ``AutoencoderKL`` / ``VQModel`` folder (or a pipeline folder, whose ``vae/`` is used)."""
    folder = _resolve(folder, "vae")
    cfg = read_config(folder)
    cls = cfg.get("_class_name", "AutoencoderKL")
    kw = _vae_kwargs_from_diffusers(cfg, folder)
    if cls == "AutoencoderKL":
        model = AutoencoderKL(**kw, scaling_factor=cfg.get("scaling_factor", 0.18215))
    elif cls == "VQModel":
        model = VQModel(**kw, embed_dim=cfg.get("vq_embed_dim") or kw["latent_channels"],
                        num_codes=cfg.get("num_vq_embeddings", 256), scaling_factor=cfg.get("scaling_factor", 1.0))
    else:
        raise InputError(f"{folder}/config.json describes a {cls}; load_autoencoder reads AutoencoderKL or VQModel")
    arrays, layout, path = read_folder_weights(folder, variant)
    load_arrays_into(model, to_paddle_layout(model, arrays, layout), path, dtype)
    model.eval()
    return model


def save_autoencoder(model, folder: str, layout: str = "pt") -> str:
    """Write an AutoencoderKL / VQModel as a diffusers (``"pt"``) or ppdiffusers (``"pd"``) folder."""
    return write_folder(model, folder, autoencoder_config_to_diffusers(model), layout)
