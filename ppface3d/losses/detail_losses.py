"""DECA's detail-stage losses in Paddle, weighted as DECA's config (``decalib/utils/config.py``:
photo_D 2.0, reg_z 0.005, reg_diff 0.005, reg_sym 0.005, mrf 0.05, detail_consistency on).

All terms live in UV space, as in DECA's ``trainer.py``: the texture the detail normals shade
(``albedo x SH(detail normals)``) against the photo sampled into UV through the coarse mesh,
where the texel is visible (inside the image's face mask, facing the camera, inside the UV face
mask). ID-MRF (Wang et al. 2018) is computed on the features of a network given in the config
(DECA: VGG-19 relu3_2 / relu4_2); without one the term is off (no VGG weights ship offline).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from ppengine.registry import LOSSES

from .deca_losses import build_frozen


def binary_erosion(mask: paddle.Tensor, kernel_size: int = 5) -> paddle.Tensor:
    """Binary erosion of (N, 1, H, W) 0/1 masks with a square ``kernel_size`` structuring element
    (DECA's ``util.binary_erosion``, scipy's border handling: outside counts as 0)."""
    pad = kernel_size // 2
    inv = F.pad(1.0 - mask, [pad, pad, pad, pad], value=1.0)
    return 1.0 - F.max_pool2d(inv, kernel_size, stride=1)


def crop_box(mask: np.ndarray, margin: int = 2):
    """(r0, r1, c0, c1) bounding box of a (S, S) mask's nonzero texels, widened by ``margin``
    (DECA crops its UV maps to the face's box, ``load_local_mask(mode='bbx')``)."""
    rows, cols = np.nonzero(np.asarray(mask) > 0.5)
    S = mask.shape[0]
    return (max(int(rows.min()) - margin, 0), min(int(rows.max()) + 1 + margin, S),
            max(int(cols.min()) - margin, 0), min(int(cols.max()) + 1 + margin, S))


def crop_resize(x: paddle.Tensor, box, size: int) -> paddle.Tensor:
    """(N, C, S, S) maps cropped to ``box`` (r0, r1, c0, c1) and resized to ``size`` (bilinear)."""
    r0, r1, c0, c1 = box
    return F.interpolate(x[:, :, r0:r1, c0:c1], size=[size, size], mode="bilinear", align_corners=False)


def detail_photometric_loss(uv_texture: paddle.Tensor, uv_texture_gt: paddle.Tensor, vis_mask: paddle.Tensor,
                            box=None, size: Optional[int] = None) -> paddle.Tensor:
    """DECA's ``photo_detail``: mean of ``|tex * m - gt * m|`` over the face box resized to ``size``.

    uv_texture, uv_texture_gt (N, 3, S, S); vis_mask (N, 1, S, S); ``box`` from :func:`crop_box`
    (None = the whole map), ``size`` (DECA 256; None = S).
    """
    if box is not None:
        size = size or uv_texture.shape[-1]
        uv_texture, uv_texture_gt, vis_mask = (crop_resize(t, box, size) for t in (uv_texture, uv_texture_gt, vis_mask))
    return (uv_texture * vis_mask - uv_texture_gt * vis_mask).abs().mean()


def displacement_l1(uv_z: paddle.Tensor) -> paddle.Tensor:
    """DECA's ``z_reg``: mean absolute displacement."""
    return uv_z.abs().mean()


def shading_smooth_loss(shading: paddle.Tensor) -> paddle.Tensor:
    """DECA's ``z_diff`` (``lossfunc.shading_smooth_loss``): mean squared horizontal plus vertical
    differences of the (N, C, H, W) shading, on the interior rows / columns as DECA slices them."""
    dx = shading[:, :, 1:-1, 1:] - shading[:, :, 1:-1, :-1]
    dy = shading[:, :, 1:, 1:-1] - shading[:, :, :-1, 1:-1]
    return (dx ** 2).mean() + (dy ** 2).mean()


def symmetry_loss(uv_z: paddle.Tensor, vis_mask: paddle.Tensor) -> paddle.Tensor:
    """DECA's ``z_sym``: where a texel is not visible (outside the eroded visibility mask), its
    displacement is pulled towards its mirror texel's (the UV map flipped left-right, detached);
    summed, as DECA does."""
    nonvis = 1.0 - binary_erosion(vis_mask)
    return (nonvis * (uv_z - uv_z.flip([3]).detach()).abs()).sum()


def supervised_displacement_loss(uv_z: paddle.Tensor, gt: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
    """Mean absolute error in millimetres of the displacement (N, 1, S, S) against the ground truth
    (N, 1, S, S) over the texels of ``mask`` (1, 1, S, S) (metres in, millimetres out)."""
    m = mask.expand(uv_z.shape)
    return ((uv_z - gt).abs() * m).sum() / (m.sum() + 1e-6) * 1000.0


def mrf_loss(gen: paddle.Tensor, tar: paddle.Tensor, bias: float = 1.0, sigma: float = 0.5) -> paddle.Tensor:
    """The implicit-diversity MRF term of ID-MRF (Wang et al. 2018, as in DECA's ``IDMRFLoss.mrf_loss``)
    between feature maps gen, tar (N, C, H, W), summed over the batch.

    Features are centred by the target's mean over channels and L2-normalised per position. For
    every generated position, its cosine distances to the target positions, divided by the
    nearest one, become similarities ``exp((bias - d_rel) / sigma)`` normalised over the target
    positions; each target position keeps its best match over the generated positions, and the
    loss is ``-log`` of their mean.
    """
    mean_t = tar.mean(1, keepdim=True)
    g, t = gen - mean_t, tar - mean_t
    g = g / paddle.sqrt((g * g).sum(1, keepdim=True))
    t = t / paddle.sqrt((t * t).sum(1, keepdim=True))
    N, C = g.shape[:2]
    cos = paddle.matmul(t.reshape([N, C, -1]), g.reshape([N, C, -1]), transpose_x=True)  # (N, HWt, HWg)
    dist = -(cos - 1.0) / 2.0
    rel = dist / (dist.min(1, keepdim=True) + 1e-5)
    sim = paddle.exp((bias - rel) / sigma)
    sim = sim / sim.sum(1, keepdim=True)
    return (-paddle.log(sim.max(2).mean(1))).sum()


class IDMRF:
    """ID-MRF on the features of ``net`` (a layer returning a dict of named feature maps):
    ``sum_l w_l mrf(l)`` over the style layers plus the same over the content layers (DECA:
    style relu3_2 and relu4_2, content relu4_2, each weight 1)."""

    def __init__(self, net, style_layers: Optional[Dict[str, float]] = None,
                 content_layers: Optional[Dict[str, float]] = None):
        self.net = net
        self.style = dict(style_layers or {"relu3_2": 1.0, "relu4_2": 1.0})
        self.content = dict(content_layers or {"relu4_2": 1.0})

    def __call__(self, gen: paddle.Tensor, tar: paddle.Tensor) -> paddle.Tensor:
        fg, ft = self.net(gen), self.net(tar)
        terms = [w * mrf_loss(fg[k], ft[k]) for layers in (self.style, self.content) for k, w in layers.items()]
        return paddle.add_n(terms)


@LOSSES.register()
class DECADetailLoss:
    """DECA's detail-stage losses with DECA's default weights.

    Args:
        photo: weight of the UV photometric term with the detail shading (DECA's photo_D 2.0).
        reg_z: displacement L1 (0.005).
        reg_diff: shading smoothness (0.005).
        reg_sym: soft symmetry of the displacement on invisible texels (0.005).
        mrf: ID-MRF weight, applied on top of ``photo`` as DECA does (0.05 x 2); only active with
            ``feature_net``.
        feature_net: config of a network in the MODELS registry returning named feature maps
            (e.g. ``{type: VGG19Features, weights: /path/vgg19.safetensors}``); None (default) = ID-MRF off.
        detail_consistency: DECA's swap of detail codes among the K images of a subject.
        patch: side the face box of the UV maps is resized to for the photometric terms (DECA 256;
            None = the map's own size).
        disp: weight of a supervised term (not DECA's; 0 = off): mean absolute difference in
            millimetres between the predicted and the ground-truth displacement inside the UV
            face mask, used only when the batch carries the ground truth (SyntheticFaces with
            wrinkles), as configs/deca.yml supervises the coarse codes on synthetic data.
    """

    def __init__(self, photo: float = 2.0, reg_z: float = 0.005, reg_diff: float = 0.005, reg_sym: float = 0.005,
                 mrf: float = 0.05, feature_net: Optional[dict] = None, detail_consistency: bool = True,
                 patch: Optional[int] = None, disp: float = 0.0):
        self.w = dict(photo=float(photo), reg_z=float(reg_z), reg_diff=float(reg_diff), reg_sym=float(reg_sym),
                      mrf=float(mrf), disp=float(disp))
        self.detail_consistency = bool(detail_consistency)
        self.patch = None if patch is None else int(patch)
        self.idmrf = None
        if feature_net and mrf > 0:
            self.idmrf = IDMRF(build_frozen(feature_net, "model.loss.feature_net"))

    def __call__(self, pred: Dict[str, paddle.Tensor], box: Optional[Sequence[int]] = None) -> Dict[str, paddle.Tensor]:
        """Weighted terms and their sum under 'loss'.

        pred: 'uv_texture' (N, 3, S, S) albedo x detail shading, 'uv_texture_gt' (N, 3, S, S)
        the photo in UV, 'uv_vis_mask' (N, 1, S, S), 'uv_z' (N, 1, S, S) displacement,
        'uv_shading' (N, 3, S, S); for ``disp``: 'displacement_gt' (N, 1, S, S), 'face_mask'
        (1, 1, S, S). ``box``: the UV face box (:func:`crop_box`).
        """
        w, out = self.w, {}
        tex, gt, vis = pred["uv_texture"], pred["uv_texture_gt"], pred["uv_vis_mask"]
        if w["photo"] > 0:
            out["photo_detail"] = detail_photometric_loss(tex, gt, vis, box, self.patch) * w["photo"]
            if self.idmrf is not None:
                size = self.patch or tex.shape[-1]
                a, b, m = ((crop_resize(t, box, size) if box is not None else t) for t in (tex, gt, vis))
                out["photo_detail_mrf"] = self.idmrf(a * m, b * m) * w["photo"] * w["mrf"]
        if w["reg_z"] > 0:
            out["z_reg"] = displacement_l1(pred["uv_z"]) * w["reg_z"]
        if w["reg_diff"] > 0:
            out["z_diff"] = shading_smooth_loss(pred["uv_shading"]) * w["reg_diff"]
        if w["reg_sym"] > 0:
            out["z_sym"] = symmetry_loss(pred["uv_z"], vis) * w["reg_sym"]
        if w["disp"] > 0 and "displacement_gt" in pred:
            out["z_supervised"] = supervised_displacement_loss(pred["uv_z"], pred["displacement_gt"],
                                                               pred["face_mask"]) * w["disp"]
        out["loss"] = paddle.add_n(list(out.values())) if out else paddle.zeros([])
        return out
