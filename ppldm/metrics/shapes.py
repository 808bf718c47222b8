"""An independent colour/shape/position checker for images of the shapes world.

It reads a picture the way a person would, with no access to how it was made: pixels close to
one of the six named colours (and saturated, unlike the grey backgrounds) are grouped into
connected components (scipy.ndimage); each large component is one object, its bounding box is
the object's box, and its outline names the shape: a triangle is narrow at the top, a square fills
its box (~1), a circle fills ~pi/4 of it. Captions are parsed back into (colour, shape, relation, colour, shape).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

from ppengine.registry import METRICS

from ..data.shapes import COLORS, SHAPES, class_name
from .common import images_01, to_np

_PALETTE = np.asarray(list(COLORS.values()), np.float32)
_NAMES = list(COLORS)
_CAPTION = re.compile(r"^an? (\w+) (\w+)(?: (left of|right of|above|below) an? (\w+) (\w+))?$")


@dataclass
class Detection:
    color: str
    shape: str
    box: Tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1]
    area: float                             # fraction of the image

    @property
    def center(self):
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def parse_caption(caption: str):
    """"a red circle left of a blue square" -> [("red", "circle"), ("blue", "square")], "left of"."""
    m = _CAPTION.match(caption.strip().lower())
    if not m:
        return None, None
    objs = [(m.group(1), m.group(2))]
    if m.group(3):
        objs.append((m.group(4), m.group(5)))
    return objs, m.group(3)


def classify_component(comp: np.ndarray) -> str:
    """Shape of a binary component [h, w] cropped to its bounding box: a triangle (apex up) is
    much narrower in its top third than in its bottom third; then the fill ratio (area / box)
    separates squares (~1) from circles (~pi/4)."""
    h = comp.shape[0]
    k = max(1, int(round(h / 3)))
    top, bottom = comp[:k].sum(1).mean(), comp[-k:].sum(1).mean()
    if top < 0.6 * bottom:
        return "triangle"
    fill = comp.mean()
    if fill > 0.87:
        return "square"
    if fill > 0.6:
        return "circle"
    return "triangle"


def detect(image: np.ndarray, max_dist: float = 0.3, min_area: float = 0.01) -> List[Detection]:
    """Objects in ``image`` [H, W, 3] (values in [0, 1]), largest first."""
    h, w, _ = image.shape
    d = np.linalg.norm(image[:, :, None, :] - _PALETTE[None, None], axis=-1)  # [H, W, 6]
    nearest = d.argmin(-1)
    sat = image.max(-1) - image.min(-1)
    ok = (d.min(-1) < max_dist) & (sat > 0.35)
    out = []
    for ci, name in enumerate(_NAMES):
        lab, n = ndimage.label(ok & (nearest == ci))
        if n == 0:
            continue
        for sl_i, sl in enumerate(ndimage.find_objects(lab), 1):
            comp = lab[sl] == sl_i
            area = comp.sum()
            if area < min_area * h * w:
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            out.append(Detection(name, classify_component(comp), (x0 / w, y0 / h, x1 / w, y1 / h), area / (h * w)))
    out.sort(key=lambda o: -o.area)
    return out


def relation(a, b) -> str:
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _find(dets: List[Detection], color: str, shape: Optional[str] = None, used=()) -> Optional[Detection]:
    for d in dets:
        if d.color == color and (shape is None or d.shape == shape) and id(d) not in used:
            return d
    return None


def check_caption(image: np.ndarray, caption: str) -> dict:
    """Per-image scores (0/1) of ``image`` [H, W, 3] in [0, 1] against ``caption``:
    ``color`` (fraction of named colours present), ``object`` (fraction of named colour+shape
    objects present), ``relation`` (the two objects stand in the named relation; None for one
    object), ``color_relation`` (the relation read from the two named colours alone, whatever
    their shapes: whether positions follow the text even where a shape is drawn wrong; None for
    one object) and ``all`` (every object and the relation correct)."""
    objs, rel = parse_caption(caption)
    if objs is None:
        raise ValueError(f"caption {caption!r} is not of the form 'a <colour> <shape> [<relation> a <colour> <shape>]'")
    dets = detect(image)
    color_hits, obj_hits, found, used = 0, 0, [], set()
    for c, s in objs:
        color_hits += _find(dets, c) is not None
        d = _find(dets, c, s, used)
        if d is not None:
            used.add(id(d))
        obj_hits += d is not None
        found.append(d)
    r = rc = None
    if rel is not None:
        r = float(all(f is not None for f in found) and relation(found[0], found[1]) == rel)
        (c0, s0), (c1, s1) = objs
        a = _find(dets, c0, s0) or _find(dets, c0)  # the named shape where drawn, else the colour alone
        b = (_find(dets, c1, s1, {id(a)}) or _find(dets, c1, used={id(a)})) if a is not None else None
        rc = float(b is not None and relation(a, b) == rel)
    allok = float(obj_hits == len(objs) and (r is None or r == 1.0))
    return {"color": color_hits / len(objs), "object": obj_hits / len(objs), "relation": r,
            "color_relation": rc, "all": allok}


def check_layout(image: np.ndarray, boxes: np.ndarray) -> dict:
    """Scores of ``image`` [H, W, 3] in [0, 1] against boxes [N, 5] ``[class, x0, y0, x1, y1]``
    (class -1 = padding): ``object`` (fraction of boxes whose colour+shape object is found),
    ``iou`` (mean IoU of each box with the detected object of its colour; 0 when missing),
    ``found`` (boxes with an object of their colour detected) and ``iou_sum_found`` (the sum of
    their IoUs): the IoU given a found object separates "not drawn" from "drawn elsewhere"."""
    dets = detect(image)
    hits, ious, used, found_flags = 0, [], set(), []
    for row in np.asarray(boxes):
        if row[0] < 0:
            continue
        color, shape = class_name(int(round(row[0])))
        d = _find(dets, color, shape, used) or _find(dets, color, None, used)
        if d is not None:
            used.add(id(d))
        found_flags.append(d is not None)
        hits += d is not None and d.shape == shape
        ious.append(box_iou(tuple(row[1:]), d.box) if d is not None else 0.0)
    n = max(1, len(ious))
    found = [v for v, d in zip(ious, found_flags) if d]
    return {"object": hits / n, "iou": float(np.sum(ious)) / n, "found": len(found), "n": len(ious),
            "iou_sum_found": float(np.sum(found))}


class _PerImageChecks:
    """Accumulates one check result per generated image; subclasses name the target key, the
    check and the summary."""

    target = ""

    def __init__(self):
        self.reset()

    def reset(self):
        self.rows = []

    def check(self, image, target):
        raise NotImplementedError

    def summarize(self, rows) -> dict:
        raise NotImplementedError

    def update(self, batch, outputs):
        imgs = images_01(outputs["samples"]).transpose(0, 2, 3, 1)
        targets = batch[self.target]
        targets = targets if isinstance(targets, list) else to_np(targets)
        for im, t in zip(imgs, targets):
            self.rows.append(self.check(im, t))

    def compute(self):
        return self.summarize(self.rows) if self.rows else {}


@METRICS.register()
class ShapesCaptionAccuracy(_PerImageChecks):
    """Text-to-image on the shapes world: mean colour / object / relation / all-correct rates of
    ``outputs['samples']`` [B, 3, H, W] in [-1, 1] against ``batch['caption']``."""

    target = "caption"

    def check(self, image, caption):
        return check_caption(image, caption)

    def summarize(self, rows):
        rel = [r["relation"] for r in rows if r["relation"] is not None]
        rel_c = [r["color_relation"] for r in rows if r["color_relation"] is not None]
        return {"color_acc": float(np.mean([r["color"] for r in rows])),
                "object_acc": float(np.mean([r["object"] for r in rows])),
                "relation_acc": float(np.mean(rel)) if rel else float("nan"),
                "color_relation_acc": float(np.mean(rel_c)) if rel_c else float("nan"),
                "caption_acc": float(np.mean([r["all"] for r in rows]))}


@METRICS.register()
class ShapesLayoutAccuracy(_PerImageChecks):
    """Layout-to-image on the shapes world: object accuracy and mean box IoU of
    ``outputs['samples']`` [B, 3, H, W] in [-1, 1] against ``batch['boxes']`` [B, N, 5]."""

    target = "boxes"

    def check(self, image, boxes):
        return check_layout(image, boxes)

    def summarize(self, rows):
        found = sum(r["found"] for r in rows)
        return {"layout_object_acc": float(np.mean([r["object"] for r in rows])),
                "box_iou": float(np.mean([r["iou"] for r in rows])),
                # boxes whose colour was drawn somewhere, and the mean IoU over those only
                "color_found": found / max(1, sum(r["n"] for r in rows)),
                "box_iou_found": sum(r["iou_sum_found"] for r in rows) / found if found else 0.0}


__all__ = ["detect", "check_caption", "check_layout", "parse_caption", "box_iou", "SHAPES"]
