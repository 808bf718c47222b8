"""Identity features from frozen, pretrained face-recognition networks (MICA's input), and a
face-recognition distance between two images.

    ext = build_identity_extractor({"type": "dlib"})                 # offline default: dlib's ResNet, 128-d
    ext = build_identity_extractor({"type": "onnx", "path": "w600k_r50.onnx"})   # insightface ArcFace, 512-d
    feats = ext.describe_many(images, landmarks)   # images (H, W, 3) uint8 RGB, landmarks (68, 2) pixels
    feats.shape                                    # (N, ext.dim), each row unit length
    identity_distance(photo, render, landmarks_a=lm_photo, landmarks_b=lm_render)   # dlib units

Both networks see the face the way they were trained to:

* dlib (``dlib_face_recognition_resnet_model_v1.dat`` from the ``face-recognition-models``
  package, CC0): dlib's own 150 x 150 chip (``get_face_chip_details``: a similarity fit of the
  68 landmarks 17-67 to dlib's mean face, padding 0.25). Two descriptors closer than 0.6 are the
  same person by dlib's rule (99.38 % on LFW per dlib). Without landmarks, dlib's HOG detector
  (upsampled once; the best-scoring face) and its 68-point predictor find them.
* ArcFace ONNX (insightface's ``w600k_r50.onnx`` / ``glintr100.onnx`` layout): insightface's
  5-point alignment (``norm_crop``: eye centres, nose tip, mouth corners fitted by a similarity to
  the ArcFace template in a 112 x 112 crop), RGB, ``(x - 127.5) / 127.5``, NCHW; models whose
  first nodes already subtract and scale (insightface's check of the first 8 node names) get
  0..255. Run with onnxruntime on the CPU.

The 5 points come from the 68 (iBUG order): eye centres = means of 36-41 and 42-47, nose tip
30, mouth corners 48 and 54, in insightface's order (image-left eye first).
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from typing import Dict, Optional, Sequence

import numpy as np

from ppengine.errors import ConfigError, InputError

# insightface's ArcFace template: 5 points in a 112 x 112 crop (recognition/common/face_align.py)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
DLIB_CHIP = 150       # dlib's face chip side (its recognition network's input)
DLIB_SAME_PERSON = 0.6  # dlib's threshold on the raw descriptor distance
EXTRACTORS = ("dlib", "onnx", "arcface")


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG landmarks -> (5, 2) insightface keypoints: image-left eye centre, image-right
    eye centre, nose tip, left and right mouth corners."""
    lm = np.asarray(landmarks68, np.float64)[:, :2]
    if lm.shape != (68, 2):
        raise InputError(f"expected (68, 2) landmarks, got {lm.shape}")
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def arcface_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """insightface's ``norm_crop``: the face aligned by its 5 points (or 68, reduced) to the
    ArcFace template, ``size`` x ``size`` (a multiple of 112 or of 128), zero border. Same dtype
    as ``image`` (H, W, 3)."""
    import cv2
    from skimage.transform import SimilarityTransform

    pts = np.asarray(landmarks, np.float64)[:, :2]
    pts = five_points(pts) if len(pts) == 68 else pts
    if pts.shape != (5, 2):
        raise InputError(f"arcface_crop: give 5 or 68 landmarks, got {pts.shape[0]}")
    if size % 112 == 0:
        dst = ARCFACE_TEMPLATE * (size / 112.0)
    elif size % 128 == 0:
        dst = ARCFACE_TEMPLATE * (size / 128.0) + [8.0 * size / 128.0, 0.0]
    else:
        raise InputError(f"arcface_crop: size {size} is not a multiple of 112 or 128")
    tf = SimilarityTransform()
    if hasattr(SimilarityTransform, "from_estimate"):
        tf = SimilarityTransform.from_estimate(pts, dst)
    else:  # older scikit-image
        tf.estimate(pts, dst)
    return cv2.warpAffine(np.ascontiguousarray(image), np.asarray(tf.params[:2], np.float64), (size, size),
                          borderValue=0.0)


