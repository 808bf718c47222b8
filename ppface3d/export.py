"""The exportable components of ppface3d's models (DECA, DECARelease), declared for :mod:`ppengine.export`.

==================  ==========================================================================
component           inputs -> outputs (B = ``--batch``, default 1; S = the model's image_size)
==================  ==========================================================================
``encoder``         image (B, 3, S, S) RGB in [0, 1], DECA's crop -> shape, tex, exp, pose (B, 6),
                    cam (B, 3), light (B, 9, 3) [+ detail (B, 128) for DECARelease] (the codes of
                    ``encode_test``: DECA's test-time flip included when the config has it)
``flame``           shape, expression, pose (B, 6: global + jaw axis-angle) -> vertices (B, V, 3),
                    landmarks3d (B, 68, 3) (the contour follows the head's yaw, as FaceModel.decode)
``reconstruct``     image -> vertices, landmarks3d, landmarks2d (B, 68, 2) screen NDC (x right,
                    y down, [-1, 1]), cam [s, tx, ty] in one graph
``detail_decoder``  DECARelease: detail (B, 128), expression (B, 50), jaw_pose (B, 3) -> displacement
                    (B, 1, 256, 256) UV displacement along the normal (DECA's D_detail; add the
                    fixed displacement map of DECA's data/ for DECA's ``displacement_map``)
==================  ==========================================================================

The mesh's triangles are written beside the graphs (``faces.npy``, (F, 3) int32), so a program
can build the mesh from ``vertices`` without this library.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppengine.export import Component, TensorSpec, register_components, register_pipeline_info

from .models.detail import N_DETAIL

CODES = ("shape", "tex", "exp", "pose", "cam", "light")


def _code_shapes(model) -> dict:
    sizes = dict(model.code_sizes)
    out = {k: (int(sizes[k]),) for k in CODES if k != "light"}
    out["light"] = (9, 3)
    if hasattr(model, "E_detail"):
        out["detail"] = (N_DETAIL,)
    return out


def _code_names(model):
    return list(CODES) + (["detail"] if hasattr(model, "E_detail") else [])


class EncoderGraph(nn.Layer):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        codes = self.model.encode_test(image)
        return tuple(codes[k] for k in _code_names(self.model))


class FlameGraph(nn.Layer):
    def __init__(self, face):
        super().__init__()
        self.face = face

    def forward(self, shape, expression, pose):
        out = self.face.decode({"shape": shape, "exp": expression, "pose": pose})
        return out["vertices"], out["landmarks3d"]


class ReconstructGraph(nn.Layer):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        codes = self.model.encode_test(image)
        out = self.model.face.decode(codes)
        return out["vertices"], out["landmarks3d"], out["landmarks2d"], out["cam"]


class DetailGraph(nn.Layer):
    """DECA's detail generator with its 2x upsamplings written with explicit sizes (paddle2onnx
    cannot export ``nn.Upsample(scale_factor=2)``); the same layers and numbers."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, detail, expression, jaw_pose):
        d = self.decoder
        x = d.l1(paddle.concat([jaw_pose, expression, detail], axis=1)).reshape([-1, 128, d.init_size, d.init_size])
        for layer in d.conv_blocks:
            if isinstance(layer, nn.Upsample):
                x = F.interpolate(x, size=[2 * x.shape[2], 2 * x.shape[3]], mode=layer.mode,
                                  align_corners=layer.align_corners)
            else:
                x = layer(x)
        return (x * d.out_scale,)


def _image_spec(model, b):
    s = int(model.image_size)
    return TensorSpec("image", (b, 3, s, s), description="a face crop, RGB in [0, 1] (DECA's crop: the landmark box "
                      "enlarged 1.25x, resized to the model's size)", range=(0.0, 1.0))


def _code_specs(model, b, names=None):
    shapes = _code_shapes(model)
    desc = {"shape": "FLAME shape coefficients", "tex": "albedo coefficients", "exp": "FLAME expression coefficients",
            "pose": "global + jaw axis-angle (radians)", "cam": "orthographic camera [s, tx, ty]",
            "light": "9 spherical-harmonics coefficients x RGB", "detail": "DECA's detail code"}
    return [TensorSpec(k, (b,) + shapes[k], description=desc[k]) for k in (names or _code_names(model))]


def face_components(model, options):
    b = int(options.batch or 1)
    face = model.face
    V = int(face.flame.num_vertices)
    sizes = _code_shapes(model)
    comps = [
        Component("encoder", EncoderGraph(model), [_image_spec(model, b)], _code_specs(model, b),
                  "face crop -> DECA codes"),
        Component("flame", FlameGraph(face),
                  [TensorSpec("shape", (b,) + sizes["shape"], description="FLAME shape coefficients"),
                   TensorSpec("expression", (b,) + sizes["exp"], description="FLAME expression coefficients"),
                   TensorSpec("pose", (b, 6), description="global + jaw axis-angle (radians)", range=(-0.3, 0.3))],
                  [TensorSpec("vertices", (b, V, 3), description="mesh vertices (world, metres); triangles: faces.npy"),
                   TensorSpec("landmarks3d", (b, 68, 3), description="68 landmarks (world), contour by head yaw")],
                  "FLAME: codes -> mesh and landmarks"),
        Component("reconstruct", ReconstructGraph(model), [_image_spec(model, b)],
                  [TensorSpec("vertices", (b, V, 3), description="mesh vertices (world); triangles: faces.npy"),
                   TensorSpec("landmarks3d", (b, 68, 3), description="68 landmarks (world)"),
                   TensorSpec("landmarks2d", (b, 68, 2), description="68 landmarks in the crop, NDC: x right, y down, "
                              "[-1, 1]"),
                   TensorSpec("cam", (b, 3), description="orthographic camera [s, tx, ty]")],
                  "face crop -> mesh, landmarks and camera in one graph"),
    ]
    if hasattr(model, "D_detail"):
        n_exp = sizes["exp"][0]
        comps.append(Component(
            "detail_decoder", DetailGraph(model.D_detail),
            [TensorSpec("detail", (b, N_DETAIL), description="DECA's detail code (encoder output)"),
             TensorSpec("expression", (b, n_exp), description="FLAME expression coefficients"),
             TensorSpec("jaw_pose", (b, 3), description="jaw axis-angle (pose[:, 3:6])", range=(-0.3, 0.3))],
            [TensorSpec("displacement", (b, 1, 256, 256), description="UV displacement along the normal (without "
                        "DECA's fixed displacement map)")],
            "DECA's detail decoder"))
    return comps


register_components("DECA")(face_components)
register_components("DECARelease")(face_components)


def face_info(model, components, options):
    faces = np.asarray(model.face.faces, np.int32)
    return {"pipeline": {"kind": "face3d", "model": type(model).__name__,
                         "image": {"size": int(model.image_size), "range": [0, 1], "layout": "RGB, NCHW"},
                         "mesh": {"vertices": int(model.face.flame.num_vertices), "faces": "faces.npy"},
                         "codes": {k: list(v) for k, v in _code_shapes(model).items()}},
            "arrays": {"faces.npy": faces},
            "metadata": {"license": "FLAME / DECA model licences (non-commercial research)",
                         "description": "3D face reconstruction (ppface3d)"}}


register_pipeline_info("DECA")(face_info)
register_pipeline_info("DECARelease")(face_info)
