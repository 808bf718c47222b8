"""DECA losses (registered in LOSSES) and face reconstruction metrics (registered in METRICS)."""
from . import deca_losses, metrics  # noqa: F401
from .deca_losses import DECALoss
from .metrics import FaceReconstructionMetric

__all__ = ["DECALoss", "FaceReconstructionMetric"]
