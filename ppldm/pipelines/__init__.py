"""Inference front ends: the ``tools/infer.py ldm`` command line, the ``make demo`` showcase and image helpers."""
from .images import grid, read_image, save_png, to_uint8

__all__ = ["grid", "read_image", "save_png", "to_uint8"]
