"""Sampling through exported graphs: the model's own sampling code (conditioning, scheduler,
guidance, decoding) with its networks swapped for their exported graphs on onnxruntime or Paddle
Inference (:class:`ppengine.export.runtime.ExportedGraphs`).

    graphs = ExportedGraphs("output/export/digits", backend="onnxruntime")
    with exported_networks(model, graphs):
        images = model.generate({"label": labels}, seed=0)      # the same call, the graphs run

``ensure_export(model, cfg)`` exports the model once into a cache folder keyed by its weights and
config (``~/.cache/ppdigitalhuman/export/<type>-<hash>``) and returns that folder.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn

from ppengine.errors import InputError

BACKENDS = ("paddle", "onnxruntime", "paddle-inference")


def _np(x) -> np.ndarray:
    return x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x)


class GraphUNet(nn.Layer):
    """Called like :class:`ppldm.models.UNet` (``x, t, context, class_labels, concat``)."""

    def __init__(self, graphs, unet):
        super().__init__()
        self.graphs = graphs
        for k in ("in_channels", "out_channels", "concat_channels", "context_dim", "downsample_factor", "config",
                  "num_levels"):
            if hasattr(unet, k):
                object.__setattr__(self, k, getattr(unet, k))

    def forward(self, x, t, context=None, class_labels=None, concat=None):
        x = _np(x)
        t = np.broadcast_to(_np(t).astype(np.float32).reshape(-1), (x.shape[0],))
        feeds = {"sample": x, "timestep": np.ascontiguousarray(t)}
        if context is not None:
            feeds["encoder_hidden_states"] = np.ascontiguousarray(_np(context).transpose(0, 2, 1)[:, :, None, :])
        if concat is not None:
            feeds["concat"] = _np(concat)
        return paddle.to_tensor(self.graphs.run("unet", feeds)["noise_pred"])


class GraphAutoencoder(nn.Layer):
    """``encode`` / ``decode`` of a KL or VQ first stage through the vae graphs."""

    def __init__(self, graphs, ae, kind: str):
        super().__init__()
        self.graphs, self.kind = graphs, kind
        for k in ("config", "downsample_factor", "latent_channels", "scaling_factor"):
            if hasattr(ae, k):
                object.__setattr__(self, k, getattr(ae, k))

    def encode(self, x):
        from ..models.autoencoder_blocks import DiagonalGaussian

        moments = paddle.to_tensor(self.graphs.run("vae_encoder", {"x": _np(x)})["latent"])
        return DiagonalGaussian(moments) if self.kind == "kl" else moments

    def decode(self, z):
        return paddle.to_tensor(self.graphs.run("vae_decoder", {"z": _np(z)})["image"])


class GraphConditioner(nn.Layer):
    """A ppldm conditioner whose network runs as its graph (the preprocessing stays the original's)."""

    def __init__(self, graphs, cond, component: str):
        super().__init__()
        self.graphs, self.component = graphs, component
        object.__setattr__(self, "original", cond)
        self.key, self.out_dim = cond.key, cond.out_dim

    def null(self, n):
        return self.original.null(n)

    def apply_drop(self, values, drop):
        return self.original.apply_drop(values, drop)

    def forward(self, values, drop=None):
        from ..export import graph_feeds

        if drop is not None and np.any(drop):
            values = self.original.apply_drop(values, np.asarray(drop, bool))
        out = self.graphs.run(self.component, graph_feeds(self.original, values))
        return paddle.to_tensor(next(iter(out.values())))


class GraphCLIPText(nn.Layer):
    """Stable Diffusion's text encoder, called as ``text_encoder(ids)[0]``."""

    def __init__(self, graphs):
        super().__init__()
        self.graphs = graphs

    def forward(self, input_ids):
        out = self.graphs.run("text_encoder", {"input_ids": _np(input_ids).astype(np.float32)})
        return (paddle.to_tensor(out["last_hidden_state"]), paddle.to_tensor(out["pooled_outputs"]))


def _swaps(model, graphs) -> dict:
    kind = type(model).__name__
    swaps = {"unet": GraphUNet(graphs, model.unet)}
    if kind == "LatentDiffusion":
        if model.ae_kind != "identity":
            swaps["ae"] = GraphAutoencoder(graphs, model.ae, model.ae_kind)
        if model.conditioner is not None:
            name = next(n for n in ("text_encoder", "class_embedder", "layout") if n in graphs.manifest["components"])
            swaps["conditioner"] = GraphConditioner(graphs, model.conditioner, name)
    elif kind == "StableDiffusion":
        swaps["vae"] = GraphAutoencoder(graphs, model.vae, "kl")
        if model.text_encoder is not None:
            swaps["text_encoder"] = GraphCLIPText(graphs)
    else:
        raise InputError(f"{kind}: sampling through exported graphs is for LatentDiffusion / StableDiffusion models")
    missing = [n for n in ("unet",) + (("vae_decoder",) if "ae" in swaps or "vae" in swaps else ())
               if n not in graphs.manifest["components"]]
    if missing:
        raise InputError(f"{graphs.folder}: the export lacks {', '.join(missing)}; export every component "
                         "(tools/export.py --component all)")
    return swaps


@contextlib.contextmanager
def exported_networks(model, graphs):
    """Inside the block ``model``'s UNet, first stage and conditioner run as ``graphs``."""
    swaps = _swaps(model, graphs)
    saved = {k: getattr(model, k) for k in swaps}
    try:
        for k, v in swaps.items():
            setattr(model, k, v)
        yield model
    finally:
        for k, v in saved.items():
            setattr(model, k, v)


def ensure_export(model, cfg, export_dir: Optional[str] = None, log=print) -> str:
    """The export folder to sample from: ``export_dir`` when given (it must exist), else the cache
    folder of these weights and config, exported there (Paddle + ONNX, checked) the first time."""
    from ppengine.export import export
    from ppengine.export.runtime import export_cache_dir

    if export_dir:
        if not os.path.isfile(os.path.join(export_dir, "manifest.json")):
            raise InputError(f"--export-dir {export_dir!r} holds no manifest.json: export first "
                             "(python tools/export.py ... --target onnx paddle --output DIR)")
        return export_dir
    folder = export_cache_dir(model, cfg)
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        log(f"exporting the model once into {folder} (Paddle + ONNX, checked)")
        export(model, cfg, folder, targets=["paddle", "onnx"], log=lambda s: None)
    return folder
