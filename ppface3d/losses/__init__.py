"""DECA losses (registered in LOSSES) and face reconstruction metrics (registered in METRICS)."""
from . import deca_losses, identity_spread, metrics, mica_loss  # noqa: F401
from .deca_losses import DECALoss
from .identity_spread import IdentitySpreadMetric
from .metrics import FaceReconstructionMetric
from .mica_loss import MICALoss

__all__ = ["DECALoss", "FaceReconstructionMetric", "IdentitySpreadMetric", "MICALoss"]
