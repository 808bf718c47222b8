"""Reconstruction with MICA's shape: ``tools/infer.py face3d --model mica``.

    python tools/infer.py face3d --image photo.jpg --model mica --weights output/mica          # + the fitter
    python tools/infer.py face3d --image photo.jpg --model mica --weights output/mica --base output/deca
    python tools/infer.py face3d --image photo.jpg --model mica -c configs/mica_release.yml \\
        -o model.checkpoint=/path/mica.tar -o model.flame_model_path=/path/generic_model.pkl

    mica = load_mica(weights="output/mica")            # or config="configs/mica_release.yml", overrides=[...]
    rec = MICAReconstructor(mica)                      # or MICAReconstructor(mica, base="output/deca")
    codes = rec.codes(face)                            # face: a FaceCrop; codes as FaceReconstructor's

MICA gives only the neutral shape. The rest (expression, jaw and head pose, camera, albedo,
light) comes from the fitter, which fits them with the shape held at MICA's, or from a trained
DECA-family model (``base``), whose codes keep their own camera and get MICA's shape. The meshes,
renders and files are the reconstructor's (:class:`~ppface3d.apps.reconstruct.FaceReconstructor`),
on MICA's face model (its FLAME).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from ppengine.errors import InputError

from .fit import DEFAULT_ITERS
from .reconstruct import CODE_KEYS, FaceReconstructor

_HOW = ("--model mica needs MICA's weights: --weights output/mica (a run of configs/mica.yml), or "
        "-c configs/mica_release.yml -o model.checkpoint=/path/mica.tar")


def load_mica(weights: Optional[str] = None, config: Optional[str] = None, overrides: Sequence[str] = ()):
    """A MICA model in eval mode: a trained run folder / weights file (with its config.yml), or a
    config (``configs/mica_release.yml``) whose ``model.checkpoint`` / ``model.weights`` is MICA's
    ``mica.tar`` (or a weights file of that config)."""
    import os

    from ..models.mica import MICA

    if config:
        from ppengine.config import load_config
        from ppengine.trainer import build_model

        cfg = load_config(config, list(overrides) + ([f"model.weights={weights}"] if weights else []))
        m = cfg.get("model") or {}
        if not (m.get("weights") or m.get("checkpoint")):
            raise InputError(_HOW)
        if weights and not os.path.isfile(weights):
            raise InputError(f"--weights {weights!r}: with -c give a weights file (or MICA's mica.tar)")
        model = build_model(cfg)
    elif weights:
        if not os.path.exists(weights):
            raise InputError(f"MICA weights {weights!r} not found. {_HOW}")
        from ppengine import load_for_inference

        model, _ = load_for_inference(weights, overrides)
    else:
        raise InputError(_HOW)
    if not isinstance(model, MICA):
        raise InputError(f"--model mica: {weights or config} holds a {type(model).__name__}, not a MICA model. {_HOW}")
    model.eval()
    return model


class MICAReconstructor(FaceReconstructor):
    """Codes with MICA's shape; the other codes from ``base`` (a DECA run folder / weights file,
    ``base_config`` for a bare weights file) or, without it, the fitter with the shape fixed.

    Args:
        mica: a :class:`~ppface3d.models.mica.MICA` (:func:`load_mica`).
        base, base_config, base_overrides: the DECA-family model for expression, pose, camera, albedo
            and light (it must use MICA's FLAME and albedo space).
        render_size, fit_size, fit_iters, uv_size, progress: as :class:`FaceReconstructor`.
    """

    def __init__(self, mica, base: Optional[str] = None, base_config: Optional[str] = None,
                 base_overrides: Sequence[str] = (), render_size: int = 224, fit_size: int = 128,
                 fit_iters=DEFAULT_ITERS, uv_size: int = 256, progress: bool = True):
        from .fit import FaceFitter

        self.mica = mica
        self.model = self.fitter = self.base = None
        face = mica.face
        if base:
            self.base = FaceReconstructor(config=base_config, weights=base, overrides=base_overrides,
                                          render_size=render_size, uv_size=uv_size, progress=progress)
            bf = self.base.face
            same = (bf.flame.model_path == face.flame.model_path and bf.code_sizes["exp"] == face.code_sizes["exp"]
                    and bf.code_sizes["tex"] == face.code_sizes["tex"])
            if not same:
                raise InputError(f"--base {base}: its face model (FLAME {bf.flame.model_path}, exp {bf.code_sizes['exp']}, "
                                 f"tex {bf.code_sizes['tex']}) is not MICA's (FLAME {face.flame.model_path}, exp "
                                 f"{face.code_sizes['exp']}, tex {face.code_sizes['tex']}): use a DECA trained with the "
                                 "same FLAME model and code sizes")
        else:
            self.fitter = FaceFitter(face, image_size=fit_size, landmark_iters=fit_iters[0], photo_iters=fit_iters[1],
                                     progress=progress)
        self.S = int(render_size)
        self.face = face.at_size(self.S)
        self.uv_size = int(uv_size)

    def codes(self, face) -> Dict[str, np.ndarray]:
        """Codes for one :class:`~ppface3d.data.preprocess.FaceCrop`, each (1, ...), 'shape' MICA's."""
        shape = self.mica.shape_from_faces([face]).astype(np.float32)
        if self.base is not None:
            c = dict(self.base.codes(face))
            c["shape"] = shape
            return c
        c = self.fitter.fit(face, init={"shape": shape}, fixed=("shape",))
        return {k: c[k] for k in CODE_KEYS}
