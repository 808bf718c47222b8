"""VGG-19 feature maps for DECA's ID-MRF loss (``relu3_2`` and ``relu4_2``), from weights given by path.

    loss: {type: DECADetailLoss, feature_net: {type: VGG19Features, weights: /path/vgg19.pdparams}}

The trunk is ``paddle.vision.models.vgg19``'s ``features`` (its parameter names, so Paddle's
ImageNet ``vgg19.pdparams`` loads as it is, read without running pickle code; a safetensors file
with the same names works too). No weights ship offline, so the ID-MRF term is off unless you
give them. Inputs are RGB in [0, 1], normalised with ImageNet's statistics as DECA's
``VGG19FeatLayer`` does.
"""
from __future__ import annotations

from typing import Dict

import paddle
import paddle.nn as nn

from ppengine.errors import ConfigError
from ppengine.registry import MODELS

# indices of the ReLUs after conv3_2 and conv4_2 in paddle.vision's vgg19().features
_TAPS = {"relu3_2": 13, "relu4_2": 22}


@MODELS.register()
class VGG19Features(nn.Layer):
    """VGG-19 up to ``relu4_2`` -> {'relu3_2': (N, 256, H/4, W/4), 'relu4_2': (N, 512, H/8, W/8)}.

    Args:
        weights: ``vgg19.pdparams`` (Paddle's ImageNet weights) or a safetensors file with
            ``features.*`` names; required (random VGG features make no perceptual loss).
    """

    def __init__(self, weights: str = None):
        super().__init__()
        from paddle.vision.models import vgg

        if not weights:
            raise ConfigError("model.loss.feature_net.weights: VGG19Features needs VGG-19 ImageNet weights "
                              "(e.g. Paddle's vgg19.pdparams); none ship offline")
        full = vgg.make_layers(vgg.cfgs["E"])  # vgg19().features, without building the classifier
        self.features = nn.Sequential(*list(full.children())[:_TAPS["relu4_2"] + 1])
        from ppengine.checkpoint import check_state_match, read_weights

        arrays = {k: v for k, v in read_weights(str(weights)).items() if k.startswith("features.")}
        own = self.state_dict()
        check_state_match(own, arrays, str(weights), "VGG19Features (paddle.vision vgg19 features up to relu4_2)",
                          "Give VGG-19 weights with paddle.vision's names (features.0.weight, ...).", strict=False)
        missing = [k for k in own if k not in arrays]
        if missing:
            raise ConfigError(f"{weights}: no VGG-19 features weights ({', '.join(missing[:3])} ... missing)")
        self.set_state_dict({k: paddle.to_tensor(arrays[k]) for k in own})
        self.register_buffer("mean", paddle.to_tensor([0.485, 0.456, 0.406]).reshape([1, 3, 1, 1]), persistable=False)
        self.register_buffer("std", paddle.to_tensor([0.229, 0.224, 0.225]).reshape([1, 3, 1, 1]), persistable=False)

    def forward(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        x = (images - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            for name, j in _TAPS.items():
                if i == j:
                    out[name] = x
        return out
