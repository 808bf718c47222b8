"""A generated "shapes world": coloured shapes on varied backgrounds, with captions, boxes, masks.

Every scene is a pure function of ``(seed, index)``, so a dataset of any size is reproducible
without files. A scene holds one or two objects (a colour from :data:`COLORS`, a shape from
:data:`SHAPES`) that do not overlap, drawn anti-aliased (4x supersampling) on a smooth,
low-saturation background. Captions read like ``"a red circle left of a blue square"``.

Layout class ids are ``color_index * len(SHAPES) + shape_index`` (18 classes).
Boxes are ``[class, x0, y0, x1, y1]`` with coordinates in [0, 1] (x to the right, y down).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ppengine.errors import ConfigError
from ppengine.registry import DATASETS

COLORS = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "magenta": (0.90, 0.15, 0.85),
    "cyan": (0.10, 0.85, 0.90),
}
COLOR_NAMES = list(COLORS)
SHAPES = ["circle", "square", "triangle"]
NUM_CLASSES = len(COLOR_NAMES) * len(SHAPES)
RELATIONS = ["left of", "right of", "above", "below"]


def class_id(color: str, shape: str) -> int:
    """Layout/class id of a (colour, shape) pair."""
    return COLOR_NAMES.index(color) * len(SHAPES) + SHAPES.index(shape)


def class_name(cid: int) -> Tuple[str, str]:
    """(colour, shape) of a class id."""
    return COLOR_NAMES[int(cid) // len(SHAPES)], SHAPES[int(cid) % len(SHAPES)]


@dataclass
class ShapeObject:
    color: str
    shape: str
    box: Tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1]

    @property
    def cls(self) -> int:
        return class_id(self.color, self.shape)

    @property
    def center(self) -> Tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    image: np.ndarray          # [H, W, 3] float32 in [0, 1]
    objects: List[ShapeObject]
    masks: np.ndarray          # [n_objects, H, W] float32 coverage in [0, 1]
    caption: str


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Spatial relation of ``a`` to ``b`` along the axis where their centres differ most."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


def caption_text(named: List[Tuple[str, str]], rel: str = None) -> str:
    """The caption of (colour, shape) pairs: "a red circle" or, with ``rel``, "a red circle left of a blue square"."""
    first = f"a {named[0][0]} {named[0][1]}"
    return first if rel is None else f"{first} {rel} a {named[1][0]} {named[1][1]}"


def caption_of(objects: List[ShapeObject]) -> str:
    named = [(o.color, o.shape) for o in objects]
    return caption_text(named, relation(objects[0], objects[1]) if len(objects) > 1 else None)


def phrases_of(objects: List[ShapeObject]) -> str:
    """The object phrases of :func:`caption_of`'s caption, in its order: "red circle|blue square"."""
    return "|".join(f"{o.color} {o.shape}" for o in objects)


