"""Inference front ends: the ``tools/infer.py ldm`` command line, the ``make demo`` showcase and
reading user images (images are written with :mod:`ppengine.io`)."""
from .images import read_image

__all__ = ["read_image"]
