"""DECA's coarse-stage losses in Paddle (landmarks, eye/lip closure, photometric, identity,
shape consistency, regularizers), weighted as in DECA's default config.

Landmarks are (B, 68, 2) in DECA's normalised crop coordinates ([-1, 1], y down); ground truth
is (B, 68, 3) with a confidence in the last column.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import paddle
import paddle.nn.functional as F

from ppengine.errors import ConfigError
from ppengine.registry import LOSSES, MODELS

# DECA's per-landmark weights (lossfunc.weighted_landmark_loss): chin sides, nose, mouth heavier.
_LMK_WEIGHTS = np.ones(68, np.float32)
_LMK_WEIGHTS[5:7] = 2.0
_LMK_WEIGHTS[10:12] = 2.0
_LMK_WEIGHTS[27:36] = 1.5
_LMK_WEIGHTS[[30, 31, 35]] = 3.0
_LMK_WEIGHTS[48:68] = 1.5
_LMK_WEIGHTS[[48, 54]] = 3.0

# loss.geometry: channels the encoder predicts per cell (normal x, y, z, relative depth; the data adds coverage)
GEOMETRY_CHANNELS = 4

EYE_UP, EYE_DOWN = [37, 38, 43, 44], [41, 40, 47, 46]
LIP_UP, LIP_DOWN = [61, 62, 63], [67, 66, 65]


def _with_conf(gt: paddle.Tensor) -> paddle.Tensor:
    if gt.shape[-1] == 2:
        return paddle.concat([gt, paddle.ones(gt.shape[:-1] + [1], gt.dtype)], -1)
    return gt


def landmark_loss(pred: paddle.Tensor, gt: paddle.Tensor, weighted: bool = True) -> paddle.Tensor:
    """Confidence-weighted L1 landmark loss (DECA ``batch_kp_2d_l1_loss``).

    pred (B, 68, 2); gt (B, 68, 2|3). Sum over points of ``w_i * c_i * |pred - gt|_1``
    divided by ``2 * sum(w_i * c_i)``.
    """
    gt = _with_conf(gt)
    conf = gt[..., 2]
    if weighted:
        conf = conf * paddle.to_tensor(_LMK_WEIGHTS)[None, :]
    diff = (pred[..., :2] - gt[..., :2]).abs().sum(-1)
    return (diff * conf).sum() / (conf.sum() * 2.0 + 1e-8)


def _pair_dist(lm, up, down):
    a = paddle.gather(lm, paddle.to_tensor(up), axis=1)
    b = paddle.gather(lm, paddle.to_tensor(down), axis=1)
    return paddle.sqrt(((a - b) ** 2).sum(-1) + 1e-12)


def eye_closure_loss(pred: paddle.Tensor, gt: paddle.Tensor) -> paddle.Tensor:
    """L1 between predicted and target upper/lower eyelid distances (4 pairs). (B, 68, >=2)."""
    return (_pair_dist(pred[..., :2], EYE_UP, EYE_DOWN) - _pair_dist(gt[..., :2], EYE_UP, EYE_DOWN)).abs().mean()


def lip_closure_loss(pred: paddle.Tensor, gt: paddle.Tensor) -> paddle.Tensor:
    """L1 between predicted and target inner-lip distances (3 pairs). (B, 68, >=2)."""
    return (_pair_dist(pred[..., :2], LIP_UP, LIP_DOWN) - _pair_dist(gt[..., :2], LIP_UP, LIP_DOWN)).abs().mean()


def photometric_loss(pred: paddle.Tensor, image: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
    """DECA's masked L1: mean over all pixels of ``mask * |pred - image|``.

    pred, image (B, 3, H, W); mask (B, 1, H, W) or (B, H, W).
    """
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    return (mask * (pred - image).abs()).mean()


def identity_loss(feat_pred: paddle.Tensor, feat_real: paddle.Tensor) -> paddle.Tensor:
    """1 - cosine similarity of identity features (B, D), averaged (DECA's VGGFace2 loss)."""
    return (1.0 - F.cosine_similarity(feat_pred, feat_real, axis=-1)).mean()


def code_l2(code: paddle.Tensor) -> paddle.Tensor:
    """DECA's code regularizer: sum(code ** 2) / 2 (summed over the batch, as DECA does)."""
    return (code ** 2).sum() / 2.0


def light_regularizer(light: paddle.Tensor) -> paddle.Tensor:
    """Keeps SH lighting near white: mean of (light - mean over RGB) ** 2. light (B, 9, 3)."""
    return ((light.mean(axis=2, keepdim=True) - light) ** 2).mean()


def consistency_order(batch_size: int, K: int, rng: np.random.Generator = None) -> np.ndarray:
    """DECA's shape-consistency permutation: shuffle within each group of K images of a subject.

    Returns (batch_size * K,) int64 indices; every index stays inside its own group and, for
    K > 1, no group is left unchanged.
    """
    rng = rng or np.random.default_rng()
    order = []
    for i in range(batch_size):
        if K > 1:
            p = rng.permutation(K)
            while np.all(p == np.arange(K)):
                p = rng.permutation(K)
        else:
            p = np.arange(K)
        order.append(p + i * K)
    return np.concatenate(order).astype(np.int64)


def build_frozen(cfg: dict, key_path: str):
    """A network of the MODELS registry used inside a loss (identity features, ID-MRF features):
    built from ``cfg``, in eval mode, its parameters excluded from training."""
    net = MODELS.build(cfg, key_path=key_path)
    net.eval()
    for p in net.parameters():
        p.stop_gradient = True
    return net


@LOSSES.register()
class DECALoss:
    """DECA coarse losses with DECA's default weights.

    Args:
        lmk: weighted landmark loss weight (DECA 1.0); ``weighted_landmarks`` as DECA's useWlmk.
        eyed, lipd: eye / lip closure weights (DECA 1.0 / 0.5).
        photo: masked photometric weight (DECA 2.0).
        photo_start: training iteration from which the photometric (and identity) terms are
            on; before it the model is not rendered (on configs/deca.yml a step then costs about a
            third as much). DECA trains in stages too: a pretraining stage with landmarks only
            (photometric and identity weights 0), then the coarse stage with the photometric
            loss. 0 (default) = on from the start.
        id: identity loss weight (DECA 0.2); only active when ``identity_net`` is configured.
        identity_net: config of a feature network from the MODELS registry, e.g.
            ``{type: IdentityFeatureNet, weights: /path/to/face_recognition.safetensors}``.
            None (default) turns the identity loss off.
        reg_shape, reg_exp, reg_tex: code L2 weights (DECA 1e-4 each).
        reg_light: light whiteness weight (DECA 1.0).
        shape_consistency: DECA's swap of shape codes among the K images of a subject.
        param: weight of a supervised L2 loss on FLAME codes against ground-truth codes, used
            only when the batch carries them (synthetic data); 0 (DECA) = off.
        shape_vertex: weight of a supervised loss on the neutral (zero expression and pose)
            mesh: mean vertex distance in millimetres to the ground-truth neutral mesh, used
            only when the batch carries it (synthetic data); 0 (DECA) = off.
        shape_param: weight of a supervised loss on the shape code alone: squared error summed
            over the predicted coefficients, averaged over images (synthetic data); 0 = off.
        shape_metric: weight of a supervised shape-code loss weighted by what each coefficient
            costs the evaluation: ``e M e`` with M from
            :func:`ppface3d.losses.metrics.shape_error_matrix` (the mean squared face-region
            vertex error in mm^2 after similarity alignment, to first order), averaged over
            images (synthetic data); M is computed in :meth:`setup` from the model's face model; 0 = off.
        geometry: weight of a dense auxiliary term (synthetic data; not in DECA): the encoder's
            stride-8 features predict the rendered face's normals and relative depth per cell
            (``SyntheticFaces(geometry=True)``), L1 weighted by the face's coverage of each
            cell; the model adds the small prediction head when this is > 0; 0 = off.
    """

    def __init__(self, lmk: float = 1.0, weighted_landmarks: bool = True, eyed: float = 1.0,
                 lipd: float = 0.5, photo: float = 2.0, id: float = 0.2, identity_net: dict = None,
                 reg_shape: float = 1e-4, reg_exp: float = 1e-4, reg_tex: float = 1e-4,
                 reg_light: float = 1.0, shape_consistency: bool = True, param: float = 0.0,
                 shape_vertex: float = 0.0, shape_param: float = 0.0, shape_metric: float = 0.0,
                 geometry: float = 0.0, photo_start: int = 0):
        self.w = dict(lmk=lmk, eyed=eyed, lipd=lipd, photo=photo, id=id, reg_shape=reg_shape,
                      reg_exp=reg_exp, reg_tex=reg_tex, reg_light=reg_light, param=param,
                      shape_vertex=shape_vertex, shape_param=shape_param, shape_metric=shape_metric,
                      geometry=geometry)
        self.shape_metric_matrix = None
        self.weighted_landmarks = bool(weighted_landmarks)
        self.photo_start = int(photo_start)
        self.shape_consistency = bool(shape_consistency)
        self.identity_net = None
        if identity_net and id > 0:
            self.identity_net = build_frozen(identity_net, "model.loss.identity_net")

    # ------------------------------------------------------------------ what the model must provide
    def setup(self, face) -> None:
        """Called once by the model with its :class:`~ppface3d.face_model.FaceModel`: terms that
        need the face model's geometry prepare it here (``shape_metric``: its error matrix)."""
        if self.w["shape_metric"] > 0:
            from .metrics import shape_error_matrix

            self.shape_metric_matrix = paddle.to_tensor(
                shape_error_matrix(face.flame, face.code_sizes["shape"]).astype(np.float32))

    @property
    def aux_channels(self) -> int:
        """Channels of the per-cell auxiliary maps the encoder must predict (``geometry``), or 0."""
        return GEOMETRY_CHANNELS if self.w["geometry"] > 0 else 0

    @property
    def use_identity(self) -> bool:
        return self.identity_net is not None and self.w["id"] > 0

    def wants(self, key: str) -> bool:
        """Whether a prediction beyond the landmarks is used: 'image' (the render),
        'identity_image' (render pasted over the photo), 'verts_neutral' (neutral mesh)."""
        if key == "image":
            return self.needs_render()
        if key == "identity_image":
            return self.use_identity
        if key == "verts_neutral":
            return self.w["shape_vertex"] > 0
        raise KeyError(f"DECALoss.wants: unknown prediction {key!r}")

    def needs_render(self, step: int = None) -> bool:
        """Whether training iteration ``step`` (None: past every stage) uses the rendered image."""
        if step is not None and step < self.photo_start:
            return False
        return self.w["photo"] > 0 or self.use_identity

    @staticmethod
    def _code_error(codes, target, k: str, n: int = None) -> paddle.Tensor:
        """Predicted minus ground-truth code ``k`` over their common leading coefficients (or the
        first ``n``), zero where ``target[k + '_mask']`` (e.g. a mirrored training image's
        coefficients with no mirror counterpart) is 0."""
        n = min(codes[k].shape[1], target[k].shape[1]) if n is None else n
        e = codes[k][:, :n] - target[k][:, :n]
        m = target.get(k + "_mask")
        return e if m is None else e * m[:, :n]

    def __call__(self, codes: Dict[str, paddle.Tensor], pred: Dict[str, paddle.Tensor],
                 target: Dict[str, paddle.Tensor]) -> Dict[str, paddle.Tensor]:
        """Weighted loss terms and their sum under 'loss'.

        codes: encoder outputs (shape (N, n_shape), exp, tex, light (N, 9, 3), ...).
        pred: 'landmarks2d' (N, 68, 2); optional 'image' (N, 3, H, W) render and
            'identity_image' (N, 3, H, W) for the identity loss.
        target: 'landmark' (N, 68, 3); 'image' (N, 3, H, W); 'mask' (N, H, W); optional
            ground-truth codes 'shape', 'exp', 'pose' for the supervised ``param`` term, with
            optional 0/1 masks 'shape_mask', 'exp_mask' of the same shapes.
        """
        w = self.w
        out = {}
        lm_p, lm_t = pred["landmarks2d"], target["landmark"]
        if w["lmk"] > 0:
            out["landmark"] = landmark_loss(lm_p, lm_t, self.weighted_landmarks) * w["lmk"]
        if w["eyed"] > 0:
            out["eye_distance"] = eye_closure_loss(lm_p, lm_t) * w["eyed"]
        if w["lipd"] > 0:
            out["lip_distance"] = lip_closure_loss(lm_p, lm_t) * w["lipd"]
        if w["photo"] > 0 and "image" in pred:
            out["photometric"] = photometric_loss(pred["image"], target["image"], target["mask"]) * w["photo"]
        if self.use_identity and "identity_image" in pred:
            f_real = self.identity_net(target["image"]).detach()
            f_pred = self.identity_net(pred["identity_image"])
            out["identity"] = identity_loss(f_pred, f_real) * w["id"]
        if w["reg_shape"] > 0 and "shape" in codes:
            out["shape_reg"] = code_l2(codes["shape"]) * w["reg_shape"]
        if w["reg_exp"] > 0 and "exp" in codes:
            out["expression_reg"] = code_l2(codes["exp"]) * w["reg_exp"]
        if w["reg_tex"] > 0 and "tex" in codes:
            out["tex_reg"] = code_l2(codes["tex"]) * w["reg_tex"]
        if w["reg_light"] > 0 and "light" in codes:
            out["light_reg"] = light_regularizer(codes["light"]) * w["reg_light"]
        if w["param"] > 0:
            terms = []
            for k in ("shape", "exp", "pose"):
                if k in target and k in codes:
                    terms.append((self._code_error(codes, target, k) ** 2).mean())
            if terms:
                out["param"] = paddle.add_n(terms) * w["param"]
        if w["shape_param"] > 0 and "shape" in target and "shape" in codes:
            out["shape_param"] = (self._code_error(codes, target, "shape") ** 2).sum(1).mean() * w["shape_param"]
        if w["shape_metric"] > 0 and "shape" in target and "shape" in codes:
            M = self.shape_metric_matrix
            if M is None:
                raise ConfigError("model.loss.shape_metric > 0 needs the shape error matrix: call "
                                  "loss.setup(face_model) once before using the loss")
            n = M.shape[0]
            e = self._code_error(codes, target, "shape", n)
            out["shape_metric"] = (paddle.matmul(e, M) * e).sum(1).mean() * w["shape_metric"]
        if w["geometry"] > 0 and "aux_geometry" in codes and "geometry" in target:
            g, t = codes["aux_geometry"], target["geometry"]
            if list(g.shape[1:]) != [t.shape[1] - 1] + list(t.shape[2:]):
                raise ConfigError(f"model.loss.geometry: the encoder predicts maps {list(g.shape[1:])} but the data "
                                  f"gives {list(t.shape[1:])} (channels + coverage); use SyntheticFaces(geometry=True) "
                                  "with an image size divisible by 8")
            cover = t[:, -1:]
            out["geometry"] = ((g - t[:, :-1]).abs() * cover).sum() / (cover.sum() * g.shape[1] + 1e-6) * w["geometry"]
        elif "aux_geometry" in codes:  # data without the maps (photos): the head gets zero gradients
            out["geometry"] = codes["aux_geometry"].mean() * 0.0
        if w["shape_vertex"] > 0 and "verts_neutral" in pred and "gt_verts_neutral" in target:
            d = paddle.sqrt(((pred["verts_neutral"] - target["gt_verts_neutral"]) ** 2).sum(-1) + 1e-12)
            out["shape_vertex"] = d.mean() * 1000.0 * w["shape_vertex"]
        out["loss"] = paddle.add_n(list(out.values())) if out else paddle.zeros([])
        return out
