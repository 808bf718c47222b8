"""Users' own data: a folder of images with a JSONL file of captions, labels or boxes.

One JSON object per line::

    {"file": "cat_01.png", "caption": "a cat on a sofa", "label": 3,
     "boxes": [[2, 0.1, 0.2, 0.5, 0.9], [0, 0.6, 0.1, 0.9, 0.4]]}

``file`` is relative to ``root``; ``caption``, ``label`` and ``boxes`` (``[class, x0, y0, x1, y1]``
with coordinates in [0, 1]) are each optional. For text-to-image with the grounding loss
(``grounding: true``, :mod:`ppldm.models.grounding`) a record may also name where the caption's
phrases are, in caption order::

    {"file": "a.png", "caption": "a cat left of a dog",
     "phrases": [{"text": "cat", "box": [0.05, 0.3, 0.45, 0.9]}, {"text": "dog", "box": [0.5, 0.2, 0.95, 0.9]}]}

Each phrase must occur in the caption; its box (``[x0, y0, x1, y1]`` in [0, 1]) becomes its mask.

Lines that are not valid JSON, records without a usable ``file``, missing or corrupt images and
malformed labels/boxes/phrases are reported (logged, and listed in ``dataset.skipped`` as
``(line_number, reason)``) and skipped; only a dataset with no usable record at all is an error.
"""
from __future__ import annotations

import json
import logging
import os
from typing import List, Tuple

import numpy as np

from ppengine.errors import InputError
from ppengine.registry import DATASETS

from .shapes import box_mask, random_rect_mask

log = logging.getLogger("ppldm.data")


