"""The face side of the app: one preprocessor and one reconstructor per model choice, shared by
the Reconstruct and Expression-transfer tabs (built lazily, used under :data:`MODEL_LOCK`).

Everything here calls the library (:class:`ppface3d.data.preprocess.FacePreprocessor`,
:class:`ppface3d.apps.reconstruct.FaceReconstructor`, :mod:`ppface3d.apps.export`); the app adds
only per-visitor folders and the messages shown in the page.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ppengine.errors import InputError

from .common import zip_files

FIT = "fit (optimisation, no network)"
DECA = "DECA (trained weights)"


@dataclass
class FaceSettings:
    config: Optional[str] = None
    weights: Optional[str] = None
    overrides: Tuple[str, ...] = ()
    fit_size: int = 128
    fit_iters: Tuple[int, int] = (100, 0)  # ppface3d.apps.fit.DEFAULT_ITERS
    max_faces: Optional[int] = 4


class FaceService:
    def __init__(self, settings: FaceSettings):
        self.s = settings
        self._pre = None
        self._rec: Dict[str, object] = {}

    def choices(self) -> List[str]:
        """Model choices: fitting always, DECA when weights are configured."""
        return [FIT] + ([DECA] if self.s.weights else [])

    @property
    def pre(self):
        if self._pre is None:
            from ppface3d.data.preprocess import FacePreprocessor

            self._pre = FacePreprocessor(crop_size=224, scale=1.25, max_faces=self.s.max_faces)
        return self._pre

    def reconstructor(self, choice: str):
        if choice not in self.choices():
            raise InputError(f"model {choice!r} is not available here (choices: {', '.join(self.choices())}); "
                             "DECA needs the app started with --weights")
        if choice not in self._rec:
            from ppface3d.apps.reconstruct import FaceReconstructor

            if choice == DECA:
                self._rec[choice] = FaceReconstructor(config=self.s.config, weights=self.s.weights,
                                                      overrides=list(self.s.overrides))
            else:
                self._rec[choice] = FaceReconstructor(config=self.s.config, overrides=list(self.s.overrides),
                                                      fit_size=self.s.fit_size, fit_iters=tuple(self.s.fit_iters))
        return self._rec[choice]

    def detect(self, path: str, display: str):
        """Faces of one photo -> (PreprocessResult, message or None); the message is the CLI's line
        (``name: 0 face(s); no face found ...``) with the visitor's file name."""
        r = self.pre(path, name=path)
        msg = r.summary().replace(path, display) if (r.messages or not r.ok) else None
        return r, msg

    def reconstruct(self, rec, face, original, folder: str) -> Dict[str, str]:
        """Codes, meshes and renders of one face into ``folder`` -> named files (the CLI's set,
        plus ``mesh_obj.zip``: OBJ + MTL + texture + normal map)."""
        codes = rec.codes(face)
        rec.save(face, codes, folder, original)
        out = {k: os.path.join(folder, f) for k, f in (
            ("glb", "mesh.glb"), ("codes", "codes.npz"), ("shape", "shape.png"), ("textured", "textured.png"),
            ("overlay", "overlay.png"), ("landmarks", "landmarks.png"))}
        obj = [os.path.join(folder, f) for f in ("mesh.obj", "mesh.mtl", "mesh.png", "mesh_normals.png")]
        out["obj_zip"] = zip_files(os.path.join(folder, "mesh_obj.zip"), obj, folder)
        out["_codes"] = codes
        return out

    def transfer(self, rec, face, target_codes, source_codes, original, folder: str, frames: int = 12) -> Dict[str, str]:
        """The source's expression on the target face: GIF, mesh (OBJ zip + GLB) and renders."""
        from ppface3d.apps.export import save_animation, save_glb, save_obj, save_png

        os.makedirs(folder, exist_ok=True)
        tc = rec.transfer(source_codes, target_codes)
        dec = rec.decode(tc)
        f = rec.face
        p = lambda n: os.path.join(folder, n)  # noqa: E731
        out = {
            "textured": save_png(p("transfer_textured.png"), dec["textured"]),
            "shape": save_png(p("transfer_shape.png"), dec["shape"]),
            "overlay": save_png(p("transfer_overlay.png"), rec.overlay(face, dec, original)),
            "glb": save_glb(p("transfer.glb"), dec["vertices"], f.faces, f.uv_coords, f.uv_faces, dec["albedo"]),
        }
        save_obj(p("transfer.obj"), dec["vertices"], f.faces, f.uv_coords, f.uv_faces, texture=dec["albedo"])
        out["obj_zip"] = zip_files(p("transfer_obj.zip"), [p("transfer.obj"), p("transfer.mtl"), p("transfer.png")],
                                   folder)
        anim = rec.transfer_animation(face, target_codes, source_codes, original, frames)
        out["gif"] = save_animation(p("transfer.gif"), anim, fps=8)
        return out
