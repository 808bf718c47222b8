"""DECA's coarse image encoder: a Paddle ResNet trunk and an MLP head regressing FLAME codes.

    enc = ResNetEncoder({"shape": 100, "tex": 50, "exp": 50, "pose": 6, "cam": 3, "light": 27}, depth=18)
    codes = enc(images)          # images (B, 3, H, W) in [0, 1]
    codes["shape"]               # (B, 100); codes["light"] (B, 9, 3); codes["cam"] (B, 3)
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict

import numpy as np
import paddle
import paddle.nn as nn

from ppengine.errors import ConfigError

_DEPTHS = {10: "basic", 18: "basic", 34: "basic", 50: "bottleneck", 101: "bottleneck", 152: "bottleneck"}
_POOLS = ("avg", "flatten")


def resnet_trunk(depth: int, width: int = 64) -> nn.Layer:
    """A ResNet trunk (no pooling, no classifier) built from ``paddle.vision``'s blocks.

    ``width`` is the first stage's channel count (stages: width x 1, 2, 4, 8). With 64 this is
    ``paddle.vision.models.ResNet(..., num_classes=0, with_pool=False)`` itself, so ImageNet
    weights load by name; narrower trunks (e.g. 16) cost about ``(64 / width)^2`` times less
    and are what a CPU run can afford. ``depth`` 10 is ResNet-18 with one basic block per stage
    instead of two (about 0.6x its compute), which ``paddle.vision`` does not list.
    """
    from paddle.vision.models import resnet

    block = resnet.BasicBlock if _DEPTHS[depth] == "basic" else resnet.BottleneckBlock
    net = resnet.ResNet(block, 18 if depth == 10 else depth, num_classes=0, with_pool=False)
    if width == 64 and depth != 10:
        return net
    # Same layout and parameter names as paddle's ResNet, other channel counts.
    net.inplanes = width
    net.conv1 = nn.Conv2D(3, width, kernel_size=7, stride=2, padding=3, bias_attr=False)
    net.bn1 = nn.BatchNorm2D(width)
    counts = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    for i, n in enumerate(counts):
        setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2 ** i, n, stride=1 if i == 0 else 2))
    return net

# ImageNet statistics: the usual input normalisation for ResNet trunks (so ImageNet weights,
# given by path, work as-is).
_MEAN = [0.485, 0.456, 0.406]
_STD = [0.229, 0.224, 0.225]


class ResNetEncoder(nn.Layer):
    """ResNet (``paddle.vision.models.resnet``) + MLP head -> named parameter codes.

    Args:
        code_sizes: ordered name -> size, e.g. DECA's shape 100, tex 50, exp 50, pose 6, cam 3,
            light 27 ('light' is returned reshaped to (B, 9, 3): 9 SH coefficients per RGB).
        depth: ResNet depth, one of 10, 18, 34, 50, 101, 152 (DECA: 50; 10 or 18 on CPU).
        hidden: width of the MLP head (DECA: 1024).
        init_scale: the final layer's weights are scaled by this factor so training starts
            near the mean face (codes ~ 0) instead of at random FLAME parameters.
        cam_init: camera (s, tx, ty) the encoder predicts at initialisation (added as a bias).
        light_init: (27,) light code at initialisation (e.g. a white ambient light), or None.
        pretrained: optional path to ResNet trunk weights (.pdparams / safetensors).
        width: channels of the first ResNet stage (64 = the standard ResNet; 16 for CPU runs).
        pool: 'avg' (global average pooling, as DECA) or 'flatten' (the last feature map is
            flattened, keeping where things are: learns face geometry from far fewer images;
            needs a fixed ``image_size``).
        image_size: input side (only needed for ``pool='flatten'``).
        aux_channels: if > 0, a 1x1 convolution on the stride-8 features (after the second
            stage) predicts a dense map of this many channels, returned in training as
            ``out['aux_geometry']`` (B, aux_channels, H/8, W/8) (DECA's ``loss.geometry``).
    """

    def __init__(self, code_sizes: Dict[str, int], depth: int = 18, hidden: int = 512,
                 init_scale: float = 0.1, cam_init=(8.0, 0.0, 0.0), light_init=None, pretrained: str = None,
                 width: int = 64, pool: str = "avg", image_size: int = 224, aux_channels: int = 0):
        super().__init__()
        if depth not in _DEPTHS:
            raise ConfigError(f"model.encoder_depth: ResNet depth {depth} is not available; "
                              f"use one of {sorted(_DEPTHS)}")
        if pool not in _POOLS:
            raise ConfigError(f"model.encoder_pool: {pool!r} is not one of {list(_POOLS)}")
        if int(width) < 4:
            raise ConfigError(f"model.encoder_width: {width} is too small; use 16..64")
        expansion = 1 if _DEPTHS[depth] == "basic" else 4
        self.code_sizes = OrderedDict((k, int(v)) for k, v in code_sizes.items())
        self.backbone = resnet_trunk(depth, int(width))
        self.pool = pool
        feat = 8 * int(width) * expansion
        if pool == "flatten":
            side = -(-int(image_size) // 32)  # the trunk's output side (stride 32, rounded up)
            feat *= side * side
        out = sum(self.code_sizes.values())
        self.head = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(), nn.Linear(hidden, out))
        self.aux_head = nn.Conv2D(2 * int(width) * expansion, int(aux_channels), 1) if aux_channels > 0 else None
        last = self.head[2]
        with paddle.no_grad():
            last.weight.set_value(last.weight * init_scale)
            bias = paddle.zeros([out])
            if "cam" in self.code_sizes:
                start = self._offset("cam")
                n = min(3, self.code_sizes["cam"])
                bias[start:start + n] = paddle.to_tensor(list(cam_init)[:n], dtype="float32")
            if light_init is not None and "light" in self.code_sizes:
                start = self._offset("light")
                li = paddle.to_tensor(np.asarray(light_init, np.float32).reshape(-1))
                bias[start:start + li.shape[0]] = li
            last.bias.set_value(bias)
        self.register_buffer("mean", paddle.to_tensor(_MEAN).reshape([1, 3, 1, 1]), persistable=False)
        self.register_buffer("std", paddle.to_tensor(_STD).reshape([1, 3, 1, 1]), persistable=False)
        if pretrained:
            import os

            from ppengine.errors import InputError

            if not os.path.isfile(pretrained):
                raise InputError(f"encoder weights {pretrained!r} not found")
            from ppengine.checkpoint import read_weights  # safetensors, or .pdparams without running pickle code

            state = {k: paddle.to_tensor(v) for k, v in read_weights(pretrained).items()}
            self.backbone.set_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})

    def _offset(self, name: str) -> int:
        off = 0
        for k, v in self.code_sizes.items():
            if k == name:
                return off
            off += v
        raise KeyError(name)

    def forward(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> dict of codes, each (B, n) ('light': (B, 9, 3))."""
        x = (images - self.mean) / self.std
        aux = None
        if self.aux_head is not None and self.training:
            b = self.backbone
            mid = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))
            feat, aux = b.layer4(b.layer3(mid)), self.aux_head(mid)
        else:
            feat = self.backbone(x)
        feat = feat.mean([2, 3]) if self.pool == "avg" else feat.flatten(1)
        params = self.head(feat)
        out, off = {}, 0
        for k, n in self.code_sizes.items():
            out[k] = params[:, off:off + n]
            off += n
        if "light" in out and out["light"].shape[1] == 27:
            out["light"] = out["light"].reshape([-1, 9, 3])
        if aux is not None:
            out["aux_geometry"] = aux
        return out


