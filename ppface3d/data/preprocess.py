"""Face detection, 68 landmarks and DECA's crop, offline with mediapipe 0.10.14's bundled models.

    pre = FacePreprocessor(crop_size=224, scale=1.25)
    result = pre("photo.jpg")                # never raises for a bad photo
    for face in result.faces:
        face.image          # (224, 224, 3) float32 in [0, 1], DECA's crop
        face.landmarks      # (68, 2) crop pixels
        face.to_original(face.landmarks)     # back onto the photo
    result.messages        # e.g. ["2 faces found; each is processed"]
    results = pre.process_many(paths)        # a bad file gives a message, the batch goes on

Detection: mediapipe's full-range BlazeFace (``face_detection``, model_selection=1) finds every
face; each one is then cropped (twice its box) and passed to the 468-point face mesh
(``face_mesh``, static mode). The 468 points are reduced to the 68-point iBUG/300-W scheme
(jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67) that DECA, EMOCA and FAN use, with
the table :data:`MEDIAPIPE_TO_68` (see docs/deca.md for how it was chosen).

Crop (DECA's ``TestData`` with landmarks): box of the 68 points, side ``(w + h) / 2 * 1.1``,
times ``scale`` = 1.25, centred on the box; a similarity transform maps it to
``crop_size`` x ``crop_size``. The 3x3 matrix ``tform`` (original pixels -> crop pixels) is
kept so crop-space results (landmarks, renders) map back onto the original photo.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import numpy as np

from ppengine.errors import InputError
from ppengine.quiet import native_stderr_filtered

from .io import load_image

# The 68-point scheme as indices into mediapipe's 468-point face mesh. For each iBUG point the
# mesh vertex at the same anatomical place: jaw line (the mesh has no vertices exactly on the
# jaw contour seen from the side, so the outline points of the face oval are used), brow upper
# edge, nose bridge/tip/base, eye corners and lids, outer and inner lip contours.
MEDIAPIPE_TO_68 = np.array([
    # jaw 0-16 (image left -> chin -> image right)
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    # right brow 17-21, left brow 22-26
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
    # nose bridge 27-30, nose base 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41, left eye 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59, inner lips 60-67
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
], dtype=np.int64)
assert MEDIAPIPE_TO_68.shape == (68,)


def mediapipe_to_68(points468: np.ndarray) -> np.ndarray:
    """(..., 468, D) mediapipe mesh points -> (..., 68, D) iBUG-68 points."""
    points468 = np.asarray(points468)
    if points468.shape[-2] < 468:
        raise InputError(f"expected 468 mediapipe points, got {points468.shape[-2]}")
    return points468[..., MEDIAPIPE_TO_68, :]


def deca_crop_transform(landmarks: np.ndarray, crop_size: int = 224, scale: float = 1.25,
                        bbox_from: str = "kpt") -> np.ndarray:
    """DECA's crop as a 3x3 similarity matrix from original pixels to crop pixels.

    Args:
        landmarks: (N, 2) points (x, y) in original image pixels (68 landmarks, or a box's
            two corners with ``bbox_from='bbox'``).
        crop_size: output side in pixels.
        scale: DECA's crop scale (1.25).
        bbox_from: 'kpt' (box of landmarks, side * 1.1) or 'bbox' (a detector box, centre
            shifted down by 0.12 * side, as DECA does for FAN boxes).
    Returns:
        (3, 3) float64 matrix ``T`` with ``[u, v, 1] = T @ [x, y, 1]``.
    """
    from skimage.transform import estimate_transform

    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    left, top = pts.min(0)
    right, bottom = pts.max(0)
    w, h = right - left, bottom - top
    if bbox_from == "kpt":
        old = (w + h) / 2.0 * 1.1
        cx, cy = left + w / 2.0, top + h / 2.0
    else:
        old = (w + h) / 2.0
        cx, cy = left + w / 2.0, top + h / 2.0 + old * 0.12
    size = old * scale
    if not np.isfinite(size) or size <= 1e-6:
        raise InputError(f"landmarks span no area (box {w:.1f} x {h:.1f} px); cannot crop a face")
    src = np.array([[cx - size / 2, cy - size / 2], [cx - size / 2, cy + size / 2],
                    [cx + size / 2, cy - size / 2]])
    dst = np.array([[0, 0], [0, crop_size - 1], [crop_size - 1, 0]], dtype=np.float64)
    return estimate_transform("similarity", src, dst).params


def apply_transform(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 matrix to (..., 2) points."""
    pts = np.asarray(pts, dtype=np.float64)
    homo = np.concatenate([pts[..., :2], np.ones(pts.shape[:-1] + (1,))], -1)
    out = homo @ np.asarray(T, dtype=np.float64).T
    return out[..., :2] / out[..., 2:3]


