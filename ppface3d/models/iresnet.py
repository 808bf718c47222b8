"""insightface's IResNet (ArcFace backbones) in Paddle, with the original parameter names.

    net = iresnet100()                 # MICA's ``arcface`` (insightface's glint360k r100 layout)
    feats = net(blob)                  # blob (N, 3, 112, 112) RGB (x - 127.5) / 127.5 -> (N, 512)

Layout (insightface ``recognition/arcface_torch/backbones/iresnet.py``, which MICA copies as
``models/arcface.py``): conv3x3(3 -> 64) + BN + PReLU, four stages of ``IBasicBlock`` (BN, conv3x3,
BN, PReLU, conv3x3 with the stride, BN, + shortcut; 1x1 conv + BN shortcut when the shape changes),
each stage halving the side (112 -> 7), BN, flatten (C x 7 x 7), Linear -> 512, BatchNorm1d. All
batch norms have epsilon 1e-5. iresnet100 has [3, 13, 30, 3] blocks of 64, 128, 256, 512 channels.
Parameter names are insightface's / MICA's (``layer3.29.conv2.weight``, ``features.running_mean``),
so ``mica.tar``'s ``arcface`` entry and insightface's ``backbone.pth`` map on name by name
(BatchNorm running statistics -> ``_mean`` / ``_variance``, PReLU ``weight`` -> ``_weight``,
Linear weights transposed: :func:`ppface3d.models.deca_release.torch_to_paddle_state`).
"""
from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn as nn

from ppengine.errors import ConfigError

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}
_EPS = 1e-5


def _bn(c: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(c, epsilon=_EPS)


class IBasicBlock(nn.Layer):
    """insightface's pre-activation-style basic block (no ReLU after the sum)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Layer = None):
        super().__init__()
        self.bn1 = _bn(inplanes)
        self.conv1 = nn.Conv2D(inplanes, planes, 3, padding=1, bias_attr=False)
        self.bn2 = _bn(planes)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2D(planes, planes, 3, stride=stride, padding=1, bias_attr=False)
        self.bn3 = _bn(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Layer):
    """IResNet trunk + embedding head.

    Args:
        layers: blocks per stage (iresnet100: (3, 13, 30, 3)).
        width: channels of the stem and first stage (64 in every released model; the stages have
            width x 1, 2, 4, 8). Smaller widths only for tests.
        num_features: embedding size (512).
        input_size: input side (112); the head's Linear takes 8 * width * (input_size / 16)^2.
    """

    def __init__(self, layers: Sequence[int] = DEPTHS[100], width: int = 64, num_features: int = 512,
                 input_size: int = 112):
        super().__init__()
        if len(layers) != 4 or int(input_size) % 16:
            raise ConfigError(f"IResNet: 4 stages and an input side divisible by 16, got {list(layers)}, {input_size}")
        w = int(width)
        self.input_size = int(input_size)
        self.conv1 = nn.Conv2D(3, w, 3, padding=1, bias_attr=False)
        self.bn1 = _bn(w)
        self.prelu = nn.PReLU(w)
        inplanes = w
        for i, n in enumerate(layers):
            planes = w * 2 ** i
            down = nn.Sequential(nn.Conv2D(inplanes, planes, 1, stride=2, bias_attr=False), _bn(planes))
            blocks = [IBasicBlock(inplanes, planes, 2, down)] + [IBasicBlock(planes, planes) for _ in range(1, int(n))]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.bn2 = _bn(inplanes)
        side = self.input_size // 16
        self.fc = nn.Linear(inplanes * side * side, int(num_features))
        self.features = nn.BatchNorm1D(int(num_features), epsilon=_EPS)
        self.num_features = int(num_features)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x (N, 3, S, S) prepared as insightface does (RGB, (x - 127.5) / 127.5) -> (N, num_features)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.bn2(x).flatten(1)))


def iresnet(depth: int = 100, **kw) -> IResNet:
    """An IResNet of insightface's depth 18, 34, 50, 100 or 200."""
    if depth not in DEPTHS:
        raise ConfigError(f"iresnet depth {depth}: use one of {sorted(DEPTHS)}")
    return IResNet(DEPTHS[depth], **kw)


def iresnet100(**kw) -> IResNet:
    """MICA's ArcFace trunk (insightface r100)."""
    return iresnet(100, **kw)