def arcface_blob(crops: Sequence[np.ndarray], mean: float = 127.5, std: float = 127.5) -> np.ndarray:
    """Aligned RGB crops (S, S, 3) uint8 -> (N, 3, S, S) float32 ``(x - mean) / std``."""
    x = np.stack([np.asarray(c, np.float32) for c in crops]).transpose(0, 3, 1, 2)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _as_uint8(image) -> np.ndarray:
    """A photo path or an (H, W, 3) uint8 / float [0, 1] array -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        from .io import load_image

        return load_image(os.fspath(image))[0]
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


def _file_key(path: str) -> str:
    """A content key of a (possibly large) file: size + hash of its first and last MiB."""
    h = hashlib.sha1(str(os.path.getsize(path)).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, os.path.getsize(path) - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:16]


_DLIB_MODELS: dict = {}


class DlibFaceDescriptor:
    """dlib's ResNet face descriptor (128-d), with dlib's chip alignment.

    ``describe(image, landmarks68)`` returns the unit-length descriptor; ``raw`` the descriptor as
    dlib gives it (norm about 1.4; its distances are the ones dlib's 0.6 rule is about).
    Small faces are enlarged (bilinear) before the chip is cut, so the integer landmark positions
    dlib takes are finer than a pixel of a small render.
    """

    name = "dlib"
    dim = 128

    def __init__(self, upsample: int = 1):
        self.upsample = int(upsample)

    @staticmethod
    def model_folder() -> str:
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or spec.origin is None:
            raise InputError("dlib identity features need the face-recognition-models package "
                             "(pip install face-recognition-models==0.3.0 dlib-bin)")
        return os.path.join(os.path.dirname(spec.origin), "models")

    def _load(self, detector: bool = False):
        """(dlib, detector or None, 68-point predictor or None, recognition network): read once per
        process and shared by every descriptor (the detector and predictor only when asked for)."""
        if "dlib" not in _DLIB_MODELS:
            try:
                import dlib
            except ImportError:
                raise InputError("dlib identity features need dlib (pip install dlib-bin)") from None
            _DLIB_MODELS["dlib"] = dlib
            _DLIB_MODELS["rec"] = dlib.face_recognition_model_v1(
                os.path.join(self.model_folder(), "dlib_face_recognition_resnet_model_v1.dat"))
        dlib = _DLIB_MODELS["dlib"]
        if detector and "det" not in _DLIB_MODELS:
            _DLIB_MODELS["det"] = dlib.get_frontal_face_detector()
            _DLIB_MODELS["sp"] = dlib.shape_predictor(os.path.join(self.model_folder(), "shape_predictor_68_face_landmarks.dat"))
        return dlib, _DLIB_MODELS.get("det"), _DLIB_MODELS.get("sp"), _DLIB_MODELS["rec"]

    def key(self) -> str:
        """Identifies the network (for feature caches)."""
        return "dlib-" + _file_key(os.path.join(self.model_folder(), "dlib_face_recognition_resnet_model_v1.dat"))

    def landmarks(self, image) -> np.ndarray:
        """dlib's own 68 landmarks (68, 2) of the best-scoring face (HOG detector, upsampled
        ``upsample`` times): InputError when there is none."""
        dlib, det, sp, _ = self._load(detector=True)
        img = _as_uint8(image)
        rects, scores, _ = det.run(img, self.upsample, 0)
        if not len(rects):
            raise InputError("dlib found no face in the image (use a larger, frontal face, or give its landmarks)")
        s = sp(img, rects[int(np.argmax(scores))])
        return np.array([[p.x, p.y] for p in s.parts()], np.float64)

    def raw(self, image, landmarks68: Optional[np.ndarray] = None) -> np.ndarray:
        """The 128-d descriptor as dlib computes it (not normalised)."""
        dlib, _, _, rec = self._load()
        img = _as_uint8(image)
        lm = self.landmarks(img) if landmarks68 is None else np.asarray(landmarks68, np.float64)[:, :2]
        if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
            raise InputError(f"dlib descriptor: expected (68, 2) finite landmarks, got {lm.shape}")
        # work on a region around the face, enlarged so the face spans at least the chip
        lo, hi = lm.min(0), lm.max(0)
        side = float(max(hi - lo))
        if side < 4:
            raise InputError(f"dlib descriptor: the landmarks span {side:.1f} px; the face is too small")
        f = max(1, int(math.ceil(DLIB_CHIP / side)))
        x0, y0 = np.floor(lo - side).astype(int)
        x1, y1 = np.ceil(hi + side).astype(int)
        H, W = img.shape[:2]
        pad = max(0, -x0, -y0, x1 - W, y1 - H)
        src = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else img
        region = src[y0 + pad:y1 + pad, x0 + pad:x1 + pad]
        pts = (lm - [x0, y0] + 0.5) * f - 0.5
        if f > 1:
            import cv2

            region = cv2.resize(region, (region.shape[1] * f, region.shape[0] * f), interpolation=cv2.INTER_LINEAR)
        r = dlib.rectangle(*[int(round(v)) for v in (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())])
        shape = dlib.full_object_detection(r, dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in pts]))
        return np.asarray(rec.compute_face_descriptor(np.ascontiguousarray(region), shape), np.float64)

    def describe(self, image, landmarks68: Optional[np.ndarray] = None) -> np.ndarray:
        """(128,) float32 unit-length descriptor of the face in ``image`` (found by dlib when no
        landmarks are given)."""
        v = self.raw(image, landmarks68)
        return (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)

    def describe_many(self, images: Sequence, landmarks: Sequence) -> np.ndarray:
        """(N, 128) unit descriptors of images with their (68, 2) landmarks (None: detected)."""
        return np.stack([self.describe(im, lm) for im, lm in zip(images, landmarks)]) if len(images) else \
            np.zeros((0, self.dim), np.float32)


class OnnxArcFace:
    """An ArcFace-style recognition network in ONNX (insightface layout: (N, 3, 112, 112) aligned
    RGB -> (N, 512)) run with onnxruntime; features unit length, as MICA normalises them."""

    name = "onnx"

    def __init__(self, path: str):
        if not path:
            raise ConfigError("identity: {type: onnx} needs path: /path/to/w600k_r50.onnx (an insightface "
                              "ArcFace model)")
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise InputError(f"identity ONNX model {path!r} not found")
        import onnx
        import onnxruntime as ort

        try:
            graph = onnx.load(path, load_external_data=False).graph
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 (a broken file is the user's)
            raise InputError(f"{path}: cannot load the ONNX model ({type(e).__name__}: {e})") from None
        inp = self.session.get_inputs()
        shape = list(inp[0].shape) if inp else []
        if len(inp) != 1 or len(shape) != 4 or shape[1] not in (3, "3"):
            raise InputError(f"{path}: expected one (N, 3, H, W) image input (insightface ArcFace layout), got "
                             f"{[(i.name, i.shape) for i in inp]}")
        self.input_name = inp[0].name
        self.size = int(shape[2]) if isinstance(shape[2], int) else 112
        out = self.session.get_outputs()[0].shape
        self.dim = int(out[-1]) if isinstance(out[-1], int) else None
        # insightface's rule: a model that subtracts and scales in its first nodes takes 0..255
        names = [n.name for n in graph.node[:8]]
        normalised_inside = any(n.startswith(("Sub", "_minus")) for n in names) and \
            any(n.startswith(("Mul", "_mul")) for n in names)
        self.mean, self.std = (0.0, 1.0) if normalised_inside else (127.5, 127.5)
        self.path = path

    def key(self) -> str:
        return "onnx-" + _file_key(self.path)

    def run(self, blob: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) prepared input -> (N, D) raw outputs."""
        return np.asarray(self.session.run(None, {self.input_name: blob})[0], np.float32).reshape(len(blob), -1)

    def describe_many(self, images: Sequence, landmarks: Sequence) -> np.ndarray:
        """(N, D) unit features of images (H, W, 3) with their 68 (or 5) landmarks in pixels."""
        if not len(images):
            return np.zeros((0, self.dim or 0), np.float32)
        crops = [arcface_crop(_as_uint8(im), lm, self.size) for im, lm in zip(images, landmarks)]
        f = self.run(arcface_blob(crops, self.mean, self.std))
        return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def describe(self, image, landmarks) -> np.ndarray:
        return self.describe_many([image], [landmarks])[0]


