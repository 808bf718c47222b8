"""DECA losses (registered in LOSSES) and face reconstruction metrics (registered in METRICS)."""
from . import deca_losses, detail_losses, detail_metrics, identity_spread, metrics, mica_loss  # noqa: F401
from .deca_losses import DECALoss
from .detail_losses import DECADetailLoss
from .detail_metrics import DetailNormalMetric
from .identity_spread import IdentitySpreadMetric
from .metrics import FaceReconstructionMetric
from .mica_loss import MICALoss

__all__ = ["DECALoss", "DECADetailLoss", "DetailNormalMetric", "FaceReconstructionMetric", "IdentitySpreadMetric",
           "MICALoss"]
