"""DECA-style models: ResNet encoder, linear UV albedo model, DECA coarse model (registered in MODELS)."""
from . import deca, identity  # noqa: F401  (registers DECA, IdentityFeatureNet)
from .albedo import AlbedoModel
from .deca import DECA, framing_camera
from .encoder import ResNetEncoder
from .identity import IdentityFeatureNet

__all__ = ["DECA", "ResNetEncoder", "AlbedoModel", "IdentityFeatureNet", "framing_camera"]
