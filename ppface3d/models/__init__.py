"""DECA-style models: ResNet encoder and the DECA coarse model (registered in MODELS).

The face model they are built on (FLAME + albedo + renderer) is :class:`ppface3d.FaceModel`.
"""
from . import deca, identity  # noqa: F401  (registers DECA, IdentityFeatureNet)
from .deca import DECA
from .encoder import ResNetEncoder
from .identity import IdentityFeatureNet

__all__ = ["DECA", "ResNetEncoder", "IdentityFeatureNet"]