def load_image(path: str, size: int) -> np.ndarray:
    """Read an image file as RGB, centre-crop to a square, resize: [3, size, size] float32 in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, np.float32) / 127.5 - 1
    return arr.transpose(2, 0, 1).copy()


def _check_phrases(phrases, caption: str, max_objects: int) -> list:
    """``[{"text": str, "box": [x0, y0, x1, y1]}, ...]`` -> [(text, box)], checked against ``caption``."""
    if not isinstance(phrases, list) or not all(isinstance(p, dict) for p in phrases):
        raise ValueError('\'phrases\' must be a list of {"text": ..., "box": [x0, y0, x1, y1]}')
    if len(phrases) > max_objects:
        raise ValueError(f"{len(phrases)} phrases, more than max_objects={max_objects}")
    out = []
    for p in phrases:
        text = p.get("text")
        if not isinstance(text, str) or not text.strip() or "|" in text:
            raise ValueError(f"phrase text must be a non-empty string without '|', got {text!r}")
        if text.lower() not in caption.lower():
            raise ValueError(f"phrase {text!r} does not occur in the caption {caption!r}")
        box = p.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"phrase {text!r}: 'box' must be [x0, y0, x1, y1] in [0, 1], got {box!r}")
        box = _check_boxes([[0, *box]], 1)[0, 1:]
        out.append((text, tuple(float(v) for v in box)))
    return out


def _check_boxes(boxes, max_objects: int) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(f"boxes must be a list of [class, x0, y0, x1, y1], got shape {arr.shape}")
    if len(arr) > max_objects:
        raise ValueError(f"{len(arr)} boxes, more than max_objects={max_objects}")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 1:] < 0) or np.any(arr[:, 1:] > 1):
        raise ValueError("box coordinates must be finite numbers in [0, 1]")
    if np.any(arr[:, 3] <= arr[:, 1]) or np.any(arr[:, 4] <= arr[:, 2]):
        raise ValueError("each box needs x1 > x0 and y1 > y0")
    if np.any(arr[:, 0] < 0) or np.any(arr[:, 0] != np.round(arr[:, 0])):
        raise ValueError("box class must be a non-negative integer")
    out = np.zeros((max_objects, 5), np.float32)
    out[:, 0] = -1
    out[: len(arr)] = arr
    return out


@DATASETS.register()
class ImageFolderJSONL:
    """Images in ``root`` listed by a JSONL file (default ``root/annotations.jsonl``).

    Item (same keys as :class:`~ppldm.data.shapes.ShapesWorld`):
        image [3, size, size] float32 in [-1, 1]; caption str ("" when absent);
        label int64 (-1 when absent); boxes [max_objects, 5] (class -1 rows are padding);
        mask [1, size, size] (random rectangle, deterministic by index); masked_image [3, size, size];
        index int64; with ``grounding=True`` also phrases str ("cat|dog", "" when absent) and
        phrase_masks [max_objects, size, size] (the phrases' boxes, zero rows past them).
    """

    def __init__(self, root: str, annotations: str = None, size: int = 32, max_objects: int = 8,
                 seed: int = 0, cache: bool = True, grounding: bool = False):
        if not os.path.isdir(root):
            raise InputError(f"ImageFolderJSONL: image folder {root!r} does not exist. "
                             f"Set data.*.root to a folder holding your images.")
        ann = annotations or os.path.join(root, "annotations.jsonl")
        if not os.path.isabs(ann) and not os.path.exists(ann):
            ann = os.path.join(root, ann)
        if not os.path.isfile(ann):
            raise InputError(f"ImageFolderJSONL: annotation file {ann!r} not found. Write one JSON object "
                             f'per line, e.g. {{"file": "img.png", "caption": "..."}}')
        self.root, self.size, self.max_objects, self.seed = root, int(size), int(max_objects), int(seed)
        self.grounding = bool(grounding)
        self.records: List[dict] = []
        self.skipped: List[Tuple[int, str]] = []
        self._images = {}
        with open(ann, "r", encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = self._parse(line, cache)
                except Exception as e:  # noqa: BLE001 - every bad record is reported, none is fatal
                    self.skipped.append((lineno, str(e)))
                    log.warning("%s:%d skipped: %s", ann, lineno, e)
                    continue
                img = rec.pop("_image")
                if cache:
                    self._images[len(self.records)] = img
                self.records.append(rec)
        if self.skipped:
            log.warning("%s: %d record(s) skipped, %d usable", ann, len(self.skipped), len(self.records))
        if not self.records:
            reasons = "; ".join(f"line {n}: {r}" for n, r in self.skipped[:5])
            raise InputError(f"ImageFolderJSONL: no usable record in {ann!r}. {reasons}")

    def _parse(self, line: str, cache: bool) -> dict:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError("a record must be a JSON object")
        fname = rec.get("file")
        if not isinstance(fname, str) or not fname:
            raise ValueError("missing 'file' (the image path relative to the folder)")
        path = os.path.join(self.root, fname)
        if not os.path.isfile(path):
            raise ValueError(f"image {fname!r} not found")
        try:
            img = load_image(path, self.size)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"image {fname!r} could not be read ({type(e).__name__}: {e})") from None
        out = {"path": path, "caption": "", "label": -1, "boxes": None, "phrases": [], "_image": img}
        if "caption" in rec:
            if not isinstance(rec["caption"], str):
                raise ValueError("'caption' must be a string")
            out["caption"] = rec["caption"]
        if "label" in rec:
            if not isinstance(rec["label"], int) or isinstance(rec["label"], bool) or rec["label"] < 0:
                raise ValueError(f"'label' must be a non-negative integer, got {rec['label']!r}")
            out["label"] = rec["label"]
        if "boxes" in rec:
            out["boxes"] = _check_boxes(rec["boxes"], self.max_objects)
        if "phrases" in rec:
            out["phrases"] = _check_phrases(rec["phrases"], out["caption"], self.max_objects)
        return out

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        rec = self.records[i]
        img = self._images[i] if i in self._images else load_image(rec["path"], self.size)
        boxes = rec["boxes"]
        if boxes is None:
            boxes = np.zeros((self.max_objects, 5), np.float32)
            boxes[:, 0] = -1
        mask = random_rect_mask(np.random.default_rng([self.seed, i, 7]), self.size)[None]
        item = {"image": img, "caption": rec["caption"], "label": np.int64(rec["label"]),
                "boxes": boxes.copy(), "mask": mask, "masked_image": (img * (1 - mask)).astype(np.float32),
                "index": np.int64(i)}
        if self.grounding:
            item["phrases"] = "|".join(text for text, _ in rec["phrases"])
            pm = np.zeros((self.max_objects, self.size, self.size), np.float32)
            for k, (_, box) in enumerate(rec["phrases"]):
                pm[k] = box_mask(box, self.size, grow=0.0)
            item["phrase_masks"] = pm
        return item
