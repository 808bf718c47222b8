"""DECA's detail stage: a frozen coarse DECA, the detail encoder and decoder, trained with the
detail losses in UV space (DECA's ``trainer.py``, ``train_detail``).

    python tools/train.py -c configs/deca_detail.yml -o model.coarse_weights=output/deca
    python tools/eval.py  -c configs/deca_detail.yml -o model.weights=output/deca_detail/final.safetensors

    model = DECADetail(coarse_weights="output/deca")     # a coarse run folder (its config.yml + weights)
    out = model({"image": images})                       # images (B, K, 3, S, S) in [0, 1]
    out["uv_z"]                                          # (B*K, 1, T, T) UV displacement
    dec = model.decode(codes)                            # + 'displacement_map' (N, 1, T, T) and
                                                         # 'uv_detail_normals' (N, 4, T, T): normals + face mask

The coarse model (``coarse``) is any DECA-family model of the registry; its weights come from
``coarse_weights`` (a run folder, whose ``config.yml`` also describes the coarse model when
``coarse`` is not given, or a weights file). Its parameters are frozen and it stays in eval mode,
as DECA trains its detail stage. The detail branch (each part its own file): a
:class:`~ppface3d.models.encoder.ResNetEncoder` to the ``n_detail`` code, DECA's detail generator
(:class:`~ppface3d.models.detail.DetailDecoder`: code + expression + jaw -> displacement), the
detail normals on the coarse mesh (:meth:`FaceModel.detail_normal_map`) and the losses
(:class:`~ppface3d.losses.DECADetailLoss`).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppengine.errors import ConfigError, InputError
from ppengine.registry import LOSSES, MODELS

from ..losses.deca_losses import consistency_order
from ..losses.detail_losses import crop_box
from ..render.mesh import vertex_normals
from ..render.shading import sh_shading
from .detail import DetailDecoder
from .displacement import displacement2normal
from .encoder import ResNetEncoder

# model keys of the coarse DECA that decide its architecture and face model (checked against
# the coarse run's own config when both are given)
_COARSE_KEYS = ("type", "n_shape", "n_tex", "n_exp", "image_size", "uv_size", "encoder_depth", "encoder_width",
                "encoder_pool", "encoder_hidden", "flame_model_path", "flame_landmark_path", "albedo_path")


def coarse_config(coarse: Optional[dict], coarse_weights: Optional[str]):
    """(coarse model config, weights file or None) from ``model.coarse`` and ``model.coarse_weights``.

    A run folder (or a weights file with a ``config.yml`` beside it) gives its own model section;
    when ``coarse`` is given too, the two must agree on the architecture keys."""
    if coarse_weights is None:
        if not coarse:
            raise ConfigError("model.coarse_weights: give the coarse DECA run folder (e.g. output/deca) or its "
                              "weights with model.coarse (the coarse model's config)")
        return dict(coarse), None
    from ppengine.config import load_config
    from ppengine.inference import find_run_files

    if not os.path.exists(str(coarse_weights)):
        raise InputError(f"model.coarse_weights={coarse_weights!r} not found: give the coarse DECA run folder or "
                         "its .safetensors (a trained DECADetail carries the coarse weights in its own: load it with "
                         "-o model.coarse_weights=null)")
    weights, run_cfg = find_run_files(str(coarse_weights))
    own = dict((load_config(run_cfg).get("model") or {})) if run_cfg else None
    if own is not None:
        own.pop("weights", None)
    if not coarse:
        if own is None:
            raise ConfigError(f"model.coarse_weights={coarse_weights!r} has no config.yml beside it: describe the "
                              "coarse model under model.coarse")
        return own, weights
    coarse = dict(coarse)
    if own is not None:
        for k in _COARSE_KEYS:
            if k in coarse and k in own and coarse[k] != own[k]:
                raise ConfigError(f"model.coarse.{k}={coarse[k]!r} and model.{k}={own[k]!r} in {run_cfg} "
                                  f"(model.coarse_weights) disagree: leave model.coarse out to use the run's config")
    return coarse, weights


def refit_light(albedo: paddle.Tensor, normals: paddle.Tensor, target: paddle.Tensor, weight: paddle.Tensor,
                fallback: paddle.Tensor, min_texels: int = 64, damping: float = 1e-3) -> paddle.Tensor:
    """Per-image SH light (N, 9, 3) that best explains ``target`` as ``albedo x SH(normals)``:
    weighted least squares per colour channel over the texels where ``weight`` (N, 1, S, S) is 1.

    albedo, target (N, 3, S, S); normals (N, 3, S, S) (renormalised here). The normal equations
    are damped by ``damping`` x their mean diagonal; an image with fewer than ``min_texels``
    weighted texels keeps its ``fallback`` light (N, 9, 3). No gradient flows through it."""
    from ..render.shading import sh_basis

    with paddle.no_grad():
        N = albedo.shape[0]
        B = sh_basis(F.normalize(normals, axis=1)).reshape([N, 1, 9, -1])  # (N, 1, 9, P)
        A = B * albedo.reshape([N, 3, 1, -1])  # (N, 3, 9, P) per channel
        w = weight.reshape([N, 1, 1, -1])
        M = paddle.matmul(A * w, A, transpose_y=True)  # (N, 3, 9, 9)
        r = paddle.matmul(A * w, target.reshape([N, 3, -1, 1]))  # (N, 3, 9, 1)
        eye = paddle.eye(9).reshape([1, 1, 9, 9])
        lam = damping * paddle.diagonal(M, axis1=-2, axis2=-1).mean(-1, keepdim=True).unsqueeze(-1) + 1e-8
        light = paddle.linalg.solve(M + lam * eye, r)[..., 0].transpose([0, 2, 1])  # (N, 9, 3)
        enough = (weight.reshape([N, -1]).sum(1) >= min_texels).astype(light.dtype).reshape([N, 1, 1])
        return light * enough + fallback * (1.0 - enough)


@MODELS.register()
class DECADetail(nn.Layer):
    """DECA's detail branch on a frozen coarse DECA.

    Args:
        coarse: the coarse model's config (``{type: DECA, ...}``); None = the config.yml of the
            ``coarse_weights`` run folder.
        coarse_weights: the coarse run folder or weights file, loaded at build time; None when
            the model's own weights (which include the coarse part) are loaded afterwards.
        n_detail: detail code size (DECA 128).
        detail_size: UV displacement map side (DECA 256).
        decoder_channels: DetailDecoder channel counts (None = DECA's).
        max_z: the decoder's tanh scale in metres (DECA 0.01).
        encoder_depth, encoder_width, encoder_hidden, encoder_pool: the detail encoder's ResNet
            (DECA: ResNet-50; 10 / 16 on a CPU), see :class:`~ppface3d.models.encoder.ResNetEncoder`.
        refit_light: for the detail losses, re-estimate each image's SH light by least squares
            from the photo in UV (:func:`refit_light`: the coarse albedo and normals, the visible
            texels) instead of the coarse encoder's light (DECA's, detached). Not DECA's: for a
            coarse model whose light is barely trained (configs/deca.yml trains albedo and light
            only in its last iterations), so that light errors are not explained as wrinkles.
        loss: loss config (default ``{type: DECADetailLoss}`` with DECA's weights).
    """

    def __init__(self, coarse: Optional[dict] = None, coarse_weights: Optional[str] = None, n_detail: int = 128,
                 detail_size: int = 256, decoder_channels=None, max_z: float = 0.01, encoder_depth: int = 18,
                 encoder_width: int = 64, encoder_hidden: int = 512, encoder_pool: str = "avg",
                 refit_light: bool = False, loss: Optional[dict] = None):
        super().__init__()
        from ppengine.checkpoint import load_weights

        ccfg, weights = coarse_config(coarse, coarse_weights)
        self.coarse = MODELS.build(ccfg, "model.coarse")
        if not hasattr(self.coarse, "face") or not hasattr(self.coarse, "encode"):
            raise ConfigError(f"model.coarse.type={ccfg.get('type')!r}: the coarse model must be a DECA-family "
                              "model (with a face model and encode)")
        if weights is not None:
            load_weights(self.coarse, weights)
        for p in self.coarse.parameters():
            p.stop_gradient = True
        self.coarse.eval()
        self.face = self.coarse.face
        self.image_size = int(self.coarse.image_size)
        self.code_sizes = dict(self.coarse.code_sizes, detail=int(n_detail))
        self.detail_size = S = int(detail_size)
        self.E_detail = ResNetEncoder({"detail": int(n_detail)}, depth=encoder_depth, hidden=encoder_hidden,
                                      width=encoder_width, pool=encoder_pool, image_size=self.image_size)
        self.D_detail = DetailDecoder(int(n_detail) + self.face.code_sizes["exp"] + 3, out_scale=max_z, out_size=S,
                                      channels=decoder_channels)
        with paddle.no_grad():  # start near zero displacement (the coarse surface), not random grooves
            out_conv = self.D_detail.conv_blocks[-2]
            out_conv.weight.set_value(out_conv.weight * 0.01)
            out_conv.bias.set_value(out_conv.bias * 0.0)
        self.uvmap = self.face.uv_map(S)
        self.face_eye_mask = self.face.uv_face_mask(S)
        self.face_mask = self.face_eye_mask
        self.box = crop_box(self.face_eye_mask)
        self.refit_light = bool(refit_light)
        self.loss_fn = LOSSES.build(loss or {"type": "DECADetailLoss"}, key_path="model.loss")
        self.register_buffer("_mask_t", paddle.to_tensor(self.face_eye_mask).reshape([1, 1, S, S]), persistable=False)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Engine hook, before building: the coarse model and the data agree (image size, the
        synthetic head), detail consistency has K >= 2, the detail metric has its ground truth."""
        from .config_checks import check_detail_config

        check_detail_config(cfg)

    def train(self):
        """Training mode for the detail branch; the coarse model stays in eval mode (DECA)."""
        super().train()
        self.coarse.eval()
        return self

    # ------------------------------------------------------------------ pieces
    def encode(self, images: paddle.Tensor, test: bool = False) -> Dict[str, paddle.Tensor]:
        """images (N, 3, S, S) in [0, 1] -> the coarse codes (no gradient) and 'detail' (N, n_detail)."""
        with paddle.no_grad():
            codes = self.coarse.encode_test(images) if test else self.coarse.encode(images)
        codes = {k: v.detach() for k, v in codes.items() if k != "aux_geometry"}
        codes["detail"] = self.E_detail(images)["detail"]
        return codes

    @paddle.no_grad()
    def encode_crops(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Face crops (N, 3, H, W) in [0, 1] of any size -> codes with 'detail' (resized to ``image_size``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"DECADetail: face crops must be (N, 3, H, W), got {list(images.shape)}")
        if images.shape[-2:] != [self.image_size, self.image_size]:
            images = F.interpolate(images, size=[self.image_size, self.image_size], mode="area")
        return self.encode(images, test=True)

    def displacement(self, codes: Dict[str, paddle.Tensor]) -> paddle.Tensor:
        """(N, 1, T, T) UV displacement from codes 'detail', 'exp' and the jaw pose."""
        return self.D_detail.displacement(codes["detail"], codes["exp"], codes["pose"][:, 3:6])

    def detail_normals(self, uv_z: paddle.Tensor, vertices: paddle.Tensor) -> paddle.Tensor:
        """(N, 4, T, T) detail normals on the coarse mesh ``vertices`` with the face mask as the
        4th channel (for ``FaceModel.render(normal_map=...)``)."""
        return self.face.detail_normal_map(uv_z, vertices, self.face_eye_mask, weighted=True)

    def decode(self, codes: Dict[str, paddle.Tensor], render: bool = True) -> Dict[str, paddle.Tensor]:
        """Coarse geometry (:meth:`FaceModel.decode`), 'uv_z' and 'displacement_map' (the same
        (N, 1, T, T)), 'uv_detail_normals' (N, 4, T, T); with ``render``: 'image', 'alpha',
        'albedo', 'shape' (grey, coarse normals) and 'shape_detail' (grey, detail normals)."""
        out = self.face.decode(codes)
        uv_z = self.displacement(codes)
        nmap = self.detail_normals(uv_z, out["vertices"])
        out.update(uv_z=uv_z, displacement_map=uv_z, uv_detail_normals=nmap)
        if render:
            albedo = self.face.albedo_map(codes["tex"])
            r = self.face.render(out, light=codes["light"], albedo=albedo, normal_map=nmap)
            out.update(image=r["images"], alpha=r["alpha_images"], albedo=albedo,
                       shape=self.face.render(out, mode="shape")["images"],
                       shape_detail=self.face.render(out, mode="shape", normal_map=nmap)["images"])
        return out

    @paddle.no_grad()
    def reconstruct(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Inference: face crops (N, 3, H, W) in [0, 1] -> 'codes' (with 'detail'), geometry and
        renders 'textured', 'shape', 'shape_detail', 'alpha', 'displacement_map', 'uv_detail_normals'."""
        codes = self.encode_crops(images)
        out = self.decode(codes, render=True)
        out.update(codes=codes, textured=out.pop("image"))
        return out

    def dense_mesh(self, out: Dict[str, paddle.Tensor], i: int = 0, texture: Optional[np.ndarray] = None):
        """DECA's ``upsample_mesh`` of decoded item ``i``: (vertices (M, 3), faces (K, 3), colours)."""
        verts = out["vertices"][i:i + 1]
        normals = vertex_normals(verts, paddle.to_tensor(np.asarray(self.face.faces, np.int64)))
        return self.uvmap.dense_mesh(verts[0], normals[0], out["displacement_map"][i, 0], self.face_mask, texture)

    # ------------------------------------------------------------------ engine contract
    @staticmethod
    def _flat(x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([-1] + list(x.shape[2:]))

    def forward(self, batch: Dict) -> Dict:
        """batch['image'] (B, K, 3, S, S) (or (B, 3, S, S)) -> codes and the UV maps of the losses.

        In training with K > 1 and detail consistency on, the codes are doubled as DECA does: the
        second half carries detail codes swapped among the K images of each subject.
        """
        images = batch["image"]
        if images.ndim == 4:
            images = images.unsqueeze(1)
        B, K = images.shape[0], images.shape[1]
        x = self._flat(images)
        codes = self.encode(x, test=not self.training)
        doubled = False
        if self.training and self.loss_fn.detail_consistency and K > 1:
            order = consistency_order(B, K, np.random.default_rng(np.random.randint(0, 2 ** 31 - 1)))
            detail = codes["detail"]
            codes = {k: paddle.concat([v, v], 0) for k, v in codes.items() if k != "detail"}
            codes["detail"] = paddle.concat([detail, paddle.gather(detail, paddle.to_tensor(order))], 0)
            doubled = True
        return {"codes": codes, "doubled": doubled, **self._uv_terms(codes)}

    def _uv_terms(self, codes: Dict[str, paddle.Tensor]) -> Dict[str, paddle.Tensor]:
        """The coarse mesh in UV (positions, normals, screen positions) and the detail maps."""
        with paddle.no_grad():
            dec = self.face.decode(codes)
            verts = dec["vertices"]
            normals = vertex_normals(verts, paddle.to_tensor(np.asarray(self.face.faces, np.int64)))
            uv = self.uvmap.world2uv(paddle.concat([verts, normals, dec["transformed_vertices"]], -1))
        uv_z = self.displacement(codes)
        uv_n = displacement2normal(uv_z, uv[:, 0:3], uv[:, 3:6], self._mask_t)
        return {"uv_z": uv_z, "uv_detail_normals": uv_n, "uv_coarse_normals": uv[:, 3:6],
                "uv_screen": uv[:, 6:8], "landmarks2d": dec["landmarks2d"]}

    def _targets(self, batch: Dict, doubled: bool) -> Dict[str, paddle.Tensor]:
        t = {}
        for k in ("image", "mask", "displacement"):
            if k not in batch:
                continue
            v = batch[k]
            if k == "image" and v.ndim == 4 or k in ("mask", "displacement") and v.ndim == 3:
                v = v.unsqueeze(1)
            v = self._flat(v)
            t[k] = paddle.concat([v, v], 0) if doubled else v
        return t

    def losses(self, batch: Dict, outputs: Dict) -> Dict[str, paddle.Tensor]:
        """DECA's detail losses (:class:`~ppface3d.losses.DECADetailLoss`) on the UV maps: the
        photo sampled into UV through the coarse mesh, visible where the image's face mask is,
        the coarse surface faces the camera and the UV face mask is."""
        target = self._targets(batch, outputs.get("doubled", False))
        codes = outputs["codes"]
        S = self.detail_size
        with paddle.no_grad():
            grid = outputs["uv_screen"].transpose([0, 2, 3, 1])
            sampled = F.grid_sample(paddle.concat([target["image"], target["mask"].unsqueeze(1)], 1), grid,
                                    mode="bilinear", padding_mode="zeros", align_corners=False)
            facing = (outputs["uv_coarse_normals"][:, 2:3] > 0.05).astype("float32")
            vis = sampled[:, 3:] * facing * self._mask_t
            albedo = self.face.albedo_map(codes["tex"])
            if albedo.shape[-1] != S:
                albedo = F.interpolate(albedo, size=[S, S], mode="bilinear", align_corners=False)
            light = codes["light"].detach()
            if self.refit_light:
                light = refit_light(albedo, outputs["uv_coarse_normals"], sampled[:, :3], vis, light)
        shading = sh_shading(outputs["uv_detail_normals"], light)
        pred = {"uv_texture": albedo * shading, "uv_texture_gt": sampled[:, :3], "uv_vis_mask": vis,
                "uv_z": outputs["uv_z"], "uv_shading": shading, "face_mask": self._mask_t}
        if "displacement" in target:  # synthetic ground truth (SyntheticFaces with wrinkles)
            gt = target["displacement"].unsqueeze(1)
            if gt.shape[-1] != S:
                gt = F.interpolate(gt, size=[S, S], mode="bilinear", align_corners=False)
            pred["displacement_gt"] = gt
        return self.loss_fn(pred, self.box)

    @paddle.no_grad()
    def eval_step(self, batch: Dict) -> Dict:
        """Outputs for the detail metric: the normals of the model's own render with the coarse
        vertex normals ('normal_coarse') and with its detail map ('normal_detail'), 'alpha'; when
        the batch has the true posed mesh ('vertices', 'cam': synthetic data), the same three
        with the predicted displacement on that mesh, prefixed 'gt_mesh_' (the detail branch
        measured apart from the coarse model's fit)."""
        was = self.training
        self.eval()
        images = batch["image"]
        if images.ndim == 4:
            images = images.unsqueeze(1)
        codes = self.encode(self._flat(images), test=True)
        out = self.face.decode(codes)
        uv_z = self.displacement(codes)
        out.update(codes=codes, **self._normal_renders(out, uv_z))
        if "vertices" in batch and "cam" in batch:  # the same displacement on the true coarse mesh
            gt = self.face.place({"vertices": self._flat(batch["vertices"]), "landmarks3d": out["landmarks3d"]},
                                 self._flat(batch["cam"]))
            out.update({"gt_mesh_" + k: v for k, v in self._normal_renders(gt, uv_z).items()})
        if was:
            self.train()
        return out

    def _normal_renders(self, dec: Dict[str, paddle.Tensor], uv_z: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """World normals of the mesh ``dec`` rendered with the detail map of a zero displacement
        ('normal_coarse') and of ``uv_z`` ('normal_detail'), and its silhouette ('alpha'). Both go
        through the same normal-map path (DECA's ``displacement2normal``: the normals of the
        displaced surface over the coarse triangles, which are flat where the displacement is 0),
        as the ground truth does, so that the two differ by the displacement alone."""
        coarse = self.face.render(dec, mode="shape", normal_map=self.detail_normals(paddle.zeros_like(uv_z),
                                                                                   dec["vertices"]))
        detail = self.face.render(dec, mode="shape", normal_map=self.detail_normals(uv_z, dec["vertices"]))
        return {"normal_coarse": coarse["normal_images"], "normal_detail": detail["normal_images"],
                "alpha": coarse["alpha_images"]}

    @paddle.no_grad()
    def visuals(self, batch: Dict, outputs: Dict) -> Dict[str, np.ndarray]:
        """One row per image (up to 4): input | coarse shape | detail shape | displacement."""
        images = batch["image"]
        if images.ndim == 4:
            images = images.unsqueeze(1)
        x = self._flat(images)[:4]
        codes = {k: v[:4] for k, v in self.encode(x, test=True).items()}
        dec = self.decode(codes, render=True)
        S = self.image_size
        z = F.interpolate(dec["uv_z"], size=[S, S], mode="bilinear")
        z = (z / (z.abs().max([1, 2, 3], keepdim=True) + 1e-8) * 0.5 + 0.5).expand([-1, 3, S, S])
        rows = [np.concatenate([t[i].numpy().transpose(1, 2, 0) for t in (x, dec["shape"], dec["shape_detail"], z)], 1)
                for i in range(x.shape[0])]
        return {"deca_detail": (np.clip(np.concatenate(rows, 0), 0, 1) * 255).astype(np.uint8)}