def warp_crop(image: np.ndarray, T: np.ndarray, crop_size: int = 224) -> np.ndarray:
    """Crop ``image`` (H, W, 3) uint8/float with matrix ``T`` -> (S, S, 3) float32 in [0, 1]."""
    from skimage.transform import ProjectiveTransform, warp

    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    out = warp(img, ProjectiveTransform(np.linalg.inv(T)), output_shape=(crop_size, crop_size),
               order=1, mode="edge", preserve_range=True)
    return out.astype(np.float32)


def paste_back(crop: np.ndarray, T: np.ndarray, out_shape, background: np.ndarray = None,
               mask: np.ndarray = None) -> np.ndarray:
    """Map a crop-space image (S, S, C) back into the original photo frame (H, W, C).

    ``mask`` (S, S) in [0, 1] blends the crop over ``background`` (H, W, C); without a
    background the pasted crop is returned (zeros outside).
    """
    from skimage.transform import ProjectiveTransform, warp

    H, W = out_shape[:2]
    c = crop.astype(np.float32)
    back = warp(c, ProjectiveTransform(T), output_shape=(H, W), order=1, mode="constant", cval=0.0,
                preserve_range=True).astype(np.float32)
    if background is None:
        return back
    m = np.ones(crop.shape[:2], np.float32) if mask is None else mask.astype(np.float32)
    mb = warp(m, ProjectiveTransform(T), output_shape=(H, W), order=1, mode="constant", cval=0.0,
              preserve_range=True).astype(np.float32)[..., None]
    bg = background.astype(np.float32)
    if background.dtype == np.uint8:
        bg = bg / 255.0
    return back * mb + bg * (1.0 - mb)