def check_identity_spec(spec, where: str = "model.identity") -> Dict:
    """A validated copy of an identity-feature spec: ``{type: dlib}``, ``{type: onnx, path: ...}``
    or ``{type: arcface}`` (the Paddle iresnet inside a MICA model)."""
    spec = {"type": spec} if isinstance(spec, str) else dict(spec or {"type": "dlib"})
    kind = spec.get("type")
    if kind not in EXTRACTORS:
        raise ConfigError(f"{where}.type={kind!r}: use one of {list(EXTRACTORS)}")
    allowed = {"dlib": {"type", "upsample"}, "onnx": {"type", "path"}, "arcface": {"type"}}[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra} for type {kind!r} (allowed: {sorted(allowed)})")
    return spec


def build_identity_extractor(spec):
    """The extractor a spec names (see :func:`check_identity_spec`); 'arcface' runs inside a MICA
    model (Paddle) and has no stand-alone extractor here."""
    spec = check_identity_spec(spec)
    if spec["type"] == "dlib":
        return DlibFaceDescriptor(upsample=spec.get("upsample", 1))
    if spec["type"] == "onnx":
        return OnnxArcFace(spec.get("path"))
    raise ConfigError("identity {type: arcface} is MICA's iresnet100 in Paddle: its features are computed by the "
                      "MICA model from aligned crops, not in the data pipeline; use {type: dlib} or {type: onnx} here")


def identity_distance(image_a, image_b, landmarks_a: Optional[np.ndarray] = None,
                      landmarks_b: Optional[np.ndarray] = None) -> float:
    """Face-recognition distance between the faces of two images (e.g. a photo and the textured
    render of its reconstruction): the Euclidean distance of dlib's raw descriptors (lower is more
    alike; below 0.6 dlib calls them the same person). Images: paths or (H, W, 3) uint8 / float
    [0, 1] arrays; landmarks: (68, 2) pixels of each face, found by dlib when None (InputError when
    dlib finds no face)."""
    d = DlibFaceDescriptor()
    return float(np.linalg.norm(d.raw(image_a, landmarks_a) - d.raw(image_b, landmarks_b)))
