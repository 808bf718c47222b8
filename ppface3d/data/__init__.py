"""Face data: photo loading, mediapipe preprocessing (68 landmarks, DECA crop), datasets."""
from . import image_folder  # noqa: F401  (registers FaceImageFolder)
from .image_folder import FaceImageFolder
from .io import load_image
from .preprocess import FaceCrop, FacePreprocessor, PreprocessResult, deca_crop_transform, mediapipe_to_68

__all__ = ["FaceImageFolder", "FacePreprocessor", "FaceCrop", "PreprocessResult", "load_image",
           "deca_crop_transform", "mediapipe_to_68"]