def landmark_face_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(S, S) float32 mask of the face region: the polygon of jaw line and raised brows.

    Used as the photometric-loss mask on real photos (DECA uses a face segmentation network;
    this is the offline stand-in): jaw points 0-16, then the brows lifted by 20 % of the
    brow-to-chin distance to include the forehead.
    """
    from skimage.draw import polygon

    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    jaw = lm[0:17]
    brows = lm[17:27][::-1].copy()
    lift = 0.2 * (lm[8, 1] - brows[:, 1].mean())
    brows[:, 1] -= lift
    poly = np.concatenate([jaw, brows], 0)
    rr, cc = polygon(poly[:, 1], poly[:, 0], shape=(size, size))
    m = np.zeros((size, size), np.float32)
    m[rr, cc] = 1.0
    return m


@dataclass
class FaceCrop:
    """One face of one photo, cropped the DECA way.

    Attributes:
        image: (S, S, 3) float32 RGB in [0, 1].
        landmarks: (68, 2) float32 crop pixels (x, y).
        landmarks_original: (68, 2) float32 original photo pixels.
        tform: (3, 3) float64, original pixels -> crop pixels.
        bbox: (4,) float32 detector box x0, y0, x1, y1 in original pixels.
        score: detector confidence.
        dense: (468, 2) float32 mediapipe face-mesh points in crop pixels (None when the
            landmarks came from elsewhere, e.g. a landmark file).
    """

    image: np.ndarray
    landmarks: np.ndarray
    landmarks_original: np.ndarray
    tform: np.ndarray
    bbox: np.ndarray
    score: float = 1.0
    dense: Optional[np.ndarray] = None

    def to_original(self, pts: np.ndarray) -> np.ndarray:
        """(..., 2) crop pixels -> original photo pixels."""
        return apply_transform(np.linalg.inv(self.tform), pts)


@dataclass
class PreprocessResult:
    """What happened to one input: its faces (maybe none) and messages for the user."""

    source: str
    faces: List[FaceCrop] = field(default_factory=list)
    messages: List[str] = field(default_factory=list)
    original: Optional[np.ndarray] = None  # (H, W, 3) uint8 upright photo

    @property
    def ok(self) -> bool:
        return len(self.faces) > 0

    def summary(self) -> str:
        head = f"{self.source}: {len(self.faces)} face(s)"
        return head + ("; " + "; ".join(self.messages) if self.messages else "")


class FacePreprocessor:
    """Detect faces, fit 68 landmarks and crop each face as DECA does.

    Args:
        crop_size: output crop side (224 for DECA).
        scale: crop scale relative to the landmark box (DECA: 1.25).
        min_face_size: faces whose detector box is narrower (original pixels) are reported as
            too small and skipped: at 224x224 they would be upsampled past usefulness.
        max_faces: keep at most this many faces per photo (largest first); None keeps all.
        min_confidence: detector score threshold.
    """

    def __init__(self, crop_size: int = 224, scale: float = 1.25, min_face_size: int = 64,
                 max_faces: Optional[int] = None, min_confidence: float = 0.5):
        self.crop_size = int(crop_size)
        self.scale = float(scale)
        self.min_face_size = int(min_face_size)
        self.max_faces = max_faces
        self.min_confidence = float(min_confidence)
        self._det = None
        self._mesh = None

    # -- mediapipe models (created once, reused) -------------------------------------------
    def _models(self):
        if self._det is None:
            try:
                import mediapipe as mp
            except ImportError as e:  # pragma: no cover - mediapipe is a requirement
                raise InputError(
                    "face detection needs mediapipe==0.10.14 (pip install mediapipe==0.10.14), "
                    "or give landmark files next to the images"
                ) from e
            self._det = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self.min_confidence)
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=False,
                min_detection_confidence=0.3)
        return self._det, self._mesh

    def close(self):
        for m in (self._det, self._mesh):
            if m is not None:
                m.close()
        self._det = self._mesh = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- detection ---------------------------------------------------------------------------
    def detect_boxes(self, image: np.ndarray):
        """Face boxes in ``image`` (H, W, 3) uint8: list of ((x0, y0, x1, y1), score)."""
        det, _ = self._models()
        H, W = image.shape[:2]
        res = det.process(np.ascontiguousarray(image))
        pad = 0
        if not res.detections:
            # a face filling the whole frame (an already cropped photo) is missed by the
            # detector: look again with a border around the photo
            pad = max(H, W) // 2
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            res = det.process(np.ascontiguousarray(padded))
        Hp, Wp = H + 2 * pad, W + 2 * pad
        boxes = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            x0, y0 = b.xmin * Wp - pad, b.ymin * Hp - pad
            boxes.append((np.array([x0, y0, x0 + b.width * Wp, y0 + b.height * Hp], np.float32),
                          float(d.score[0])))
        boxes.sort(key=lambda t: -(t[0][2] - t[0][0]) * (t[0][3] - t[0][1]))
        return boxes

    def mesh_landmarks(self, image: np.ndarray, box: np.ndarray) -> Optional[np.ndarray]:
        """468 mesh points (468, 2) in image pixels for the face in ``box``, or None."""
        _, mesh = self._models()
        H, W = image.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = 2.0 * max(box[2] - box[0], box[3] - box[1])
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = int(round(side))
        # pad with edge pixels where the square leaves the photo
        pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
        src = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image
        crop = np.ascontiguousarray(src[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s])
        res = mesh.process(crop)
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        pts = np.array([[p.x * s + x0, p.y * s + y0] for p in lm[:468]], np.float32)
        return pts

    def landmarks68(self, image: np.ndarray, messages: List[str] = None):
        """All faces' 68 landmarks in ``image``: list of ((68, 2) pixels, box, score)."""
        return [f[:3] for f in self.face_points(image, messages)]

    def face_points(self, image: np.ndarray, messages: List[str] = None):
        """All faces in ``image``: list of ((68, 2) landmarks, box, score, (468, 2) mesh points), pixels."""
        messages = [] if messages is None else messages
        boxes = self.detect_boxes(image)
        if not boxes:
            messages.append("no face found (faces narrower than about 40 px are not detected; "
                            "use a photo where the face is larger and frontal)")
            return []
        if len(boxes) > 1:
            keep = len(boxes) if self.max_faces is None else min(self.max_faces, len(boxes))
            messages.append(f"{len(boxes)} faces found; processing the {keep} largest"
                            if keep < len(boxes) else f"{len(boxes)} faces found; each is processed")
            boxes = boxes[:keep]
        out = []
        for i, (box, score) in enumerate(boxes):
            w = float(box[2] - box[0])
            if w < self.min_face_size:
                messages.append(
                    f"face {i} is too small ({w:.0f} px wide, at least {self.min_face_size} px "
                    f"needed); skipped. Use a higher-resolution photo")
                continue
            pts = self.mesh_landmarks(image, box)
            if pts is None:
                messages.append(f"face {i} was detected but its landmarks could not be fitted "
                                f"(occluded or strongly turned); skipped")
                continue
            out.append((mediapipe_to_68(pts), box, score, pts))
        return out

    # -- full pipeline -----------------------------------------------------------------------
    def crop(self, image: np.ndarray, landmarks: np.ndarray, bbox=None, score: float = 1.0,
             dense: Optional[np.ndarray] = None) -> FaceCrop:
        """Crop one face given its 68 landmarks (68, 2) in original pixels (and optionally its
        468 mesh points, original pixels)."""
        lm = np.asarray(landmarks, np.float64)[:, :2]
        T = deca_crop_transform(lm, self.crop_size, self.scale)
        if bbox is None:
            bbox = np.concatenate([lm.min(0), lm.max(0)])
        return FaceCrop(image=warp_crop(image, T, self.crop_size),
                        landmarks=apply_transform(T, lm).astype(np.float32),
                        landmarks_original=lm.astype(np.float32), tform=T,
                        bbox=np.asarray(bbox, np.float32), score=float(score),
                        dense=None if dense is None else apply_transform(T, dense).astype(np.float32))

    def __call__(self, source: Union[str, np.ndarray], name: str = None) -> PreprocessResult:
        """Process one photo (path or (H, W, C) array). Bad input -> messages, never raises."""
        label = name or (source if isinstance(source, str) else "<array>")
        result = PreprocessResult(source=label)
        try:
            if isinstance(source, str):
                image, notes = load_image(source)
            else:
                from .io import to_rgb_uint8

                notes = []
                image = to_rgb_uint8(source, notes)
            result.messages.extend(notes)
            result.original = image
            with native_stderr_filtered():  # mediapipe's TF Lite / absl lines (model load, first runs)
                found = self.face_points(image, result.messages)
            for lm, box, score, dense in found:
                result.faces.append(self.crop(image, lm, box, score, dense))
        except InputError as e:
            result.messages.append(str(e).replace(f"{label}: ", ""))
        except Exception as e:  # an unexpected failure on one image must not stop a batch
            result.messages.append(f"failed: {type(e).__name__}: {e}")
        return result

    def process_many(self, sources: Sequence[Union[str, np.ndarray]], progress: bool = True,
                     log=None) -> List[PreprocessResult]:
        """Process a list of photos with a progress bar; one line per image with a problem."""
        from tqdm import tqdm

        log = log or (lambda msg: print(msg, file=sys.stderr))
        out = []
        for src in tqdm(list(sources), desc="faces", disable=not progress, leave=False):
            r = self(src)
            if r.messages or not r.ok:
                log(r.summary())
            out.append(r)
        return out


def read_landmark_file(path: str) -> np.ndarray:
    """Read 68 landmarks from .npy (68, 2|3), .txt (68 lines 'x y [c]') or .pts (300-W).

    Returns (68, 3) float32: x, y in original pixels and a confidence (1 when absent).
    """
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif ext == ".pts":
            with open(path) as f:
                lines = [l.strip() for l in f if l.strip()]
            body = lines[lines.index("{") + 1:lines.index("}")]
            arr = np.array([[float(v) for v in l.split()] for l in body])
        else:
            arr = np.loadtxt(path, ndmin=2, delimiter=None)
    except Exception as e:
        raise InputError(f"{path}: cannot read landmarks ({type(e).__name__}: {e}). Expected 68 rows "
                         f"of 'x y' (or 'x y confidence') as .npy, .txt or .pts") from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] != 68 or arr.shape[1] not in (2, 3):
        raise InputError(f"{path}: landmarks have shape {arr.shape}; expected (68, 2) or (68, 3) "
                         f"in the 68-point iBUG order")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: landmarks contain NaN/Inf")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.ones((68, 1), np.float32)], 1)
    return arr