class DECAResNetEncoder(nn.Layer):
    """DECA's ``ResnetEncoder``: ResNet-50 trunk -> global average -> 2048 -> 1024 -> ``outsize``.

    Parameter names follow DECA's state dicts (``encoder.conv1.weight``, ``encoder.layer1.0.bn1``,
    ..., ``layers.0.weight``, ``layers.2.weight``), so DECA's ``E_flame`` (outsize 236) and
    ``E_detail`` (outsize 128) map onto it name by name (see :mod:`ppface3d.models.deca_release`).
    Unlike :class:`ResNetEncoder` the images go in as DECA feeds them: RGB in [0, 1], no
    mean / std normalisation. DECA pools with ``AvgPool2d(7)`` on the 7x7 map of a 224 input;
    the global mean used here is the same there and also accepts other sizes.

    Args:
        outsize: output width (DECA: 236 for E_flame, 128 for E_detail).
        width: first-stage channels (64 = DECA; narrower only for quick tests).
    """

    def __init__(self, outsize: int, width: int = 64):
        super().__init__()
        self.outsize = int(outsize)
        self.encoder = resnet_trunk(50, int(width))
        feat = 8 * int(width) * 4
        self.layers = nn.Sequential(nn.Linear(feat, feat // 2), nn.ReLU(), nn.Linear(feat // 2, self.outsize))

    def forward(self, images: paddle.Tensor) -> paddle.Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B, outsize)."""
        return self.layers(self.encoder(images).mean([2, 3]))
