"""DECA coarse model: image -> FLAME shape/expression/pose, albedo, SH light, camera -> render.

    model = DECA(image_size=224, encoder_depth=50)          # paper sizes (GPU)
    out = model({"image": images})        # images (B, K, 3, S, S) in [0, 1]
    out["codes"]["shape"]                 # (B*K, n_shape)
    out["landmarks2d"]                    # (B*K, 68, 2) screen NDC (x right, y down, [-1, 1])
    out["image"]                          # (B*K, 3, S, S) rendering (when rendered)

Components (each its own file): :class:`~ppface3d.models.encoder.ResNetEncoder`,
:class:`ppface3d.flame.FLAME`, :class:`~ppface3d.models.albedo.AlbedoModel`,
:class:`ppface3d.render.Renderer` with DECA's orthographic camera, and
:class:`~ppface3d.losses.DECALoss`. Codes follow DECA: pose = [global axis-angle (3),
jaw axis-angle (3)], cam = [s, tx, ty], light = 9 SH x RGB.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import paddle
import paddle.nn as nn

from ppengine.registry import LOSSES, MODELS

from ..losses.deca_losses import consistency_order
from .albedo import AlbedoModel
from .encoder import ResNetEncoder

# DECA's crop: landmark box side * 1.1 * 1.25 spans the image (NDC width 2).
CROP_FACTOR = 1.1 * 1.25


def framing_camera(landmarks3d: np.ndarray) -> np.ndarray:
    """Orthographic camera [s, tx, ty] framing 3D landmarks (..., 68, 3) as DECA's crop does.

    The projected landmark box's mean side times 1.1 * 1.25 spans the image, centred.
    Returns (..., 3).
    """
    lm = np.asarray(landmarks3d, np.float64)
    lo, hi = lm[..., :2].min(-2), lm[..., :2].max(-2)
    side = ((hi - lo).sum(-1)) / 2.0
    s = 2.0 / (side * CROP_FACTOR)
    c = (lo + hi) / 2.0
    return np.stack([s, -c[..., 0], -c[..., 1]], -1).astype(np.float32)


# loss.geometry: channels predicted per cell (normal x, y, z, relative depth; the data adds coverage)
GEOMETRY_CHANNELS = 4


def sh_ambient(level: float = 1.0) -> np.ndarray:
    """(9, 3) SH coefficients of a uniform white light giving shading ``level``."""
    from ..render.shading import SH_CONSTANTS

    sh = np.zeros((9, 3), np.float32)
    sh[0] = level / SH_CONSTANTS[0]
    return sh


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

        from ..flame import FLAME
        from ..render import Renderer

        if n_pose != 6 or n_cam != 3 or n_light != 27:
            raise ConfigError("model: DECA's pose is 6 (global + jaw axis-angle), cam 3 ([s, tx, ty]) and "
                              f"light 27 (9 SH x RGB); got n_pose={n_pose}, n_cam={n_cam}, n_light={n_light}")
        self.image_size = int(image_size)
        self.flame = FLAME(flame_model_path, flame_landmark_path, n_shape=n_shape, n_expression=n_exp)
        self.albedo = AlbedoModel(n_tex, uv_size, albedo_path, flame=self.flame, seed=albedo_seed)
        self.renderer = Renderer(self.image_size, self.flame.faces, self.flame.uv_coords, self.flame.uv_faces,
                                 backend=render_backend)
        self.code_sizes = {"shape": n_shape, "tex": n_tex, "exp": n_exp, "pose": n_pose, "cam": n_cam,
                           "light": n_light}
        with paddle.no_grad():
            mean = self.flame(shape=paddle.zeros([1, n_shape]))
        self._mean_lmk = self._lmk68(mean).numpy()[0]
        cam0 = framing_camera(self._mean_lmk)
        self.loss_fn = LOSSES.build(loss or {"type": "DECALoss"}, key_path="model.loss")
        aux = GEOMETRY_CHANNELS if getattr(self.loss_fn, "w", {}).get("geometry", 0) > 0 else 0
        self.encoder = ResNetEncoder(self.code_sizes, depth=encoder_depth, hidden=encoder_hidden,
                                     cam_init=tuple(cam0.tolist()), light_init=sh_ambient(1.0).reshape(-1),
                                     pretrained=encoder_weights, width=encoder_width, pool=encoder_pool,
                                     image_size=self.image_size, aux_channels=aux)
        if getattr(self.loss_fn, "w", {}).get("shape_metric", 0) > 0:
            from ..losses.metrics import shape_error_matrix

            self.loss_fn.set_shape_metric(shape_error_matrix(self.flame, n_shape))
        self._train_step = None  # set by the engine (set_train_step) for staged losses
        self.test_flip = bool(test_flip)
        self._mirror = None

    def set_train_step(self, step: int):
        """Engine hook: the training iteration about to run (``loss.photo_start`` stages)."""
        self._train_step = int(step)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _lmk68(flame_out):
        return flame_out.landmarks_full68 if flame_out.landmarks_full68 is not None else flame_out.landmarks

    @property
    def faces(self) -> np.ndarray:
        return self.flame.faces

    def encode(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """images (N, 3, S, S) in [0, 1] -> codes dict (shape (N, n_shape), ..., light (N, 9, 3))."""
        return self.encoder(images)

    def mirror_signs(self) -> np.ndarray:
        """Per shape coefficient, how it maps under a left-right mirror of the head (x -> -x):
        +1 (mirror-symmetric direction), -1 (antisymmetric) or 0 (neither, or the template is not
        symmetric); see :mod:`ppface3d.flame.mirror`."""
        if self._mirror is None:
            from ..flame.mirror import mirror_maps

            self._mirror = mirror_maps(self.flame).shape_sign
        return self._mirror

    @paddle.no_grad()
    def encode_test(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Codes for evaluation and inference: :meth:`encode`, and with ``test_flip`` the shape
        code averaged with the one read from the mirrored image (mapped back by
        :meth:`mirror_signs`; coefficients without a mirror symmetry keep the direct reading)."""
        codes = self.encode(images)
        if self.test_flip:
            sign = paddle.to_tensor(self.mirror_signs())
            mirrored = self.encode(images.flip([3]))["shape"] * sign
            codes["shape"] = paddle.where(sign != 0, (codes["shape"] + mirrored) * 0.5, codes["shape"])
        return codes

    def decode(self, codes: Dict[str, paddle.Tensor], render: bool = True,
               background: Optional[paddle.Tensor] = None, vertices: bool = True) -> Dict[str, paddle.Tensor]:
        """FLAME + camera (+ albedo and rendering) from codes.

        Returns 'vertices' (N, V, 3) world, 'landmarks3d' (N, 68, 3) world, 'landmarks2d'
        (N, 68, 2) screen NDC, 'transformed_vertices' (N, V, 3) screen NDC (``vertices=False``
        without ``render``: landmarks only, from FLAME's landmark vertices); when ``render``:
        'image' (N, 3, S, S) shaded albedo over ``background`` (default black), 'alpha'
        (N, 1, S, S), 'albedo' (N, 3, T, T) UV albedo, 'shape_image' (N, 3, S, S) grey shading,
        'normal_images'.
        """
        from ..render import OrthographicCamera

        pose = codes["pose"]
        fo = self.flame(shape=codes["shape"], expression=codes["exp"], global_pose=pose[:, :3],
                        jaw_pose=pose[:, 3:6], landmarks_only=not (vertices or render))
        cam = OrthographicCamera(codes["cam"])
        lmk3d = fo.landmarks
        out = {"landmarks3d": lmk3d, "landmarks2d": cam.project(lmk3d)}
        if fo.vertices is not None:
            out.update(vertices=fo.vertices, transformed_vertices=cam.transform(fo.vertices))
        if render:
            albedo = self.albedo(codes["tex"])
            r = self.renderer(fo.vertices, cam, albedos=albedo, lights=codes["light"], background=background)
            out.update(image=r["images"], alpha=r["alpha_images"], albedo=albedo,
                       normal_images=r["normal_images"], albedo_images=r["albedo_images"])
        return out

    def shape_images(self, codes, vertices=None) -> paddle.Tensor:
        """Grey, lit renders of the geometry (N, 3, S, S) (DECA's 'shape_images')."""
        from ..render import OrthographicCamera

        if vertices is None:
            pose = codes["pose"]
            vertices = self.flame(shape=codes["shape"], expression=codes["exp"], global_pose=pose[:, :3],
                                  jaw_pose=pose[:, 3:6]).vertices
        N = vertices.shape[0]
        light = np.zeros((9, 3), np.float32)
        light[:] = sh_ambient(0.75)
        light[3] = 0.45  # frontal (z) light
        light[2] = 0.25  # from above
        lights = paddle.to_tensor(np.tile(light[None], (N, 1, 1)))
        r = self.renderer(vertices, OrthographicCamera(codes["cam"]), lights=lights,
                          vertex_colors=paddle.full([N, vertices.shape[1], 3], 0.8))
        return r["images"]

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
        if self.loss_fn.w["shape_vertex"] > 0 and "gt_verts_neutral" in target:
            pred["verts_neutral"] = self.flame(shape=outputs["codes"]["shape"]).vertices
        if "image" in outputs:
            pred["image"] = outputs["image"]
            if self.loss_fn.use_identity:
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
        neutral = self.flame(shape=codes["shape"])
        mean = self.flame(shape=paddle.zeros([1, self.code_sizes["shape"]]))
        out.update(codes=codes, verts_neutral=neutral.vertices, lmk3d_neutral=self._lmk68(neutral),
                   verts_mean=mean.vertices[0], lmk3d_mean=self._lmk68(mean)[0], faces=self.flame.faces)
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
        shp = self.shape_images(codes, dec["vertices"])
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


def draw_landmarks(image: np.ndarray, lmk_ndc: np.ndarray, color=(1.0, 0.1, 0.1), lmk2=None, color2=(0.1, 1.0, 0.1)):
    """Draw (68, 2) NDC landmarks (and optionally a second set) on a copy of an (S, S, 3) float image."""
    out = np.array(image, dtype=np.float32, copy=True)
    S = out.shape[0]
    for pts, col in ((lmk2, color2), (lmk_ndc, color)):
        if pts is None:
            continue
        px = (np.asarray(pts)[:, :2] + 1.0) * S / 2.0 - 0.5
        r = max(1, S // 224)
        for x, y in np.round(px).astype(int):
            out[max(0, y - r):max(0, y + r + 1), max(0, x - r):max(0, x + r + 1)] = col
    return out
