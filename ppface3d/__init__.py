"""ppface3d: FLAME, a differentiable rasterizer/renderer and DECA-style face reconstruction in Paddle.

Importing the package registers its models, datasets, losses and metrics with ppengine.
Each subpackage that registers something is imported here, explicitly (``export`` declares the
models' export components).

    from ppface3d import FaceModel       # FLAME + albedo + renderer + camera, composed once
"""
from . import data, export, losses, models  # noqa: E402,F401  (DECA: datasets, losses/metrics, models, export components)
from .face_model import FaceModel, framing_camera, sh_ambient  # noqa: F401

__all__ = ["FaceModel", "framing_camera", "sh_ambient"]
