"""FLAME head model as a ``paddle.nn.Layer``.

    flame = FLAME()                                    # generated default model
    flame = FLAME.from_files("generic_model.pkl", "landmark_embedding.npy")   # licensed FLAME
    out = flame(shape=betas, expression=psi, jaw_pose=jaw)
    out.vertices (B, V, 3)   out.landmarks (B, 68, 3)   out.joints (B, 5, 3)

Vertices: v = LBS(T + S(shape) + E(expression) + P(pose), joints(shape, expression), pose) + t.
Joints: 0 root (global_pose), 1 neck, 2 jaw, 3 left eye, 4 right eye.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import paddle

from ppengine.errors import ConfigError, InputError

from . import lbs as L
from .io import LandmarkEmbedding, check_embedding, load_flame_model, load_landmark_embedding

__all__ = ["FLAME", "FLAMEOutput"]

_ROT_FORMATS = {"axis_angle": 3, "rot6d": 6, "euler": 3, "matrix": (3, 3)}
_CONTOURS = ("deca", "smplx")


@dataclass
class FLAMEOutput:
    """FLAME outputs (B = batch size).

    vertices (B, V, 3); landmarks (B, 68, 3) in iBUG order: 17 contour points chosen by head
    yaw, then 51 static inner-face points (None without a landmark embedding);
    landmarks_full68 (B, 68, 3) static 68-point embedding (None when the file has none);
    joints (B, 5, 3) posed joints; landmarks_dense (B, L, 3) the points set with
    :meth:`FLAME.set_dense_landmarks` (None until then); all include ``translation``.
    """

    vertices: paddle.Tensor
    landmarks: Optional[paddle.Tensor]
    landmarks_full68: Optional[paddle.Tensor]
    joints: paddle.Tensor
    landmarks_dense: Optional[paddle.Tensor] = None

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        return [f.name for f in fields(self)]


class FLAME(paddle.nn.Layer):
    """FLAME in Paddle ops: differentiable in every input, any batch size.

    Args:
        model_path: FLAME model pickle (FLAME 2020 / 2023, or the generated one); None uses
            :func:`ppface3d.flame.default_model_path`.
        landmark_path: DECA ``landmark_embedding.npy`` or RingNet ``flame_static_embedding.pkl``;
            None looks beside the model file for ``landmark_embedding.npy`` then
            ``flame_static_embedding.pkl`` (no landmarks if neither exists).
        dynamic_landmark_path: RingNet ``flame_dynamic_embedding.npy`` (default: beside the static file).
        n_shape, n_expression: number of shape / expression coefficients kept (default: all,
            at most 300 / 100). Inputs may give fewer (the rest are zero), never more.
        rotation_format: format of ``global_pose``, ``neck_pose``, ``jaw_pose``:
            'axis_angle' (B, 3), 'rot6d' (B, 6), 'euler' (B, 3; R = Rz Ry Rx) or 'matrix' (B, 3, 3).
        jaw_format: format of ``jaw_pose`` only (default: ``rotation_format``), e.g. 'euler' as DECA offers.
        contour: yaw convention for the 17 contour landmarks: 'deca' (yaw of R_global R_neck,
            table row by +yaw) or 'smplx' (yaw of R_global only, row by -yaw). Default: the
            convention of the landmark file (DECA files 'deca', RingNet files 'smplx').
        dtype: 'float32' or 'float64'.
    """

    def __init__(self, model_path=None, landmark_path=None, dynamic_landmark_path=None,
                 n_shape: Optional[int] = None, n_expression: Optional[int] = None,
                 rotation_format: str = "axis_angle", jaw_format: Optional[str] = None,
                 contour: Optional[str] = None, dtype: str = "float32"):
        super().__init__()
        if model_path is None:
            from .generate import default_model_path

            model_path = default_model_path()
            if landmark_path is None:
                landmark_path = os.path.join(os.path.dirname(model_path), "landmark_embedding.npy")
        model_path = os.fspath(model_path)
        for name, val in (("rotation_format", rotation_format), ("jaw_format", jaw_format or rotation_format)):
            if val not in _ROT_FORMATS:
                raise ConfigError(f"FLAME {name}={val!r}: expected one of {list(_ROT_FORMATS)}")
        if dtype not in ("float32", "float64"):
            raise ConfigError(f"FLAME dtype={dtype!r}: expected 'float32' or 'float64'")
        if contour is not None and contour not in _CONTOURS:
            raise ConfigError(f"FLAME contour={contour!r}: expected one of {_CONTOURS}")
        self.rotation_format = rotation_format
        self.jaw_format = jaw_format or rotation_format
        self._dtype = dtype
        self.model_path = model_path

        m = load_flame_model(model_path)
        V = m["v_template"].shape[0]
        K = m["shapedirs"].shape[2]
        s_avail, e_avail = (300, 100) if K >= 400 else (K - K // 2, K // 2)
        n_shape = s_avail if n_shape is None else int(n_shape)
        n_expression = e_avail if n_expression is None else int(n_expression)
        if not (0 <= n_shape <= s_avail and 0 <= n_expression <= e_avail):
            raise ConfigError(f"FLAME n_shape={n_shape}, n_expression={n_expression}: {model_path} has "
                              f"{s_avail} shape and {e_avail} expression directions")
        self.n_shape, self.n_expression = n_shape, n_expression
        self.num_vertices = V
        sd = np.concatenate([m["shapedirs"][:, :, :n_shape], m["shapedirs"][:, :, s_avail:s_avail + n_expression]], 2)
        dirs = sd.reshape(V * 3, -1).T  # (K, V*3)
        jreg = m["J_regressor"]
        j_template = jreg @ m["v_template"]  # (5, 3)
        j_dirs = np.einsum("jv,vck->kjc", jreg, sd).reshape(sd.shape[2], -1)  # (K, 15)
        posedirs = m["posedirs"].reshape(V * 3, -1).T  # (36, V*3)

        def buf(name, arr, dt=dtype):
            self.register_buffer(name, paddle.to_tensor(np.ascontiguousarray(arr), dtype=dt), persistable=False)

        buf("v_template", m["v_template"])
        buf("dirs", dirs)
        buf("j_template", j_template)
        buf("j_dirs", j_dirs)
        buf("posedirs", posedirs)
        buf("lbs_weights", m["weights"])
        self.parents = [int(p) for p in m["parents"]]
        self._faces = m["f"].astype(np.int64)
        buf("faces_tensor", self._faces, "int64")
        self.uv_coords = m["vt"]
        self.uv_faces = m["ft"]

        # landmarks
        self.landmark_path = None
        if landmark_path is None:
            d = os.path.dirname(model_path)
            for n in ("landmark_embedding.npy", "flame_static_embedding.pkl"):
                if os.path.isfile(os.path.join(d, n)):
                    landmark_path = os.path.join(d, n)
                    break
        self.has_landmarks = self.has_full68 = self.has_contour = self.has_dense = False
        if landmark_path is not None:
            emb = load_landmark_embedding(landmark_path, dynamic_landmark_path)
            check_embedding(emb, len(self._faces), landmark_path)
            self._set_embedding(emb)
            self.landmark_path = os.fspath(landmark_path)
            self.contour = contour or emb.convention
        else:
            self.contour = contour or "deca"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, model_path, landmark_path=None, dynamic_landmark_path=None, **kwargs) -> "FLAME":
        """Load a FLAME model pickle and (optionally) its landmark embedding; see the class docstring."""
        if model_path is None:
            raise InputError("FLAME.from_files: model_path is None; give the path of generic_model.pkl "
                             "(or call FLAME() for the generated default model)")
        return cls(model_path, landmark_path, dynamic_landmark_path, **kwargs)

    def _set_embedding(self, emb: LandmarkEmbedding):
        f = self._faces

        def put(name, faces_idx, bary):
            self.register_buffer(name + "_idx", paddle.to_tensor(f[faces_idx]), persistable=False)
            self.register_buffer(name + "_bary", paddle.to_tensor(bary, dtype=self._dtype), persistable=False)

        put("lmk_static", emb.static_faces, emb.static_bary)
        self.has_landmarks = True
        if emb.dynamic_faces is not None:
            put("lmk_dynamic", emb.dynamic_faces, emb.dynamic_bary)
            self.has_contour = True
        if emb.full_faces is not None:
            put("lmk_full", emb.full_faces, emb.full_bary)
            self.has_full68 = True

    def set_dense_landmarks(self, faces_idx, bary):
        """Extra surface points evaluated by every forward (also with ``landmarks_only``) and
        returned as ``landmarks_dense``: e.g. mediapipe's 468 face-mesh points
        (:func:`ppface3d.flame.mediapipe_embedding.mediapipe_embedding`). faces_idx (L,) triangle
        indices, bary (L, 3) barycentric weights."""
        faces_idx = np.asarray(faces_idx, np.int64).reshape(-1)
        bary = np.asarray(bary, np.float64).reshape(-1, 3)
        if len(faces_idx) != len(bary) or faces_idx.min(initial=0) < 0 or faces_idx.max(initial=0) >= len(self._faces):
            raise InputError(f"FLAME.set_dense_landmarks: {len(faces_idx)} face indices (each < {len(self._faces)}) "
                             f"and {len(bary)} barycentric rows expected to match")
        self.register_buffer("lmk_dense_idx", paddle.to_tensor(self._faces[faces_idx]), persistable=False)
        self.register_buffer("lmk_dense_bary", paddle.to_tensor(bary, dtype=self._dtype), persistable=False)
        self.has_dense = True
        self._lmk_sub_key = None  # the landmark subset grows by these vertices

    @property
    def faces(self) -> np.ndarray:
        """Triangles as an int64 NumPy array (F, 3)."""
        return self._faces

    # ------------------------------------------------------------------ forward
    def _batch_input(self, name, x, tail, B=None):
        if x is None:
            return None
        if not isinstance(x, (paddle.Tensor, paddle.pir.Value)):  # Value: traced for export
            try:
                x = paddle.to_tensor(np.asarray(x, dtype=self._dtype))
            except (TypeError, ValueError) as e:
                raise InputError(f"FLAME: {name} must be a tensor or array, got {type(x).__name__}") from e
        shp = tuple(x.shape)
        ok = len(shp) == 1 + len(tail) and all(t is None or s == t for s, t in zip(shp[1:], tail))
        if not ok:
            want = "(B, " + ", ".join("k" if t is None else str(t) for t in tail) + ")"
            raise InputError(f"FLAME: {name} should have shape {want}, got {list(shp)}")
        if x.dtype != self.v_template.dtype:
            x = x.astype(self._dtype)
        return x

    def _rot(self, name, x, fmt):
        tail = _ROT_FORMATS[fmt]
        tail = list(tail) if isinstance(tail, tuple) else [tail]
        return self._batch_input(name, x, tail)

    @staticmethod
    def _to_matrix(x, fmt):
        if fmt == "axis_angle":
            return L.axis_angle_to_matrix(x)
        if fmt == "rot6d":
            return L.rot6d_to_matrix(x)
        if fmt == "euler":
            return L.euler_to_matrix(x)
        return x

    def _landmark_subset(self):
        """Buffers restricted to the vertices that the landmark embedding reads (built once).

        Returns a dict with the subset's template, blend-shape and pose-corrective bases, skinning
        weights and the landmark triangles re-indexed into the subset.
        """
        key = (str(self.v_template.dtype), str(self.v_template.place))
        if getattr(self, "_lmk_sub_key", None) != key:
            names = [n for n in ("lmk_static", "lmk_dynamic", "lmk_full", "lmk_dense") if hasattr(self, n + "_idx")]
            keep = np.unique(np.concatenate([getattr(self, n + "_idx").numpy().reshape(-1) for n in names]))
            remap = np.full(self.num_vertices, -1, np.int64)
            remap[keep] = np.arange(len(keep))
            k = paddle.to_tensor(keep)
            V, n = self.num_vertices, len(keep)

            def cols(b):  # (K, V*3) -> (K, n*3)
                return paddle.gather(b.reshape([b.shape[0], V, 3]), k, axis=1).reshape([b.shape[0], n * 3])

            sub = dict(V=n, v_template=paddle.gather(self.v_template, k, axis=0), dirs=cols(self.dirs),
                       posedirs=cols(self.posedirs), lbs_weights=paddle.gather(self.lbs_weights, k, axis=0))
            for nm in names:
                sub[nm + "_idx"] = paddle.to_tensor(remap[getattr(self, nm + "_idx").numpy()])
                sub[nm + "_bary"] = getattr(self, nm + "_bary")
            self._lmk_sub, self._lmk_sub_key = sub, key
        return self._lmk_sub

    def forward(self, shape=None, expression=None, global_pose=None, neck_pose=None, jaw_pose=None,
                eye_pose=None, translation=None, landmarks_only: bool = False) -> FLAMEOutput:
        """Pose and shape the head. Every input is optional, but at least one must be given.

        shape (B, <=n_shape), expression (B, <=n_expression); global_pose, neck_pose, jaw_pose
        (B, 3) axis-angle (or the configured format); eye_pose (B, 6) axis-angle of the left
        then right eye; translation (B, 3). Inputs with batch 1 broadcast to the others.
        ``landmarks_only`` poses only the few hundred vertices the landmarks sit on (the same
        numbers, several times cheaper; ``vertices`` is then None), e.g. for landmark losses.
        Returns :class:`FLAMEOutput`.
        """
        if landmarks_only and not self.has_landmarks:
            raise InputError("FLAME: landmarks_only needs a landmark embedding (see landmark_path)")
        shape = self._batch_input("shape", shape, [None])
        expression = self._batch_input("expression", expression, [None])
        global_pose = self._rot("global_pose", global_pose, self.rotation_format)
        neck_pose = self._rot("neck_pose", neck_pose, self.rotation_format)
        jaw_pose = self._rot("jaw_pose", jaw_pose, self.jaw_format)
        eye_pose = self._batch_input("eye_pose", eye_pose, [6])
        translation = self._batch_input("translation", translation, [3])
        given = {k: v for k, v in (("shape", shape), ("expression", expression), ("global_pose", global_pose),
                                   ("neck_pose", neck_pose), ("jaw_pose", jaw_pose), ("eye_pose", eye_pose),
                                   ("translation", translation)) if v is not None}
        if not given:
            raise InputError("FLAME: give at least one of shape, expression, global_pose, neck_pose, "
                             "jaw_pose, eye_pose, translation (each a (B, ...) tensor)")
        sizes = {k: v.shape[0] for k, v in given.items()}
        B = max(sizes.values())
        bad = {k: s for k, s in sizes.items() if s not in (1, B)}
        if bad:
            raise InputError(f"FLAME: inputs disagree on the batch size: {sizes} (each must be {B} or 1)")
        if shape is not None and shape.shape[1] > self.n_shape:
            raise InputError(f"FLAME: shape has {shape.shape[1]} coefficients, this model keeps {self.n_shape} "
                             "(see FLAME(n_shape=...))")
        if expression is not None and expression.shape[1] > self.n_expression:
            raise InputError(f"FLAME: expression has {expression.shape[1]} coefficients, this model keeps "
                             f"{self.n_expression} (see FLAME(n_expression=...))")
        dt = self.v_template.dtype
        b = self._landmark_subset() if landmarks_only else dict(
            V=self.num_vertices, v_template=self.v_template, dirs=self.dirs, posedirs=self.posedirs,
            lbs_weights=self.lbs_weights,
            **{n: getattr(self, n) for n in ("lmk_static_idx", "lmk_static_bary", "lmk_dynamic_idx",
                                             "lmk_dynamic_bary", "lmk_full_idx", "lmk_full_bary",
                                             "lmk_dense_idx", "lmk_dense_bary") if hasattr(self, n)})
        V = b["V"]

        def expand(x):
            return x if x.shape[0] == B else x.expand([B] + list(x.shape[1:]))

        # shape + expression blend shapes, and the joints they move
        if shape is not None or expression is not None:
            parts = []
            for x, n in ((shape, self.n_shape), (expression, self.n_expression)):
                if n == 0:
                    continue
                if x is None:
                    x = paddle.zeros([B, n], dtype=dt)
                elif x.shape[1] < n:
                    x = paddle.concat([x, paddle.zeros([x.shape[0], n - x.shape[1]], dtype=dt)], axis=1)
                parts.append(expand(x))
            coeffs = paddle.concat(parts, axis=1) if len(parts) > 1 else parts[0]
            v_shaped = b["v_template"].unsqueeze(0) + paddle.matmul(coeffs, b["dirs"]).reshape([B, V, 3])
            joints = self.j_template.unsqueeze(0) + paddle.matmul(coeffs, self.j_dirs).reshape([B, -1, 3])
        else:
            v_shaped = b["v_template"].unsqueeze(0).expand([B, V, 3])
            joints = self.j_template.unsqueeze(0).expand([B, self.j_template.shape[0], 3])

        # rotations of the 5 joints
        eye3 = paddle.eye(3, dtype=dt).unsqueeze(0)

        def mat(x, fmt):
            if x is None:
                return eye3.expand([B, 3, 3])
            return expand(self._to_matrix(x, fmt))

        if self.rotation_format == "axis_angle" and self.jaw_format == "axis_angle":
            # one Rodrigues call for all five joints (fewer ops: faster at small batch sizes)
            z3 = paddle.zeros([B, 3], dtype=dt)
            aa = [expand(x) if x is not None else z3 for x in (global_pose, neck_pose, jaw_pose)]
            aa.append(expand(eye_pose) if eye_pose is not None else paddle.zeros([B, 6], dtype=dt))
            rot = L.axis_angle_to_matrix(paddle.concat(aa, axis=1).reshape([-1, 3])).reshape([B, 5, 3, 3])
            R_global, R_neck = rot[:, 0], rot[:, 1]
        else:
            R_global = mat(global_pose, self.rotation_format)
            R_neck = mat(neck_pose, self.rotation_format)
            R_jaw = mat(jaw_pose, self.jaw_format)
            if eye_pose is not None:
                R_eyes = expand(L.axis_angle_to_matrix(eye_pose.reshape([-1, 3])).reshape([-1, 2, 3, 3]))
            else:
                R_eyes = eye3.unsqueeze(0).expand([B, 2, 3, 3])
            rot = paddle.concat([R_global.unsqueeze(1), R_neck.unsqueeze(1), R_jaw.unsqueeze(1), R_eyes], axis=1)

        # pose correctives
        if neck_pose is not None or jaw_pose is not None or eye_pose is not None:
            feat = (rot[:, 1:] - eye3.unsqueeze(0)).reshape([B, -1])
            v_posed = v_shaped + paddle.matmul(feat, b["posedirs"]).reshape([B, V, 3])
        else:
            v_posed = v_shaped

        if global_pose is None and neck_pose is None and jaw_pose is None and eye_pose is None:
            posed_joints, verts = joints, v_posed  # every joint at rest: skinning is the identity
        else:
            posed_joints, Rw, tw = L.rigid_chain(rot, joints, self.parents)
            verts = L.skin(v_posed, b["lbs_weights"], Rw, tw)

        landmarks = full68 = None
        if self.has_landmarks:
            static = L.barycentric_points(verts, b["lmk_static_idx"], b["lmk_static_bary"])
            if self.has_contour:
                rows = self.contour_rows(R_global, R_neck)
                didx = paddle.gather(b["lmk_dynamic_idx"], rows, axis=0)
                dbary = paddle.gather(b["lmk_dynamic_bary"], rows, axis=0)
                contour = L.barycentric_points(verts, didx, dbary)
                landmarks = paddle.concat([contour, static], axis=1)
            else:
                landmarks = static
            if self.has_full68:
                full68 = L.barycentric_points(verts, b["lmk_full_idx"], b["lmk_full_bary"])
        dense = L.barycentric_points(verts, b["lmk_dense_idx"], b["lmk_dense_bary"]) if self.has_dense else None
        if translation is not None:
            t = expand(translation).unsqueeze(1)
            verts = verts + t
            posed_joints = posed_joints + t
            landmarks = None if landmarks is None else landmarks + t
            full68 = None if full68 is None else full68 + t
            dense = None if dense is None else dense + t
        return FLAMEOutput(vertices=None if landmarks_only else verts, landmarks=landmarks, landmarks_full68=full68,
                           joints=posed_joints, landmarks_dense=dense)

    def contour_rows(self, R_global, R_neck, contour: Optional[str] = None):
        """Row of the contour table for each head pose (B,) int64.

        'deca': yaw of R_global @ R_neck, row by +yaw degrees; 'smplx': yaw of R_global, row
        by -yaw degrees. Yaw = atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2)). Rows 0..39 hold
        yaw 0..39 degrees (larger clamps to 39), rows 40..78 hold -1..-39 (smaller: 78).
        """
        contour = contour or self.contour
        with paddle.no_grad():
            if contour == "deca":
                yaw = L.matrix_yaw(paddle.matmul(R_global, R_neck))
            else:
                yaw = -L.matrix_yaw(R_global)
            a = paddle.round(paddle.clip(yaw * (180.0 / np.pi), max=39.0)).astype("int64")
            neg = paddle.where(a < -39, paddle.full_like(a, 78), 39 - a)
            return paddle.where(a < 0, neg, a)

    def extra_repr(self):
        return (f"model={self.model_path!r}, vertices={self.num_vertices}, faces={len(self._faces)}, "
                f"n_shape={self.n_shape}, n_expression={self.n_expression}, contour={self.contour!r}")