def _shape_coverage(shape: str, box, size: int, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage [size, size] of ``shape`` filling ``box`` (normalized coords)."""
    n = size * ss
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    yy, xx = np.meshgrid(c, c, indexing="ij")
    x0, y0, x1, y1 = box
    if shape == "square":
        m = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    elif shape == "circle":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "triangle":  # apex at top centre, base at the bottom of the box
        cx = (x0 + x1) / 2
        t = (yy - y0) / max(y1 - y0, 1e-6)  # 0 at apex, 1 at base
        half = t * (x1 - x0) / 2
        m = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= half)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return m.reshape(size, ss, size, ss).mean(axis=(1, 3)).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth low-saturation background: a random grey level, a tint and a linear gradient."""
    base = rng.uniform(0.15, 0.55)
    tint = rng.uniform(-0.06, 0.06, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.15)
    c = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    grad = (np.cos(angle) * xx + np.sin(angle) * yy) * strength
    img = base + tint[None, None, :] + grad[..., None]
    img = img + rng.normal(0, 0.01, size=(size, size, 3))
    return np.clip(img, 0, 1).astype(np.float32)


def render_scene(seed: int, size: int = 32, max_objects: int = 2, min_objects: int = 1,
                 min_frac: float = 0.25, max_frac: float = 0.42) -> Scene:
    """Render scene ``seed``: returns image [size, size, 3] in [0,1], objects, masks, caption.

    Object sizes are ``min_frac``..``max_frac`` of the image side; objects don't overlap and
    two objects never share both colour and shape.
    """
    if size < 8:
        raise ConfigError(f"shapes world: size must be >= 8 pixels, got {size}")
    if not 1 <= min_objects <= max_objects <= 3:
        raise ConfigError(f"shapes world: need 1 <= min_objects <= max_objects <= 3, got {min_objects}, {max_objects}")
    rng = np.random.default_rng(int(seed))
    n_obj = int(rng.integers(min_objects, max_objects + 1))
    img = _background(rng, size)
    objects: List[ShapeObject] = []
    used = set()
    tries = 0
    while len(objects) < n_obj and tries < 200:
        tries += 1
        color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        if (color, shape) in used:
            continue
        s = rng.uniform(min_frac, max_frac)
        x0, y0 = rng.uniform(0.03, 0.97 - s, size=2)
        box = (float(x0), float(y0), float(x0 + s), float(y0 + s))
        pad = 0.04
        if any(box[0] < o.box[2] + pad and o.box[0] < box[2] + pad and box[1] < o.box[3] + pad
               and o.box[1] < box[3] + pad for o in objects):
            continue
        used.add((color, shape))
        objects.append(ShapeObject(color, shape, box))
    masks = np.zeros((len(objects), size, size), np.float32)
    for i, o in enumerate(objects):
        cov = _shape_coverage(o.shape, o.box, size)
        masks[i] = cov
        col = np.asarray(COLORS[o.color], np.float32)
        img = img * (1 - cov[..., None]) + col[None, None, :] * cov[..., None]
    return Scene(img.astype(np.float32), objects, masks, caption_of(objects))


def boxes_array(objects: List[ShapeObject], max_objects: int) -> np.ndarray:
    """[max_objects, 5] float32 rows ``[class, x0, y0, x1, y1]``; padding rows are class -1."""
    out = np.zeros((max_objects, 5), np.float32)
    out[:, 0] = -1
    for i, o in enumerate(objects[:max_objects]):
        out[i] = [o.cls, *o.box]
    return out


def random_rect_mask(rng: np.random.Generator, size: int, min_frac: float = 0.3, max_frac: float = 0.5) -> np.ndarray:
    """A [size, size] 0/1 mask of a random axis-aligned rectangle (sides ``min_frac..max_frac``)."""
    h, w = (rng.uniform(min_frac, max_frac, size=2) * size).astype(int).clip(1, size)
    y0 = int(rng.integers(0, size - h + 1))
    x0 = int(rng.integers(0, size - w + 1))
    m = np.zeros((size, size), np.float32)
    m[y0:y0 + h, x0:x0 + w] = 1
    return m


def box_mask(box, size: int, grow: float = 0.06) -> np.ndarray:
    """A [size, size] 0/1 mask of ``box`` (normalized, grown by ``grow`` on each side)."""
    x0, y0, x1, y1 = box
    c = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    m = (xx >= x0 - grow) & (xx <= x1 + grow) & (yy >= y0 - grow) & (yy <= y1 + grow)
    return m.astype(np.float32)


@DATASETS.register()
class ShapesWorld:
    """The shapes world as a dataset; item ``i`` of split ``s`` is scene ``seed + offset(s) + i``.

    Each item is a dict:
        image:   [3, size, size] float32 in [-1, 1]
        caption: str, e.g. "a red circle left of a blue square"
        label:   int, class id of the first object (0..17)
        boxes:   [max_objects, 5] float32 ``[class, x0, y0, x1, y1]``; padding rows have class -1
        mask:    [1, size, size] float32, 1 = region to inpaint: a random rectangle
                 (``mask_mode="rect"``) or the grown box of one object (``mask_mode="object"``)
        masked_image: [3, size, size] float32, ``image`` with the mask region set to 0
        index:   int64, the item's index (lets a model cache per-item latents)

    ``swap_captions=True`` (training text-to-image): a two-object caption is read from either
    object at random at every access, "a red circle left of a blue square" or the same scene's
    "a blue square right of a red circle", so the model cannot tie "left of" to the first-named
    object and must bind the relation to the order of the names. Images, labels and boxes are
    unchanged.

    ``grounding=True`` (text-to-image with the grounding loss, :mod:`ppldm.models.grounding`) adds
        phrases:      str, the caption's object phrases in caption order, "red circle|blue square"
        phrase_masks: [max_objects, size, size] float32, the objects' coverage in the same order
                      (zero rows past the objects)
    """

    SPLIT_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}

    def __init__(self, split: str = "train", size: int = 32, num_samples: int = 10000, seed: int = 0,
                 max_objects: int = 2, min_objects: int = 1, mask_mode: str = "rect", cache: bool = True,
                 swap_captions: bool = False, grounding: bool = False):
        if split not in self.SPLIT_OFFSET:
            raise ConfigError(f"ShapesWorld: split must be one of {list(self.SPLIT_OFFSET)}, got {split!r}")
        if num_samples <= 0:
            raise ConfigError(f"ShapesWorld: num_samples must be positive, got {num_samples}")
        self.split, self.size, self.num_samples = split, int(size), int(num_samples)
        self.seed, self.max_objects, self.min_objects = int(seed), int(max_objects), int(min_objects)
        if mask_mode not in ("rect", "object"):
            raise ConfigError(f"ShapesWorld: mask_mode must be 'rect' or 'object', got {mask_mode!r}")
        self.mask_mode = mask_mode
        self.cache = cache
        self._cache = {}
        self.swap_captions = bool(swap_captions)
        self.grounding = bool(grounding)
        self._swap_rng = np.random.default_rng([self.seed, self.SPLIT_OFFSET[split], 11])

    def __len__(self):
        return self.num_samples

    def scene(self, idx: int) -> Scene:
        return render_scene(self.seed * 1_000_003 + self.SPLIT_OFFSET[self.split] + int(idx), self.size,
                            self.max_objects, self.min_objects)

    def __getitem__(self, idx):
        if idx < 0 or idx >= self.num_samples:
            raise IndexError(idx)
        if self.cache and idx in self._cache:
            return self._swapped(dict(self._cache[idx]))
        sc = self.scene(idx)
        image = sc.image.transpose(2, 0, 1) * 2 - 1
        if self.mask_mode == "object":
            pick = (self.seed + idx) % len(sc.objects)
            mask = box_mask(sc.objects[pick].box, self.size)[None]
        else:
            rng = np.random.default_rng([self.seed, self.SPLIT_OFFSET[self.split] + int(idx), 7])
            mask = random_rect_mask(rng, self.size)[None]
        item = {
            "image": image.astype(np.float32),
            "caption": sc.caption,
            "label": np.int64(sc.objects[0].cls),
            "boxes": boxes_array(sc.objects, self.max_objects),
            "mask": mask,
            "masked_image": (image * (1 - mask)).astype(np.float32),
            "index": np.int64(idx),
        }
        if self.grounding:
            item["phrases"] = phrases_of(sc.objects)
            pm = np.zeros((self.max_objects, self.size, self.size), np.float32)
            pm[:len(sc.masks)] = sc.masks[:self.max_objects]
            item["phrase_masks"] = pm
        if self.swap_captions:
            item["_objects"] = sc.objects
        if self.cache:
            self._cache[idx] = item
        return self._swapped(dict(item))

    def _swapped(self, item: dict) -> dict:
        objects = item.pop("_objects", None)
        if objects is not None and len(objects) == 2 and self._swap_rng.random() < 0.5:
            item["caption"] = caption_of(objects[::-1])
            if self.grounding:
                item["phrases"] = phrases_of(objects[::-1])
                pm = item["phrase_masks"].copy()
                pm[[0, 1]] = pm[[1, 0]]
                item["phrase_masks"] = pm
        return item
