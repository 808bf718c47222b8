"""DECA's released model in Paddle: ``deca_model.tar`` read safely (no torch, no pickle code run)
and mapped onto DECA's three networks, plus DECA's ``data/`` folder files.

    python tools/convert_deca.py -c configs/deca_release.yml --out deca.safetensors \\
        -o model.checkpoint=/path/deca_model.tar -o model.deca_data=/path/DECA/data \\
        -o model.flame_model_path=/path/generic_model.pkl
    python tools/infer.py face3d --image x.jpg -c configs/deca_release.yml --weights deca.safetensors \\
        -o model.deca_data=/path/DECA/data -o model.flame_model_path=/path/generic_model.pkl

    model = DECARelease(deca_data="DECA/data", flame_model_path="generic_model.pkl", checkpoint="deca_model.tar")
    codes = model.encode(images)     # images (N, 3, 224, 224) RGB in [0, 1], DECA's crop
    codes["shape"], codes["tex"], codes["exp"], codes["pose"], codes["cam"], codes["light"], codes["detail"]

Networks (names as in DECA's checkpoint): ``E_flame`` (ResNet-50 -> 2048 -> 1024 -> 236, split as
shape 100, tex 50, exp 50, pose 6, cam 3, light 27), ``E_detail`` (-> 128) and ``D_detail`` (the
detail generator, 181 -> 1 x 256 x 256); see :mod:`.detail` and :mod:`.displacement`.
Torch -> Paddle names: BatchNorm ``running_mean`` / ``running_var`` -> ``_mean`` / ``_variance``
(``num_batches_tracked`` dropped), Linear weights transposed (Paddle stores (in, out)).
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np
import paddle
import paddle.nn as nn

from ppengine.errors import ConfigError, InputError
from ppengine.registry import MODELS

from ..face_model import FaceModel
from ..render.mesh import vertex_normals
from .detail import DetailDecoder, DetailEncoder
from .encoder import DECAResNetEncoder

# DECA's code layout of E_flame's 236 outputs (decalib/utils/config.py: param_list)
DECA_CODES = OrderedDict([("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27)])
NETWORKS = ("E_flame", "E_detail", "D_detail")
# DECA's data/ folder: file -> what it is used for here
DATA_FILES = {"landmark_embedding.npy": "FLAME landmark embedding",
              "fixed_displacement_256.npy": "displacement added to the detail map",
              "uv_face_eye_mask.png": "where details apply (face + eyes)",
              "uv_face_mask.png": "the dense detail mesh's region"}
ALBEDO_FILES = ("FLAME_albedo_from_BFM.npz", "FLAME_texture.npz")
_DECA_FIX = "Give DECA's released deca_model.tar (decalib's ResNet-50 encoders and detail generator)."


def torch_to_paddle_state(torch_sd: Dict[str, np.ndarray], layer: nn.Layer, where: str,
                          owner: str = "DECA's", fix: str = _DECA_FIX) -> Dict[str, np.ndarray]:
    """Map a torch state dict (name -> array) onto ``layer``'s Paddle state dict names and layouts
    (BatchNorm ``running_mean`` / ``running_var`` -> ``_mean`` / ``_variance``, PReLU ``weight`` ->
    ``_weight``, Linear weights transposed).

    Every Paddle entry must be found with the right shape, and every torch entry used (besides
    ``num_batches_tracked``); otherwise an InputError lists what is missing / left over / misshapen,
    saying whose layout was expected (``owner``) and what to give instead (``fix``).
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in torch_sd.items()}
    linear = {name + ".weight" for name, sub in layer.named_sublayers() if isinstance(sub, nn.Linear)}
    out, used, missing, bad = {}, set(), [], []
    for name, t in layer.state_dict().items():
        key = name.replace("._mean", ".running_mean").replace("._variance", ".running_var").replace(
            "._weight", ".weight")
        if key not in sd:
            missing.append(key)
            continue
        v = np.asarray(sd[key], np.float32)
        if name in linear:
            v = v.T
        if tuple(v.shape) != tuple(t.shape):
            bad.append(f"{key}: file {tuple(sd[key].shape)} vs {tuple(t.shape)}")
            continue
        out[name] = np.ascontiguousarray(v)
        used.add(key)
    extra = sorted(k for k in sd if k not in used and not k.endswith("num_batches_tracked") and k not in missing)
    extra = [k for k in extra if not any(k == b.split(":")[0] for b in bad)]
    if missing or bad or extra:
        parts = []
        for label, items in (("missing", missing), ("shape mismatches", bad), ("unexpected", extra)):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        raise InputError(f"{where} does not match {owner} {type(layer).__name__}: " + "; ".join(parts) + f". {fix}")
    return out


