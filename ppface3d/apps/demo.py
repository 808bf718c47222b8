"""``make demo`` (via tools/demo.py): fit FLAME to skimage.data.astronaut() without a network.

    from ppface3d.apps.demo import demo
    files = demo("output/demo_face3d")

Writes codes.npz, mesh.obj/.glb with texture and normal map, shape/textured/overlay/landmark
renders into ``output``, and an expression-transfer GIF (the fitted face taking a generated
open-mouth expression).
"""
from __future__ import annotations

import os
from typing import List

import numpy as np


def demo(output: str = "output/demo_face3d", fit_iters=(100, 0), fit_size: int = 128,
         progress: bool = True) -> List[str]:
    """Run the optimisation-based fit on the astronaut photo; return the written files."""
    import skimage.data

    from ..data.preprocess import FacePreprocessor
    from .export import save_animation
    from .reconstruct import FaceReconstructor

    photo = skimage.data.astronaut()
    pre = FacePreprocessor(crop_size=224, scale=1.25, max_faces=1)
    r = pre(photo, name="astronaut")
    if not r.ok:  # pragma: no cover - the photo has a clear face
        raise RuntimeError(r.summary())
    face = r.faces[0]
    rec = FaceReconstructor(fit_size=fit_size, fit_iters=fit_iters, progress=progress)
    codes = rec.codes(face)
    files = rec.save(face, codes, output, r.original)
    # expression transfer from a generated source expression: mouth open, first modes
    src = {k: np.array(v, copy=True) for k, v in codes.items()}
    src["exp"][:] = 0.0
    src["exp"][:, :3] = [1.5, -1.0, 0.8]
    src["pose"][:, 3] = 0.25
    frames = rec.transfer_animation(face, codes, src, r.original, frames=12)
    files.append(save_animation(os.path.join(output, "transfer.gif"), frames))
    print(f"face3d demo: {len(files)} files in {output}")
    for f in files:
        print("  " + f)
    return files
