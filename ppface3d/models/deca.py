"""DECA coarse model: image -> FLAME shape/expression/pose, albedo, SH light, camera -> render.

    model = DECA(image_size=224, encoder_depth=50)          # paper sizes (GPU)
    out = model({"image": images})        # images (B, K, 3, S, S) in [0, 1]
    out["codes"]["shape"]                 # (B*K, n_shape)
    out["landmarks2d"]                    # (B*K, 68, 2) screen NDC (x right, y down, [-1, 1])
    out["image"]                          # (B*K, 3, S, S) rendering (when rendered)

Components (each its own file): :class:`~ppface3d.models.encoder.ResNetEncoder`, the
:class:`~ppface3d.face_model.FaceModel` (FLAME + albedo + renderer + DECA's orthographic
camera) as ``model.face``, and the loss (:class:`~ppface3d.losses.DECALoss`), which tells the
model what it needs (``needs_render``, ``wants``, ``aux_channels``). Codes follow DECA: pose = [global axis-angle (3),
jaw axis-angle (3)], cam = [s, tx, ty], light = 9 SH x RGB.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import paddle
import paddle.nn as nn

from ppengine.registry import LOSSES, MODELS

from ..face_model import FaceModel, sh_ambient
from ..losses.deca_losses import consistency_order
from ..render.draw import draw_landmarks
from .encoder import ResNetEncoder


@MODELS.register()
class DECA(nn.Layer):
    """DECA coarse reconstruction model (encoder + FLAME + albedo + renderer + losses).

    Args:
        n_shape, n_tex, n_exp, n_pose, n_cam, n_light: code sizes (DECA: 100, 50, 50, 6, 3, 27).
        encoder_depth: ResNet depth (DECA 50; 10 or 18 for CPU).
        encoder_hidden: MLP head width.
        encoder_width: channels of the first ResNet stage (64 = standard; 16 on a CPU).
        encoder_pool: 'avg' (DECA) or 'flatten' (keeps the feature map's layout; see ResNetEncoder).
        encoder_weights: optional ResNet trunk weights path.
        image_size: input crop and render size S.
        uv_size: albedo texture size.
        flame_model_path, flame_landmark_path: licensed FLAME files; None = generated default.
        albedo_path: DECA/FLAME albedo .npz; None = generated albedo space.
        render_backend: rasterizer backend ('auto', 'cpp', 'paddle').
        loss: loss config (default ``{type: DECALoss}`` with DECA's weights).
        test_flip: at evaluation and inference, average the shape code read from the image with
            the one read from its mirror image (test-time flip augmentation, as in pose
            estimation; not in DECA); training is unchanged.
    """

    def __init__(self, n_shape: int = 100, n_tex: int = 50, n_exp: int = 50, n_pose: int = 6,
                 n_cam: int = 3, n_light: int = 27, encoder_depth: int = 18, encoder_hidden: int = 512,
                 encoder_weights: Optional[str] = None, encoder_width: int = 64, encoder_pool: str = "avg",
                 image_size: int = 224, uv_size: int = 64,
                 flame_model_path: Optional[str] = None, flame_landmark_path: Optional[str] = None,
                 albedo_path: Optional[str] = None, albedo_seed: int = 0, render_backend: str = "auto",
                 loss: Optional[dict] = None, test_flip: bool = False):
        super().__init__()
        from ppengine.errors import ConfigError

        if n_pose != 6 or n_cam != 3 or n_light != 27:
            raise ConfigError("model: DECA's pose is 6 (global + jaw axis-angle), cam 3 ([s, tx, ty]) and "
                              f"light 27 (9 SH x RGB); got n_pose={n_pose}, n_cam={n_cam}, n_light={n_light}")
        self.image_size = int(image_size)
        self.face = FaceModel(n_shape=n_shape, n_exp=n_exp, n_tex=n_tex, image_size=self.image_size,
                              uv_size=uv_size, flame_model_path=flame_model_path,
                              flame_landmark_path=flame_landmark_path, albedo_path=albedo_path,
                              albedo_seed=albedo_seed, render_backend=render_backend)
        self.code_sizes = {"shape": n_shape, "tex": n_tex, "exp": n_exp, "pose": n_pose, "cam": n_cam,
                           "light": n_light}
        cam0 = self.face.framing_camera(self.face.mean_landmarks())
        self.loss_fn = LOSSES.build(loss or {"type": "DECALoss"}, key_path="model.loss")
        self.loss_fn.setup(self.face)
        self.encoder = ResNetEncoder(self.code_sizes, depth=encoder_depth, hidden=encoder_hidden,
                                     cam_init=tuple(cam0.tolist()), light_init=sh_ambient(1.0).reshape(-1),
                                     pretrained=encoder_weights, width=encoder_width, pool=encoder_pool,
                                     image_size=self.image_size, aux_channels=self.loss_fn.aux_channels)
        self._train_step = None  # set by the engine (set_train_step) for staged losses
        self.test_flip = bool(test_flip)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Engine hook, before building: the model, its loss and the data agree (image size, code
        sizes, geometry maps, K); see :mod:`ppface3d.models.config_checks`."""
        from .config_checks import check_face_config, defaults_of

        loss_cfg = (cfg.get("model") or {}).get("loss") or {}
        loss_cls = LOSSES.get(loss_cfg.get("type", "DECALoss"), "model.loss.type", cfg)
        check_face_config(cfg, defaults_of(cls), defaults_of(loss_cls))

    def set_train_step(self, step: int):
        """Engine hook: the training iteration about to run (``loss.photo_start`` stages)."""
        self._train_step = int(step)

    # ------------------------------------------------------------------ pieces
    @property
    def flame(self):
        """The FLAME layer of :attr:`face`."""
        return self.face.flame

    @property
    def faces(self) -> np.ndarray:
        return self.face.faces

    def encode(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """images (N, 3, S, S) in [0, 1] -> codes dict (shape (N, n_shape), ..., light (N, 9, 3))."""
        return self.encoder(images)

    @paddle.no_grad()
    def encode_test(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Codes for evaluation and inference: :meth:`encode`, and with ``test_flip`` the shape
        code averaged with the one read from the mirrored image (mapped back by the face model's
        mirror signs; coefficients without a mirror symmetry keep the direct reading)."""
        codes = self.encode(images)
        if self.test_flip:
            sign = paddle.to_tensor(self.face.mirror().shape_sign)
            mirrored = self.encode(images.flip([3]))["shape"] * sign
            codes["shape"] = paddle.where(sign != 0, (codes["shape"] + mirrored) * 0.5, codes["shape"])
        return codes

    @paddle.no_grad()
    def encode_crops(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Face crops (N, 3, H, W) float [0, 1] of any size -> :meth:`encode_test` codes (the crops
        resized to ``image_size``, area filter)."""
        import paddle.nn.functional as F

        if images.ndim != 4 or images.shape[1] != 3:
            from ppengine.errors import InputError

            raise InputError(f"DECA: face crops must be (N, 3, H, W), got {list(images.shape)}")
        if images.shape[-2:] != [self.image_size, self.image_size]:
            images = F.interpolate(images, size=[self.image_size, self.image_size], mode="area")
        return self.encode_test(images)

    @paddle.no_grad()
    def reconstruct(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Inference: face crops (N, 3, H, W) float [0, 1] (resized to ``image_size``) -> float
        tensors: the codes (:meth:`encode_test`) under 'codes', the decoded geometry
        ('vertices', 'landmarks2d', ...), and renders 'textured' / 'shape' (N, 3, S, S) in [0, 1]
        with 'alpha' (N, 1, S, S). (What is written to disk goes through ``ppengine.io``.)"""
        codes = self.encode_crops(images)
        out = self.decode(codes, render=True)
        out.update(codes=codes, textured=out.pop("image"), shape=self.face.render(out, mode="shape")["images"])
        return out

    def decode(self, codes: Dict[str, paddle.Tensor], render: bool = True,
               background: Optional[paddle.Tensor] = None, vertices: bool = True) -> Dict[str, paddle.Tensor]:
        """FLAME + camera (+ albedo and rendering) from codes (see :meth:`FaceModel.decode`).

        Returns 'vertices', 'landmarks3d', 'landmarks2d', 'transformed_vertices' (``vertices=False``
        without ``render``: landmarks only); when ``render``: 'image' (N, 3, S, S) shaded albedo
        over ``background`` (default black), 'alpha' (N, 1, S, S), 'albedo' (N, 3, T, T) UV
        albedo, 'normal_images', 'albedo_images'.
        """
        out = self.face.decode(codes, vertices=vertices or render)
        if render:
            albedo = self.face.albedo_map(codes["tex"])
            r = self.face.render(out, light=codes["light"], albedo=albedo, background=background)
            out.update(image=r["images"], alpha=r["alpha_images"], albedo=albedo,
                       normal_images=r["normal_images"], albedo_images=r["albedo_images"])
        return out

    # ------------------------------------------------------------------ engine contract
    @staticmethod
    def _flat(x: paddle.Tensor) -> paddle.Tensor:
        """(B, K, ...) -> (B*K, ...)."""
        return x.reshape([-1] + list(x.shape[2:]))

    def forward(self, batch: Dict) -> Dict:
        """batch['image'] (B, K, 3, S, S) (or (B, 3, S, S)) -> codes and decoded outputs.

        In training with K > 1 and shape consistency on, the codes are doubled as DECA does:
        the second half carries shape codes swapped among the K images of each subject.
        """
        images = batch["image"]
        if images.ndim == 4:
            images = images.unsqueeze(1)
        B, K = images.shape[0], images.shape[1]
        codes = self.encode(self._flat(images))
        doubled = False
        if self.training and self.loss_fn.shape_consistency and K > 1:
            order = consistency_order(B, K, np.random.default_rng(np.random.randint(0, 2 ** 31 - 1)))
            codes = {k: paddle.concat([v, v], 0) for k, v in codes.items()}
            shape = codes["shape"][: B * K]
            codes["shape"] = paddle.concat([shape, paddle.gather(shape, paddle.to_tensor(order))], 0)
            doubled = True
        render = (not self.training) or self.loss_fn.needs_render(self._train_step)
        # a training step without rendering needs only the landmarks (the losses' other inputs)
        out = self.decode(codes, render=render, vertices=render)
        out["codes"] = codes
        out["doubled"] = doubled
        return out

    def _targets(self, batch: Dict, doubled: bool) -> Dict[str, paddle.Tensor]:
        t = {}
        for k in ("landmark", "image", "mask", "shape", "exp", "pose", "gt_verts_neutral", "shape_mask", "exp_mask",
                  "geometry"):
            if k in batch and isinstance(batch[k], paddle.Tensor):
                v = batch[k]
                if k == "image" and v.ndim == 4:
                    v = v.unsqueeze(1)
                if k in ("landmark", "image", "mask") or v.ndim >= 3:
                    v = self._flat(v)
                elif k in ("shape", "shape_mask"):  # per-subject GT (B, n) -> per image (B*K, n)
                    K = batch["image"].shape[1] if batch["image"].ndim == 5 else 1
                    v = v.unsqueeze(1).expand([v.shape[0], K, v.shape[1]]).reshape([-1, v.shape[1]])
                t[k] = paddle.concat([v, v], 0) if doubled else v
        return t

    def losses(self, batch: Dict, outputs: Dict) -> Dict[str, paddle.Tensor]:
        target = self._targets(batch, outputs.get("doubled", False))
        pred = {"landmarks2d": outputs["landmarks2d"]}
        if self.loss_fn.wants("verts_neutral") and "gt_verts_neutral" in target:
            pred["verts_neutral"] = self.face.neutral(outputs["codes"]["shape"])["vertices"]
        if "image" in outputs:
            pred["image"] = outputs["image"]
            if self.loss_fn.wants("identity_image"):
                # DECA: rendered face pasted over the photo, shape-only gradient
                a = outputs["alpha"]
                pred["identity_image"] = outputs["image"] * a + target["image"] * (1 - a)
        return self.loss_fn(outputs["codes"], pred, target)

    @paddle.no_grad()
    def eval_step(self, batch: Dict) -> Dict:
        """Outputs for metrics: the forward outputs plus neutral meshes and the mean shape."""
        was = self.training
        self.eval()
        images = batch["image"]
        if images.ndim == 4:
            images = images.unsqueeze(1)
        codes = self.encode_test(self._flat(images))
        out = self.decode(codes, render=False)
        neutral = self.face.neutral(codes["shape"])
        mean = self.face.neutral(paddle.zeros([1, self.code_sizes["shape"]]))
        out.update(codes=codes, verts_neutral=neutral["vertices"], lmk3d_neutral=neutral["landmarks68"],
                   verts_mean=mean["vertices"][0], lmk3d_mean=mean["landmarks68"][0], faces=self.face.faces)
        if was:
            self.train()
        return out

    @paddle.no_grad()
    def visuals(self, batch: Dict, outputs: Dict) -> Dict[str, np.ndarray]:
        """One row per image (up to 4): input | landmarks (green GT, red predicted) | render | shape."""
        images = batch["image"]
        if images.ndim == 4:
            images = images.unsqueeze(1)
        x = self._flat(images)[:4]
        codes = {k: v[:4] for k, v in outputs["codes"].items()}
        dec = self.decode(codes, render=True, background=x)
        shp = self.face.render(dec, mode="shape")["images"]
        lm_gt = self._flat(batch["landmark"])[:4].numpy() if "landmark" in batch else None
        rows = []
        for i in range(x.shape[0]):
            img = x[i].numpy().transpose(1, 2, 0)
            lmk = draw_landmarks(img, dec["landmarks2d"][i].numpy(), (1.0, 0.1, 0.1),
                                 None if lm_gt is None else lm_gt[i], (0.1, 1.0, 0.1))
            rows.append(np.concatenate([img, lmk, dec["image"][i].numpy().transpose(1, 2, 0),
                                        shp[i].numpy().transpose(1, 2, 0)], 1))
        grid = np.concatenate(rows, 0)
        return {"deca": (np.clip(grid, 0, 1) * 255).astype(np.uint8)}
