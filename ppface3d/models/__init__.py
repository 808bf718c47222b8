"""DECA-style models: ResNet encoder and the DECA coarse model (registered in MODELS).

The face model they are built on (FLAME + albedo + renderer) is :class:`ppface3d.FaceModel`.
"""
from . import deca, deca_detail, deca_release, identity, mica, vgg_features  # noqa: F401  (registers the models)
from .deca import DECA
from .deca_detail import DECADetail
from .deca_release import DECARelease
from .detail import DetailDecoder, DetailEncoder
from .encoder import ResNetEncoder
from .identity import IdentityFeatureNet
from .iresnet import IResNet, iresnet100
from .mica import MICA, MappingNetwork, clip_shape

__all__ = ["DECA", "DECADetail", "DECARelease", "DetailDecoder", "DetailEncoder", "ResNetEncoder", "IdentityFeatureNet",
           "MICA", "MappingNetwork", "clip_shape", "IResNet", "iresnet100"]
