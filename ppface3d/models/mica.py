"""MICA (Zielon et al. 2022): a metrical neutral face shape from identity features.

    model = MICA(identity={"type": "dlib"}, n_shape=10)          # trained here: configs/mica.yml
    model = MICA(identity={"type": "arcface"}, checkpoint="mica.tar", flame_model_path="generic_model.pkl")
    out = model({"identity": feats})     # feats (N, D) or (B, K, D) -> out["shape"] (B*K, n_shape), out["verts_neutral"]
    shapes = model.predict_shape(images, landmarks)      # photos (H, W, 3) + their 68 landmarks -> (N, n_shape)
    shape = clip_shape(model, frames, landmarks)          # one shape for a clip (mean over frames): (n_shape,)

A frozen face-recognition network gives each photo an identity feature (unit length, as MICA's
``F.normalize``); MICA's mapping network (``MappingNetwork``: Linear(D, 300) and ``mapping_layers``
(3) Linear(300, 300), each followed by LeakyReLU(0.2), then Linear(300, n_shape)) turns it into a
FLAME shape code, and FLAME (the :class:`~ppface3d.face_model.FaceModel`'s) gives the neutral
mesh. The loss is MICA's region-weighted L1 on that mesh (:class:`~ppface3d.losses.MICALoss`).
Identity networks (``identity``): dlib's ResNet (128-d, offline default) and ArcFace ONNX models
compute their features in the data pipeline (:class:`~ppface3d.data.IdentitySyntheticFaces`, cached);
``{type: arcface}`` is MICA's own iresnet100 in Paddle (:mod:`.iresnet`), inside this model, for
MICA's released ``mica.tar`` (``arcface`` + ``flameModel``), read without torch. Expression,
pose and camera are not MICA's: the reconstructor takes them from the fitter or DECA.
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppengine.errors import ConfigError, InputError
from ppengine.registry import LOSSES, MODELS

from ..data.identity_features import arcface_blob, arcface_crop, build_identity_extractor, check_identity_spec
from ..face_model import FaceModel
from .deca_release import _zero_init, torch_to_paddle_state
from .iresnet import iresnet100

ARCFACE_DIM = 512
_MICA_FIX = "Give MICA's released mica.tar (models/arcface.py iresnet100 + models/generator.py mapping network)."


class MappingNetwork(nn.Layer):
    """MICA's ``MappingNetwork`` (models/generator.py), with its layer names.

    ``network``: Linear(z_dim, hidden_dim) then ``hidden`` Linear(hidden_dim, hidden_dim), each
    followed by LeakyReLU(0.2) (with ``hidden`` > 5 the input is concatenated back after layer
    ``hidden // 2``, as MICA); ``output``: Linear(hidden_dim, out_dim). Initialisation as MICA:
    Kaiming-normal (LeakyReLU 0.2, fan-in) hidden weights, the output layer's default weights x 0.25.
    """

    def __init__(self, z_dim: int, hidden_dim: int = 300, out_dim: int = 300, hidden: int = 3):
        super().__init__()
        self.skips = [int(hidden / 2)] if hidden > 5 else []
        kaiming = paddle.ParamAttr(initializer=nn.initializer.KaimingNormal(negative_slope=0.2,
                                                                             nonlinearity="leaky_relu"))
        layers = [nn.Linear(z_dim, hidden_dim, weight_attr=kaiming)]
        layers += [nn.Linear(hidden_dim + (z_dim if i in self.skips else 0), hidden_dim, weight_attr=kaiming)
                   for i in range(int(hidden))]
        self.network = nn.LayerList(layers)
        bound = 1.0 / np.sqrt(hidden_dim)  # torch's default Linear range, weights then x 0.25 (MICA)
        self.output = nn.Linear(hidden_dim, out_dim,
                                weight_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-0.25 * bound, 0.25 * bound)),
                                bias_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound)))

    def forward(self, z: paddle.Tensor) -> paddle.Tensor:
        h = z
        for i, layer in enumerate(self.network):
            h = F.leaky_relu(layer(h), negative_slope=0.2)
            if i in self.skips:
                h = paddle.concat([z, h], 1)
        return self.output(h)


def read_mica_checkpoint(path: str) -> Dict[str, Dict[str, np.ndarray]]:
    """``mica.tar`` -> {'arcface': state, 'flameModel': state} (NumPy), read through the allow-list
    (:func:`ppengine.safe_load.load_torch_checkpoint`: a file asking for code is refused)."""
    from ppengine.safe_load import load_torch_checkpoint, torch_state_dict

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"model.checkpoint: {path!r} not found (MICA's mica.tar; see docs/released_models.md)")
    ckpt = load_torch_checkpoint(path)
    if not isinstance(ckpt, dict) or "flameModel" not in ckpt:
        have = list(ckpt.keys())[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{path}: not a MICA checkpoint: expected entries ['arcface', 'flameModel'], found {have}")
    return {k: torch_state_dict(ckpt, path, k) for k in ("arcface", "flameModel") if k in ckpt}


@MODELS.register()
class MICA(nn.Layer):
    """MICA: identity features -> mapping network -> FLAME shape -> neutral mesh.

    Args:
        identity: the identity network: ``{type: dlib}`` (128-d, default), ``{type: onnx, path: ...}``
            (an insightface ArcFace model) or ``{type: arcface}`` (MICA's iresnet100 in Paddle).
        n_shape: FLAME shape coefficients predicted (MICA: 300).
        hidden_dim, mapping_layers: mapping network width and hidden layers (MICA: 300, 3).
        n_exp, n_tex, image_size, uv_size, flame_model_path, flame_landmark_path, albedo_path,
            albedo_seed, render_backend: the :class:`~ppface3d.face_model.FaceModel` (renders and
            the expression / pose / camera that the reconstructor adds).
        loss: loss config (default ``{type: MICALoss}``: MICA's region weights).
        checkpoint: MICA's ``mica.tar`` (needs ``identity: {type: arcface}``).
        arcface_width: iresnet100 stem width (64 = insightface / MICA; smaller only in tests).
    """

    def __init__(self, identity: Optional[dict] = None, n_shape: int = 300, hidden_dim: int = 300,
                 mapping_layers: int = 3, n_exp: int = 50, n_tex: int = 50, image_size: int = 224, uv_size: int = 64,
                 flame_model_path: Optional[str] = None, flame_landmark_path: Optional[str] = None,
                 albedo_path: Optional[str] = None, albedo_seed: int = 0, render_backend: str = "auto",
                 loss: Optional[dict] = None, checkpoint: Optional[str] = None, arcface_width: int = 64):
        super().__init__()
        self.identity = check_identity_spec(identity)
        kind = self.identity["type"]
        if checkpoint and kind != "arcface":
            raise ConfigError(f"model.checkpoint={checkpoint!r} and model.identity.type={kind!r} disagree: mica.tar's "
                              "mapping network reads its own ArcFace trunk's features; set model.identity={type: arcface}")
        states = read_mica_checkpoint(checkpoint) if checkpoint else None  # a bad file fails before any building
        self.extractor = None
        if kind == "arcface":
            with (_zero_init() if states is not None else contextlib.nullcontext()):  # released weights set every parameter
                self.arcface = iresnet100(width=int(arcface_width))
            for p in self.arcface.parameters():
                p.stop_gradient = True  # frozen (MICA fine-tunes its last stage; not done here)
            self.feature_dim = self.arcface.num_features
        else:
            self.arcface = None
            self.extractor = build_identity_extractor(self.identity)
            self.feature_dim = int(self.extractor.dim or ARCFACE_DIM)
        self.n_shape = int(n_shape)
        self.mapping = MappingNetwork(self.feature_dim, int(hidden_dim), self.n_shape, int(mapping_layers))
        if states is not None:  # a file that does not fit fails before the face model is built
            self._load_networks(checkpoint, states)
        self.image_size = int(image_size)
        self.face = FaceModel(n_shape=self.n_shape, n_exp=n_exp, n_tex=n_tex, image_size=self.image_size,
                              uv_size=uv_size, flame_model_path=flame_model_path,
                              flame_landmark_path=flame_landmark_path, albedo_path=albedo_path,
                              albedo_seed=albedo_seed, render_backend=render_backend)
        self.loss_fn = LOSSES.build(loss or {"type": "MICALoss"}, key_path="model.loss")
        self.loss_fn.setup(self.face)
        if states is not None:
            self._check_flame(checkpoint, states)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Engine hook before building: the data's identity features, FLAME files and shape
        coefficients agree with the model's (each disagreement names both keys)."""
        from .config_checks import _SAME_FACE, _mismatch, defaults_of

        model = dict(defaults_of(cls), **{k: v for k, v in (cfg.get("model") or {}).items() if v is not None})
        spec = check_identity_spec(model.get("identity"))
        for split, d in (cfg.get("data") or {}).items():
            if not isinstance(d, dict) or d.get("type") != "IdentitySyntheticFaces":
                continue
            feats = check_identity_spec(d.get("features"), f"data.{split}.features")
            if feats != spec:
                raise _mismatch(cfg, f"data.{split}.features", feats, "model.identity", spec,
                                "the model must read the features of the network it was trained on; reference one "
                                "from the other (features: ${model.identity})")
            for k in _SAME_FACE:
                if d.get(k) != model.get(k):
                    raise _mismatch(cfg, f"data.{split}.{k}", d.get(k), f"model.{k}", model.get(k),
                                    "the true neutral meshes must come from the model's own FLAME")
            varying = d.get("shape_components") or d.get("n_shape", 100)
            key = f"data.{split}.shape_components" if d.get("shape_components") else f"data.{split}.n_shape"
            if int(varying) > int(model["n_shape"]):
                raise _mismatch(cfg, key, varying, "model.n_shape", model["n_shape"],
                                "the data varies shape coefficients the model cannot predict")

    # ------------------------------------------------------------------ released checkpoint
    def load_checkpoint(self, path: str, states: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> None:
        """Load MICA's ``mica.tar``: ``flameModel.regressor`` -> :attr:`mapping`, ``arcface`` ->
        :attr:`arcface` (strict names and shapes). ``flameModel.generator`` holds MICA's copy of
        FLAME's arrays: only its vertex count is checked against this model's FLAME."""
        states = read_mica_checkpoint(path) if states is None else states
        self._load_networks(path, states)
        self._check_flame(path, states)

    def _load_networks(self, path: str, states: Dict[str, Dict[str, np.ndarray]]) -> None:
        flame_sd = states["flameModel"]
        reg = {k[len("regressor."):]: v for k, v in flame_sd.items() if k.startswith("regressor.")}
        other = sorted(k for k in flame_sd if not k.startswith(("regressor.", "generator.")))
        if other:
            raise InputError(f"{path} [flameModel]: unexpected entries {other[:5]}. {_MICA_FIX}")
        arrays = torch_to_paddle_state(reg, self.mapping, f"{path} [flameModel.regressor]", "MICA's", _MICA_FIX)
        self.mapping.set_state_dict({k: paddle.to_tensor(v) for k, v in arrays.items()})
        if self.arcface is not None:
            if "arcface" not in states:
                raise InputError(f"{path}: no 'arcface' entry (MICA's iresnet100). {_MICA_FIX}")
            arrays = torch_to_paddle_state(states["arcface"], self.arcface, f"{path} [arcface]", "MICA's", _MICA_FIX)
            self.arcface.set_state_dict({k: paddle.to_tensor(v) for k, v in arrays.items()})

    def _check_flame(self, path: str, states: Dict[str, Dict[str, np.ndarray]]) -> None:
        vt = states["flameModel"].get("generator.v_template")
        V = self.face.flame.num_vertices
        if vt is not None and vt.shape[0] != V:
            raise InputError(f"{path}: MICA was trained on a FLAME mesh of {vt.shape[0]} vertices, model.flame_model_path "
                             f"has {V}: give FLAME 2020's generic_model.pkl")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.arcface is not None:
            self.arcface.eval()  # frozen: batch norms keep their statistics
        return self

    # ------------------------------------------------------------------ features -> shape
    def encode_features(self, feats: paddle.Tensor) -> paddle.Tensor:
        """Identity features (N, D) -> shape codes (N, n_shape) (features normalised first, as MICA)."""
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise InputError(f"MICA: identity features must be (N, {self.feature_dim}) for {self.identity['type']}, "
                             f"got {list(feats.shape)}")
        return self.mapping(F.normalize(feats, axis=-1))

    def arcface_features(self, blob: paddle.Tensor) -> paddle.Tensor:
        """Aligned ArcFace input (N, 3, 112, 112), RGB (x - 127.5) / 127.5 -> (N, 512) (iresnet100)."""
        if self.arcface is None:
            raise InputError(f"MICA with identity {self.identity['type']!r} has no ArcFace trunk")
        with paddle.no_grad():
            return self.arcface(blob)

    def _features(self, batch: Dict) -> paddle.Tensor:
        if "identity" in batch:
            x = batch["identity"]
            return x.reshape([-1, x.shape[-1]])
        if "arcface" in batch and self.arcface is not None:
            x = batch["arcface"]
            return self.arcface_features(x.reshape([-1] + list(x.shape[-3:])))
        raise InputError("MICA: the batch has no 'identity' features (IdentitySyntheticFaces gives them)"
                         + (" or 'arcface' crops" if self.arcface is not None else ""))

    def forward(self, batch: Dict) -> Dict:
        """batch['identity'] (B, K, D) or (N, D) (or 'arcface' (.., 3, 112, 112)) -> 'shape'
        (N, n_shape) and 'verts_neutral' (N, V, 3), N = B * K."""
        shape = self.encode_features(self._features(batch))
        return {"shape": shape, "verts_neutral": self.face.neutral(shape)["vertices"]}

    def true_neutral(self, batch: Dict, n: int) -> paddle.Tensor:
        """(n, V, 3) ground-truth neutral meshes: the batch's, or FLAME of its 'shape' (B, S) per image."""
        if "gt_verts_neutral" in batch:
            g = batch["gt_verts_neutral"]
            return g.reshape([-1] + list(g.shape[-2:]))
        shape = batch["shape"]
        if shape.shape[1] > self.n_shape and float(shape[:, self.n_shape:].abs().max()) > 0:
            raise InputError(f"MICA: the data's shape codes vary beyond the model's n_shape={self.n_shape}")
        with paddle.no_grad():
            verts = self.face.neutral(shape[:, :self.n_shape])["vertices"]
        K = n // shape.shape[0]
        return verts.unsqueeze(1).expand([verts.shape[0], K] + verts.shape[1:]).reshape([n] + verts.shape[1:])

    def losses(self, batch: Dict, outputs: Dict) -> Dict[str, paddle.Tensor]:
        pred = outputs["verts_neutral"]
        gt = self.true_neutral(batch, pred.shape[0])
        loss = self.loss_fn(pred, gt)
        with paddle.no_grad():
            mm = (pred - gt).norm(axis=-1).mean() * 1000.0
        return {"loss": loss, "vertex_mm": mm}

    @paddle.no_grad()
    def eval_step(self, batch: Dict) -> Dict:
        """Outputs for the metrics: forward outputs, neutral landmarks, the mean face and faces."""
        was = self.training
        self.eval()
        shape = self.encode_features(self._features(batch))
        neutral = self.face.neutral(shape)
        mean = self.face.neutral(paddle.zeros([1, self.n_shape]))
        out = {"shape": shape, "verts_neutral": neutral["vertices"], "lmk3d_neutral": neutral["landmarks68"],
               "verts_mean": mean["vertices"][0], "lmk3d_mean": mean["landmarks68"][0], "faces": self.face.faces}
        if was:
            self.train()
        return out

    @paddle.no_grad()
    def visuals(self, batch: Dict, outputs: Dict) -> Dict[str, np.ndarray]:
        """Up to 4 rows: [input image |] predicted neutral shape | true neutral shape (grey renders)."""
        pred = outputs["verts_neutral"][:4]
        gt = self.true_neutral(batch, outputs["verts_neutral"].shape[0])[:4]
        cam = paddle.to_tensor(np.tile(self.face.framing_camera(self.face.mean_landmarks())[None], (pred.shape[0], 1)))
        cols = [self.face.render({"vertices": v, "cam": cam}, mode="shape")["images"] for v in (pred, gt)]
        if "image" in batch:
            img = batch["image"]
            img = img.reshape([-1] + list(img.shape[-3:]))[:pred.shape[0]]
            cols.insert(0, F.interpolate(img, size=[self.image_size, self.image_size], mode="bilinear"))
        grid = np.concatenate([np.concatenate([c[i].numpy().transpose(1, 2, 0) for c in cols], 1)
                               for i in range(pred.shape[0])], 0)
        return {"mica": (np.clip(grid, 0, 1) * 255).astype(np.uint8)}

    # ------------------------------------------------------------------ photos
    def identity_features(self, images: Sequence, landmarks: Sequence) -> np.ndarray:
        """Unit identity features (N, D) of faces: images (H, W, 3) uint8 or float [0, 1] RGB, each
        with its 68 landmarks (68, 2) in pixels (the alignment of the configured network)."""
        if len(images) != len(landmarks):
            raise InputError(f"MICA: {len(images)} images but {len(landmarks)} landmark sets")
        if self.arcface is None:
            return self.extractor.describe_many(images, landmarks)
        from ..data.identity_features import _as_uint8

        blob = arcface_blob([arcface_crop(_as_uint8(im), lm, self.arcface.input_size) for im, lm in zip(images, landmarks)])
        f = self.arcface_features(paddle.to_tensor(blob))
        return F.normalize(f, axis=-1).numpy()

    @paddle.no_grad()
    def predict_shape(self, images: Sequence, landmarks: Sequence) -> np.ndarray:
        """Shape codes (N, n_shape) of faces in photos (see :meth:`identity_features`)."""
        was = self.training
        self.eval()
        feats = self.identity_features(images, landmarks)
        shape = self.encode_features(paddle.to_tensor(np.asarray(feats, np.float32))).numpy()
        if was:
            self.train()
        return shape

    def shape_from_faces(self, faces: Sequence) -> np.ndarray:
        """Shape codes (N, n_shape) of :class:`~ppface3d.data.preprocess.FaceCrop` s (their crop
        images and crop landmarks)."""
        return self.predict_shape([f.image for f in faces], [f.landmarks for f in faces])


def clip_shape(model: MICA, frames: Sequence, landmarks: Sequence) -> np.ndarray:
    """One FLAME shape for a clip: the mean of MICA's shape codes of its frames.

    Args:
        model: a :class:`MICA` (e.g. ``ppface3d.apps.mica_reconstruct.load_mica(...)``).
        frames: images (H, W, 3) uint8 or float [0, 1] RGB (whole frames or face crops).
        landmarks: per frame, the face's 68 iBUG landmarks (68, 2) in that image's pixels.
    Returns:
        (n_shape,) float32.
    """
    if not len(frames):
        raise InputError("clip_shape: no frames")
    return model.predict_shape(frames, landmarks).mean(0).astype(np.float32)
