"""Identity feature network for DECA's identity loss (pluggable; off unless configured).

DECA uses a VGGFace2 ResNet-50; it is not redistributable here, so the network is a Paddle
ResNet whose weights the user gives by path (safetensors or .pdparams converted from a face
recognition model). Without weights the loss would compare random features, so building it
without ``weights`` needs ``allow_random: true`` (used by tests only).

    loss: {type: DECALoss, id: 0.2, identity_net: {type: IdentityFeatureNet, weights: /path/fr.safetensors}}
"""
from __future__ import annotations

import os
from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppengine.errors import ConfigError, InputError
from ppengine.registry import MODELS


@MODELS.register()
class IdentityFeatureNet(nn.Layer):
    """images (B, 3, H, W) in [0, 1] -> L2-normalised identity features (B, feat_dim).

    Args:
        depth: ResNet depth (VGGFace2 models: 50).
        weights: path to the network's weights; required unless ``allow_random``.
        input_size: images are resized to this side first (VGGFace2: 224).
        allow_random: permit random weights (tests).
    """

    def __init__(self, depth: int = 50, weights: Optional[str] = None, input_size: int = 224,
                 allow_random: bool = False):
        super().__init__()
        from paddle.vision.models import resnet

        if not weights and not allow_random:
            raise ConfigError("model.loss.identity_net: an identity network needs weights: /path/to/face_"
                              "recognition.safetensors (a VGGFace2-style ResNet); or remove identity_net to "
                              "turn the identity loss off")
        block = resnet.BasicBlock if depth in (18, 34) else resnet.BottleneckBlock
        self.net = resnet.ResNet(block, depth, num_classes=0, with_pool=True)
        self.input_size = int(input_size)
        if weights:
            if not os.path.isfile(weights):
                raise InputError(f"identity network weights {weights!r} not found")
            from ppengine.checkpoint import read_weights  # safetensors, or .pdparams without running pickle code

            state = {k: paddle.to_tensor(v) for k, v in read_weights(weights).items()}
            state = {k[4:] if k.startswith("net.") else k: v for k, v in state.items()}
            self.net.set_state_dict(state)
        self.register_buffer("mean", paddle.to_tensor([0.485, 0.456, 0.406]).reshape([1, 3, 1, 1]), persistable=False)
        self.register_buffer("std", paddle.to_tensor([0.229, 0.224, 0.225]).reshape([1, 3, 1, 1]), persistable=False)

    def forward(self, images: paddle.Tensor) -> paddle.Tensor:
        x = F.interpolate(images, size=[self.input_size, self.input_size], mode="bilinear")
        f = self.net((x - self.mean) / self.std).flatten(1)
        return F.normalize(f, axis=-1)
