"""DECA-style models: ResNet encoder and the DECA coarse model (registered in MODELS).

The face model they are built on (FLAME + albedo + renderer) is :class:`ppface3d.FaceModel`.
"""
from . import deca, deca_detail, deca_release, identity, vgg_features  # noqa: F401  (registers the models)
from .deca import DECA
from .deca_detail import DECADetail
from .deca_release import DECARelease
from .detail import DetailDecoder, DetailEncoder
from .encoder import ResNetEncoder
from .identity import IdentityFeatureNet

__all__ = ["DECA", "DECADetail", "DECARelease", "DetailDecoder", "DetailEncoder", "ResNetEncoder", "IdentityFeatureNet"]
