"""Face data: photo loading, mediapipe preprocessing (68 landmarks, DECA crop), datasets."""
from . import identity_faces, image_folder, synthetic  # noqa: F401  (registers the datasets)
from .identity_faces import IdentitySyntheticFaces
from .image_folder import FaceImageFolder
from .io import load_image
from .preprocess import FaceCrop, FacePreprocessor, PreprocessResult, deca_crop_transform, mediapipe_to_68
from .synthetic import SyntheticFaces

__all__ = ["FaceImageFolder", "SyntheticFaces", "FacePreprocessor", "FaceCrop", "PreprocessResult", "load_image",
           "deca_crop_transform", "mediapipe_to_68", "IdentitySyntheticFaces"]