def read_deca_checkpoint(path: str) -> Dict[str, Dict[str, np.ndarray]]:
    """``deca_model.tar`` -> {'E_flame': state, 'E_detail': state, 'D_detail': state} (NumPy),
    read by :func:`ppengine.safe_load.load_torch_checkpoint` (an allow-list: a file asking for
    anything else is refused before it runs)."""
    from ppengine.safe_load import load_torch_checkpoint, torch_state_dict

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"model.checkpoint: {path!r} not found (DECA's deca_model.tar; see docs/released_models.md)")
    ckpt = load_torch_checkpoint(path)
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in NETWORKS):
        have = list(ckpt.keys())[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{path}: not a DECA checkpoint: expected entries {list(NETWORKS)}, found {have}")
    return {k: torch_state_dict(ckpt, path, k) for k in NETWORKS}


def _read_mask(path: str, size: int) -> np.ndarray:
    """DECA's UV mask PNG -> (size, size) float in [0, 1] (first channel, nearest resize as
    DECA's ``F.interpolate``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), np.float32)[..., 0] / 255.0
    except Exception as e:  # noqa: BLE001 (a broken image is the user's file)
        raise InputError(f"{path}: cannot read the UV mask image ({e})") from None
    if arr.shape != (size, size):
        rows = (np.arange(size) * arr.shape[0] / size).astype(int)
        cols = (np.arange(size) * arr.shape[1] / size).astype(int)
        arr = arr[rows][:, cols]
    return arr


@contextlib.contextmanager
def _zero_init():
    """Build layers with constant-zero parameters (6x faster than ResNet-50's random init): this
    model only runs released weights, which set every parameter."""
    from paddle.nn.initializer import Constant, set_global_initializer

    set_global_initializer(Constant(0.0), Constant(0.0))
    try:
        yield
    finally:
        set_global_initializer(None)


@MODELS.register()
class DECARelease(nn.Layer):
    """DECA as released: coarse + detail encoders and the detail decoder with DECA's weights.

    Args:
        checkpoint: DECA's ``deca_model.tar`` (None: zero weights until converted ones are loaded, ``--weights``).
        deca_data: DECA's ``data/`` folder: ``landmark_embedding.npy``, ``fixed_displacement_256.npy``,
            ``uv_face_eye_mask.png``, ``uv_face_mask.png`` and the albedo ``FLAME_albedo_from_BFM.npz``
            (or ``FLAME_texture.npz``) are taken from it unless given by path. None: the generated
            FLAME's defaults (no fixed displacement, details on every UV texel).
        flame_model_path: FLAME 2020 ``generic_model.pkl`` (None: ``deca_data/generic_model.pkl`` when
            there, as DECA keeps it, else the generated FLAME model). Its UV layout is read from
            ``head_template.obj`` beside it.
        flame_landmark_path, albedo_path: override the ``deca_data`` files.
        image_size: DECA's input crop (224); uv_size: albedo map size (DECA 256).
        detail_size: the displacement map size (DECA's generator: 256).
        encoder_width: ResNet first-stage channels (64 = DECA; smaller only for quick tests,
            which cannot load DECA's file).
    """

    def __init__(self, checkpoint: Optional[str] = None, deca_data: Optional[str] = None,
                 flame_model_path: Optional[str] = None, flame_landmark_path: Optional[str] = None,
                 albedo_path: Optional[str] = None, image_size: int = 224, uv_size: int = 256,
                 detail_size: int = 256, encoder_width: int = 64, render_backend: str = "auto"):
        super().__init__()
        if deca_data is not None and not os.path.isdir(deca_data):
            raise ConfigError(f"model.deca_data: {deca_data!r} is not a folder (DECA's data/ folder)")
        if int(detail_size) != 256:
            raise ConfigError(f"model.detail_size: DECA's detail generator makes 256 x 256 maps, got {detail_size}")
        states = read_deca_checkpoint(checkpoint) if checkpoint else None  # a bad file fails before any building

        def data_file(name, given=None, required=True):
            if given is not None or deca_data is None:
                return given
            p = os.path.join(deca_data, name)
            if not os.path.isfile(p):
                if required:
                    raise InputError(f"model.deca_data: {p} is missing ({DATA_FILES[name]}); "
                                     "use DECA's data/ folder as released")
                return None
            return p

        if albedo_path is None and deca_data is not None:
            albedo_path = next((os.path.join(deca_data, n) for n in ALBEDO_FILES
                                if os.path.isfile(os.path.join(deca_data, n))), None)
        if flame_model_path is None and deca_data is not None and os.path.isfile(os.path.join(deca_data, "generic_model.pkl")):
            flame_model_path = os.path.join(deca_data, "generic_model.pkl")  # where DECA keeps it
        landmarks = data_file("landmark_embedding.npy", flame_landmark_path)
        fixed = data_file("fixed_displacement_256.npy")
        eye = data_file("uv_face_eye_mask.png")
        face_mask = data_file("uv_face_mask.png")
        S = int(detail_size)
        self.fixed_displacement = None
        if fixed is not None:
            from ppengine.safe_load import load_npy

            arr = np.asarray(load_npy(fixed), np.float32)
            if arr.shape != (S, S):
                raise InputError(f"{fixed}: expected a ({S}, {S}) displacement map, got {arr.shape}")
            self.fixed_displacement = arr
        eye_mask = _read_mask(eye, S) if eye else None
        region_mask = _read_mask(face_mask, S) if face_mask else None
        self.image_size = int(image_size)
        self.code_sizes = dict(DECA_CODES)
        with _zero_init():  # released weights only (checkpoint / --weights): no random init to pay for
            self.E_flame = DECAResNetEncoder(sum(DECA_CODES.values()), width=encoder_width)
            self.E_detail = DetailEncoder(width=encoder_width)
            self.D_detail = DetailDecoder()
        if states is not None:
            self.load_checkpoint(checkpoint, states)
        self.face = FaceModel(n_shape=DECA_CODES["shape"], n_exp=DECA_CODES["exp"], n_tex=DECA_CODES["tex"],
                              image_size=self.image_size, uv_size=int(uv_size), flame_model_path=flame_model_path,
                              flame_landmark_path=landmarks, albedo_path=albedo_path, render_backend=render_backend)
        if self.face.uv_coords is None:
            raise InputError(f"{flame_model_path}: this FLAME model has no UV layout; put DECA's head_template.obj "
                             "beside it (DECA keeps generic_model.pkl and head_template.obj in its data/ folder)")
        self.uvmap = self.face.uv_map(S)
        covered = self.uvmap.covered.astype(np.float32)
        self.face_eye_mask = eye_mask if eye_mask is not None else covered
        self.face_mask = region_mask if region_mask is not None else covered

    def load_checkpoint(self, path: str, states: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> None:
        """Load DECA's ``deca_model.tar`` into E_flame, E_detail and D_detail (strict names and shapes)."""
        states = read_deca_checkpoint(path) if states is None else states
        for net in NETWORKS:
            layer = getattr(self, net)
            arrays = torch_to_paddle_state(states[net], layer, f"{path} [{net}]")
            layer.set_state_dict({k: paddle.to_tensor(v) for k, v in arrays.items()})

    @property
    def flame(self):
        return self.face.flame

    # ------------------------------------------------------------------ DECA's encode / decode
    def decompose(self, params: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """E_flame's (N, 236) output -> DECA's code dict ('light' reshaped to (N, 9, 3))."""
        out, off = {}, 0
        for k, n in DECA_CODES.items():
            out[k] = params[:, off:off + n]
            off += n
        out["light"] = out["light"].reshape([-1, 9, 3])
        return out

    def encode(self, images: paddle.Tensor, detail: bool = True) -> Dict[str, paddle.Tensor]:
        """DECA's ``encode``: images (N, 3, S, S) RGB in [0, 1] -> shape, tex, exp, pose, cam,
        light (N, 9, 3) and, with ``detail``, the 128-d 'detail' code."""
        codes = self.decompose(self.E_flame(images))
        if detail:
            codes["detail"] = self.E_detail(images)
        return codes

    @paddle.no_grad()
    def encode_test(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        return self.encode(images)

    @paddle.no_grad()
    def encode_crops(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Face crops (N, 3, H, W) in [0, 1] of any size -> DECA's codes (with 'detail'), the crops
        resized to 224 (bilinear)."""
        import paddle.nn.functional as F

        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"DECARelease: face crops must be (N, 3, H, W), got {list(images.shape)}")
        if images.shape[-2:] != [self.image_size, self.image_size]:
            images = F.interpolate(images, size=[self.image_size, self.image_size], mode="bilinear",
                                   align_corners=False)
        return self.encode(images)

    def displacement(self, codes: Dict[str, paddle.Tensor]) -> paddle.Tensor:
        """D_detail's (N, 1, 256, 256) displacement from codes 'detail', 'exp' and the jaw pose."""
        return self.D_detail.displacement(codes["detail"], codes["exp"], codes["pose"][:, 3:6])

    def detail_normals(self, uv_z: paddle.Tensor, vertices: paddle.Tensor) -> paddle.Tensor:
        """DECA's ``displacement2normal`` on the coarse mesh ``vertices`` (N, V, 3): (N, 3, 256, 256)."""
        return self.face.detail_normal_map(uv_z, vertices, self.face_eye_mask, self.fixed_displacement)

    def decode(self, codes: Dict[str, paddle.Tensor], render: bool = True) -> Dict[str, paddle.Tensor]:
        """Coarse geometry (FaceModel.decode) and, with a 'detail' code, 'displacement_map'
        (N, 1, 256, 256, the fixed displacement included, as DECA's) and 'uv_detail_normals';
        with ``render`` also 'image', 'alpha', 'albedo' and 'shape_detail' (grey shading of the
        detail normals)."""
        out = self.face.decode(codes)
        if "detail" in codes:
            uv_z = self.displacement(codes)
            out["uv_detail_normals"] = self.detail_normals(uv_z, out["vertices"])
            fixed = 0.0 if self.fixed_displacement is None else paddle.to_tensor(self.fixed_displacement)
            out["displacement_map"] = uv_z + fixed
        if render:
            albedo = self.face.albedo_map(codes["tex"])
            r = self.face.render(out, light=codes["light"], albedo=albedo)
            out.update(image=r["images"], alpha=r["alpha_images"], albedo=albedo)
            if "uv_detail_normals" in out:
                out["shape_detail"] = self.face.render(out, mode="shape", normal_map=out["uv_detail_normals"])["images"]
        return out

    @paddle.no_grad()
    def reconstruct(self, images: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """Inference (the reconstructor's contract, as :meth:`DECA.reconstruct`): face crops
        (N, 3, H, W) in [0, 1], resized to 224 -> 'codes' (with 'detail'), geometry, 'textured',
        'shape', 'shape_detail', 'alpha', 'displacement_map', 'uv_detail_normals'."""
        codes = self.encode_crops(images)
        out = self.decode(codes, render=True)
        out.update(codes=codes, textured=out.pop("image"), shape=self.face.render(out, mode="shape")["images"])
        return out

    def dense_mesh(self, out: Dict[str, paddle.Tensor], i: int = 0, texture: Optional[np.ndarray] = None):
        """DECA's ``upsample_mesh`` of decoded item ``i``: (vertices (M, 3), faces (K, 3), colours)."""
        verts = out["vertices"][i:i + 1]
        normals = vertex_normals(verts, paddle.to_tensor(np.asarray(self.face.faces, np.int64)))
        return self.uvmap.dense_mesh(verts[0], normals[0], out["displacement_map"][i, 0], self.face_mask, texture)


def main(argv=None) -> int:
    """``python tools/convert_deca.py -c configs/deca_release.yml --out x.safetensors -o model.checkpoint=...``"""
    import argparse
    import sys

    from ppengine.config import load_config
    from ppengine.errors import PPError
    from ppengine.trainer import build_model

    p = argparse.ArgumentParser(prog="tools/convert_deca.py",
                                description="Convert DECA's deca_model.tar (model.checkpoint) to safetensors "
                                            "for tools/infer.py face3d --weights.")
    p.add_argument("-c", "--config", default="configs/deca_release.yml")
    p.add_argument("-o", "--override", action="append", default=[], help="config override key=value")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.override)
        if not (cfg.get("model") or {}).get("checkpoint"):
            raise ConfigError("model.checkpoint: give DECA's deca_model.tar (-o model.checkpoint=/path/deca_model.tar)")
        if not args.out.endswith(".safetensors"):
            raise InputError(f"--out {args.out!r}: write a .safetensors file")
        from ppengine.checkpoint import save_weights

        model = build_model(cfg)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_weights(args.out, model)  # written atomically by ppengine
    except PPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"DECA weights -> {args.out}")
    return 0
