"""One head from several photos of a person: shared shape and albedo, per-photo expression,
pose, camera and light, and a photo texture merged across the views.

    from ppface3d.apps.fuse import fuse_photos
    files = fuse_photos(["a.jpg", "b.jpg", "c.jpg"], "output/fused")   # fused.obj/.png/.glb, codes

    python tools/infer.py face3d --images a.jpg b.jpg c.jpg --fuse     # or --image folder/ --fuse

1. every photo's largest face is detected and cropped (mediapipe, DECA's crop);
2. :meth:`~ppface3d.apps.fit.FaceFitter.fit_views` fits them together: one shape and albedo
   code, the landmark terms of the K views adding up against the shape prior;
3. texture: every view's photo is sampled into the UV layout through its fitted geometry
   (:func:`sample_views`: each texel's point on the posed mesh projected into the photo, weighted
   by how squarely the surface faces the camera and zero where it is hidden), then each texel is
   taken from the view that sees it best (:func:`best_view`); texels no view sees keep the fitted
   albedo under the views' mean light;
4. written: ``fused.obj`` (+ ``fused.png`` texture, ``fused.mtl``), ``fused.glb``, the neutral
   head ``fused_neutral.obj``, ``codes.npz`` (shape, tex; per view exp, pose, cam, light).
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from ppengine.errors import InputError

# the fitter's settings for fusion: a weaker shape prior than one photo's (the K views' landmark
# terms add up; measured in docs/tracking.md)
FUSE_FIT = dict(w_shape=2e-5)


def _uv_fragments(face, size: int):
    """Rasterized UV layout (cached per face model and size): texel -> face, barycentrics."""
    from ..render import rasterize

    key = ("uv_frags", size)
    if key not in face._cache:
        uv = np.asarray(face.uv_coords, np.float32)
        pos = np.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2, np.zeros(len(uv), np.float32)], 1)[None]
        fr = rasterize(paddle.to_tensor(pos), np.asarray(face.uv_faces, np.int64), size)
        face._cache[key] = (fr.pix_to_face.numpy()[0], fr.bary_coords.numpy()[0])
    return face._cache[key]


@paddle.no_grad()
def sample_views(face, decoded: Dict[str, paddle.Tensor], images: paddle.Tensor, size: int = 256,
                 min_facing: float = 0.2, depth_tol: float = 2e-3) -> Dict[str, np.ndarray]:
    """Each view's photo in UV space.

    Args:
        face: the :class:`~ppface3d.face_model.FaceModel` (at the images' size).
        decoded: ``face.decode(codes)`` of the K views (vertices, cam).
        images: (K, 3, S, S) the crops in [0, 1].
    Returns: 'texture' (K, T, T, 3) float, 'weight' (K, T, T) in [0, 1] (0: not seen).
    """
    p2f, bary = _uv_fragments(face, size)
    covered = p2f >= 0
    f = np.asarray(face.faces)[np.maximum(p2f, 0)]  # (T, T, 3) vertex ids of each texel's face
    K = images.shape[0]
    cam = face.camera(decoded["cam"])
    screen = cam.transform(decoded["vertices"]).numpy()  # (K, V, 3)
    from ..render.mesh import vertex_normals

    normals = vertex_normals(decoded["vertices"], face.renderer.faces).numpy()
    r = face.renderer.rasterizer(decoded["vertices"], face.renderer.faces, cam)[0]
    zbuf, mask = r.zbuf.numpy(), r.mask.numpy()
    S = images.shape[-1]
    tex, wts = [], []
    for k in range(K):
        p = (screen[k][f] * bary[..., None]).sum(-2)      # (T, T, 3) texel on screen
        n = (normals[k][f] * bary[..., None]).sum(-2)
        n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-9
        grid = paddle.to_tensor(p[None, :, :, :2].astype(np.float32))
        col = F.grid_sample(images[k:k + 1], grid, mode="bilinear", padding_mode="border",
                            align_corners=False).numpy()[0].transpose(1, 2, 0)
        ij = np.clip(np.round((p[..., :2] + 1) * S / 2 - 0.5).astype(int), 0, S - 1)
        seen_depth = zbuf[k][ij[..., 1], ij[..., 0]]
        visible = (mask[k][ij[..., 1], ij[..., 0]] > 0) & (p[..., 2] <= seen_depth + depth_tol * float(cam.cam[k, 0]))
        inside = (np.abs(p[..., 0]) <= 1) & (np.abs(p[..., 1]) <= 1)
        facing = np.clip((n[..., 2] - min_facing) / 0.3, 0, 1)
        tex.append(col)
        wts.append((facing * visible * inside * covered).astype(np.float32))
    return {"texture": np.stack(tex).astype(np.float32), "weight": np.stack(wts)}


def best_view(samples: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Merge views: every texel from the view that sees it best (largest weight).
    samples: 'texture' (K, T, T, 3), 'weight' (K, T, T) -> 'texture' (T, T, 3), 'weight' (T, T),
    'view' (T, T) index of the chosen view."""
    w = samples["weight"]
    k = np.argmax(w, 0)
    tex = np.take_along_axis(samples["texture"], k[None, ..., None], 0)[0]
    return {"texture": tex, "weight": np.take_along_axis(w, k[None], 0)[0], "view": k}


def fuse_faces(fitter, faces: Sequence, uv_size: int = 256) -> Dict[str, np.ndarray]:
    """Fit the crops of one person together and merge their photo textures.
    Returns the codes (shape, tex (1, ...); exp, pose, cam, light (K, ...)) plus 'texture'
    (T, T, 3) and its 'weight' and 'view' maps."""
    codes = fitter.fit_views(list(faces))
    face = fitter.face
    K = len(faces)
    t = lambda a: paddle.to_tensor(np.asarray(a, np.float32))  # noqa: E731
    with paddle.no_grad():
        c = {k: t(codes[k]) for k in ("shape", "exp", "pose", "cam", "tex", "light")}
        for k in ("shape", "tex"):
            c[k] = c[k].expand([K, c[k].shape[1]])
        dec = face.decode(c)
        images = paddle.concat([fitter.targets(f)[2] for f in faces])
        merged = best_view(sample_views(face, dec, images, uv_size))
        # texels no view sees: the fitted albedo under the views' mean light
        alb = face.albedo_map(c["tex"][:1])
        alb = F.interpolate(alb, size=[uv_size, uv_size], mode="bilinear").numpy()[0].transpose(1, 2, 0)
    from ..render.shading import SH_CONSTANTS

    level = float(np.mean(codes["light"][:, 0])) * SH_CONSTANTS[0]
    w = np.clip(merged["weight"] / 0.3, 0, 1)[..., None]
    merged["texture"] = np.clip(merged["texture"] * w + alb * level * (1 - w), 0, 1)
    codes.update(merged)
    return codes


def fuse_photos(sources: Sequence[str], output: str, fitter=None, uv_size: int = 256, progress: bool = True) -> List[str]:
    """Fuse the largest face of each photo into one head written to the folder ``output``
    (see the module docstring). A photo without a usable face is reported and left out; fewer
    than one usable face is an InputError."""
    from ppengine.io import atomic_dir

    from ..data.preprocess import FacePreprocessor
    from .export import save_codes, save_glb, save_obj
    from .fit import FaceFitter

    pre = FacePreprocessor(max_faces=1)
    faces, used = [], []
    for src in pre.process_many(list(sources), progress=progress):
        if src.ok:
            faces.append(src.faces[0])
            used.append(src.source)
    pre.close()
    if not faces:
        raise InputError(f"--fuse: none of the {len(sources)} photos has a usable face")
    fitter = fitter or FaceFitter(progress=progress, **FUSE_FIT)
    codes = fuse_faces(fitter, faces, uv_size)
    face = fitter.face
    t = lambda a: paddle.to_tensor(np.asarray(a, np.float32))  # noqa: E731
    with paddle.no_grad():
        neutral = face.neutral(t(codes["shape"]))["vertices"].numpy()[0]
        posed = face.decode({"shape": t(codes["shape"]), "exp": t(codes["exp"][:1]),
                             "pose": t(codes["pose"][:1])})["vertices"].numpy()[0]
    files = []
    with atomic_dir(output) as tmp:
        p = lambda n: os.path.join(tmp, n)  # noqa: E731
        save_codes(p("codes.npz"), {k: codes[k] for k in ("shape", "tex", "exp", "pose", "cam", "light")},
                   sources=np.array(used), view=codes["view"], texture_weight=codes["weight"])
        save_obj(p("fused.obj"), posed, face.faces, face.uv_coords, face.uv_faces, texture=codes["texture"])
        save_obj(p("fused_neutral.obj"), neutral, face.faces, face.uv_coords, face.uv_faces, texture=codes["texture"])
        save_glb(p("fused.glb"), posed, face.faces, face.uv_coords, face.uv_faces, codes["texture"])
        files = sorted(os.listdir(tmp))
    return [os.path.join(output, f) for f in files]
