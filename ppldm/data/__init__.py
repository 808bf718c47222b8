"""Datasets for ppldm: sklearn digits, the generated shapes world, LR/HR pairs, image folder + JSONL."""
from .digits import Digits
from .folder import ImageFolderJSONL
from .pairs import SuperResPairs, downscale
from .shapes import COLOR_NAMES, COLORS, NUM_CLASSES, SHAPES, ShapesWorld, class_id, class_name, render_scene

__all__ = ["Digits", "ImageFolderJSONL", "SuperResPairs", "ShapesWorld", "downscale", "render_scene",
           "COLORS", "COLOR_NAMES", "SHAPES", "NUM_CLASSES", "class_id", "class_name"]
