"""DECA losses (registered in LOSSES) and face reconstruction metrics (registered in METRICS)."""
from . import deca_losses, detail_losses, detail_metrics, metrics  # noqa: F401
from .deca_losses import DECALoss
from .detail_losses import DECADetailLoss
from .detail_metrics import DetailNormalMetric
from .metrics import FaceReconstructionMetric

__all__ = ["DECALoss", "DECADetailLoss", "DetailNormalMetric", "FaceReconstructionMetric"]
