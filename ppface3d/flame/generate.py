"""A generated head model in FLAME's file format: the offline default of ``FLAME()``.

FLAME itself is licensed and cannot ship with the library, so :func:`default_model_path`
builds (once, deterministically, in about a second) a model with the same pickle keys and
array layout as FLAME 2020 and writes it, with its landmark embeddings, to a cache folder::

    $PPFACE3D_CACHE (default ~/.cache/ppface3d)/flame_generated_v<N>/
        generic_model.pkl            v_template, shapedirs (V,3,400), posedirs (V,3,36), J_regressor
                                     (scipy csc, 5xV), weights (V,5), kintree_table, f, vt, ft
        FLAME_NEUTRAL.pkl            the same model, the file name smplx.FLAME looks for
        landmark_embedding.npy       DECA's format (static 51, dynamic 79x17 contour, full 68)
        flame_static_embedding.pkl   RingNet / TF_FLAME format (51 points)
        flame_dynamic_embedding.npy  RingNet format contour table (79x17)
        head_template.obj            the template with its UV layout (DECA reads UVs from it)

The head is sculpted from smooth primitives (skull, lower face, neck) with brow, eye sockets
holding separate eyeballs, nose, lips split by a mouth slit (the lower lip follows the jaw),
cheeks, chin and ear regions. Shape directions are smooth global fields, expression
directions are localized to the mouth, eyes, brows, cheeks and nose.
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from ppengine.io import make_temp_dir

from .io import save_npy, save_pickle, write_obj

GENERATOR_VERSION = 4
NC, NR = 96, 48            # head grid: columns around, rows from crown to neck
EYE_SEG, EYE_RINGS = 16, 12
EYE_RADIUS = 0.0122
SEED = 20240531


def cache_dir() -> str:
    """$PPFACE3D_CACHE, or ~/.cache/ppface3d."""
    return os.environ.get("PPFACE3D_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ppface3d")


def default_model_path() -> str:
    """Path of the generated FLAME-format ``generic_model.pkl`` (built on first use)."""
    folder = os.path.join(cache_dir(), f"flame_generated_v{GENERATOR_VERSION}")
    path = os.path.join(folder, "generic_model.pkl")
    if os.path.isfile(os.path.join(folder, ".complete")):
        return path
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = make_temp_dir(folder)
    try:
        write_generated_model(tmp)
        with open(os.path.join(tmp, ".complete"), "w") as fh:
            fh.write(f"generator v{GENERATOR_VERSION}\n")
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, ".complete")):
            shutil.rmtree(folder, ignore_errors=True)  # left over from an interrupted build
        try:
            os.replace(tmp, folder)
        except OSError:
            if not os.path.isfile(os.path.join(folder, ".complete")):  # someone else won the race?
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- helpers
def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(p, c, s):
    """Anisotropic Gaussian bump exp(-|(p - c)/s|^2 / 2); p (N, k), c (k,), s (k,)."""
    d = (p - np.asarray(c)) / np.asarray(s)
    return np.exp(-0.5 * (d * d).sum(-1))


def _ray_ellipsoid(o, d, c, a):
    """Distance along unit rays d (N,3) from o (inside) to an axis-aligned ellipsoid (c, a)."""
    oc = (o - c) / a
    dd = d / a
    A = (dd * dd).sum(-1)
    B = (dd * oc).sum(-1)
    C = (oc * oc).sum() - 1.0
    return (-B + np.sqrt(B * B - A * C)) / A


def _ray_cylinder(o, d, c, a):
    """Distance along rays to a vertical elliptic cylinder through (c[0], *, c[2]), radii a=(ax, az)."""
    ox, oz = (o[0] - c[0]) / a[0], (o[2] - c[2]) / a[1]
    dx, dz = d[:, 0] / a[0], d[:, 2] / a[1]
    A = dx * dx + dz * dz + 1e-12
    B = dx * ox + dz * oz
    C = ox * ox + oz * oz - 1.0
    return (-B + np.sqrt(B * B - A * C)) / A


def _soft_max(rs, k):
    m = np.max(rs, axis=0)
    return m + np.log(np.exp(k * (np.stack(rs) - m)).sum(0)) / k


# --------------------------------------------------------------------------- geometry
def _quad(a, b, c, e, j):
    """Two triangles of the grid quad (a, b) over (e, c) in column j, split along the diagonal
    that makes the mesh mirror-symmetric (column j mirrors column NC - 1 - j): a landmark
    embedded at mirrored points then has mirrored triangles and barycentrics (v4)."""
    return [[a, c, b], [a, e, c]] if j >= NC // 2 else [[a, e, b], [e, c, b]]


class _Head:
    """Builds the template mesh, UVs, labels and helper fields."""

    C = np.array([0.0, 0.0, 0.0])
    Y_BOTTOM = -0.165

    def base_radius(self, d):
        C = self.C
        skull = _ray_ellipsoid(C, d, np.array([0.0, 0.028, -0.012]), np.array([0.076, 0.094, 0.098]))
        face = _ray_ellipsoid(C, d, np.array([0.0, -0.028, 0.018]), np.array([0.061, 0.068, 0.078]))
        neck = _ray_cylinder(C, d, np.array([0.0, 0.0, -0.012]), np.array([0.052, 0.054]))
        neck = np.where(d[:, 1] > 0.2, 0.0, neck)  # neck only downward
        r = _soft_max([skull, face, np.minimum(neck, 0.6)], 110.0)
        # cut the neck with the bottom plane
        with np.errstate(divide="ignore"):
            rp = np.where(d[:, 1] < -1e-6, (self.Y_BOTTOM - C[1]) / np.minimum(d[:, 1], -1e-6), np.inf)
        return np.minimum(r, rp)

    def features(self, p, theta):
        """Radial displacement (N,) of features at base points p (N, 3) with azimuth theta."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        front = _smoothstep(0.15, 0.6, np.cos(theta))
        ym = self.y_mouth
        ax = np.abs(x)
        d = np.zeros(len(p))
        # forehead / brow ridge / eye sockets / cheekbones
        d += 0.006 * _gauss(np.c_[ax, y], [0.030, 0.050], [0.022, 0.008])
        d += 0.003 * _gauss(np.c_[x, y], [0.0, 0.048], [0.012, 0.008])  # glabella
        d -= 0.013 * _gauss(np.c_[ax, y], [0.032, 0.027], [0.015, 0.0105])
        d += 0.005 * _gauss(np.c_[ax, y], [0.047, 0.004], [0.013, 0.014])
        d -= 0.004 * _gauss(np.c_[ax, y], [0.040, -0.025], [0.012, 0.015])  # cheek hollow
        # nose: bridge ridge rising to the tip, wings, columella
        t = np.clip((0.036 - y) / 0.048, 0.0, 1.0)  # 0 between the eyes, 1 at the tip
        h = 0.003 + 0.021 * t ** 1.4
        h *= 1.0 - _smoothstep(-0.011, -0.026, y)
        sw = 0.0055 + 0.0060 * t
        d += h * np.exp(-0.5 * (x / sw) ** 2) * _smoothstep(0.047, 0.036, y)
        d += 0.0075 * _gauss(np.c_[ax, y], [0.0135, -0.016], [0.0065, 0.0055])
        # lips and chin
        d += 0.0072 * _gauss(np.c_[x, y], [0.0, ym + 0.0055], [0.020, 0.0045]) \
            * (1 - 0.25 * _gauss(np.c_[x, y], [0.0, ym + 0.006], [0.004, 0.01]))
        d += 0.0065 * _gauss(np.c_[x, y], [0.0, ym - 0.0065], [0.018, 0.0055])
        d -= 0.0025 * _gauss(np.c_[x, y], [0.0, ym], [0.026, 0.0016])
        d -= 0.0020 * _gauss(np.c_[x, y], [0.0, ym + 0.016], [0.004, 0.004])  # philtrum
        d -= 0.0030 * _gauss(np.c_[x, y], [0.0, ym - 0.017], [0.016, 0.004])  # below the lip
        d += 0.0085 * _gauss(np.c_[x, y], [0.0, ym - 0.034], [0.017, 0.011])  # chin
        d *= front
        # ears
        side = _smoothstep(0.75, 0.97, np.abs(np.sin(theta)))
        d += side * 0.016 * _gauss(np.c_[y, z], [0.006, -0.014], [0.021, 0.010])
        d += side * 0.004 * _gauss(np.c_[y, z], [0.010, -0.026], [0.018, 0.006])  # helix rim
        return d

    def build(self):
        # polar angle samples, re-spaced so rows are evenly spaced along the profile
        phi_dense = np.linspace(0.0, np.pi * 0.94, 800)
        prof = []
        for th in (0.0, np.pi):
            dd = np.stack([np.sin(phi_dense) * np.sin(th), np.cos(phi_dense), np.sin(phi_dense) * np.cos(th)], 1)
            pts = self.C + self.base_radius(dd)[:, None] * dd
            prof.append(pts)
        # stop where the neck meets the bottom plane
        stop = min(int(np.argmax(pr[:, 1] <= self.Y_BOTTOM + 1e-6)) for pr in prof)
        phi_dense = phi_dense[:stop + 1]
        seg = sum(np.linalg.norm(np.diff(pr[:stop + 1], axis=0), axis=1) for pr in prof)
        s = np.concatenate([[0], np.cumsum(seg)])
        s /= s[-1]
        # rows 1..NR (row 0 is the crown pole), slightly denser on the face
        u = np.linspace(0, 1, NR + 1)[1:]
        u = u + 0.035 * np.sin(2 * np.pi * u)
        phi = np.interp(u, s, phi_dense)
        theta = 2 * np.pi * np.arange(NC) / NC - np.pi  # column NC/2 faces +z
        T, P = np.meshgrid(theta, phi)  # (NR, NC)
        d = np.stack([np.sin(P) * np.sin(T), np.cos(P), np.sin(P) * np.cos(T)], -1).reshape(-1, 3)
        r = self.base_radius(d)
        base = self.C + r[:, None] * d
        # mouth row: the row whose front vertex is nearest the mouth height
        fr = base.reshape(NR, NC, 3)[:, NC // 2]
        self.mouth_row = int(np.argmin(np.abs(fr[:, 1] - (-0.046))))
        self.y_mouth = float(fr[self.mouth_row, 1])
        r = r + self.features(base, T.reshape(-1))
        grid = (self.C + r[:, None] * d).reshape(NR, NC, 3)
        crown = self.C + self.base_radius(np.array([[0.0, 1.0, 0.0]]))[0] * np.array([0, 1.0, 0])

        verts = [crown[None], grid.reshape(-1, 3)]
        vid = lambda i, j: 1 + i * NC + (j % NC)  # noqa: E731
        faces = []
        for j in range(NC):
            faces.append([0, vid(0, j), vid(0, j + 1)])
        # the mouth slit: duplicate the inner vertices of the mouth row for the lower lip
        mrow = grid[self.mouth_row]
        slit_cols = [j for j in range(NC) if abs(mrow[j, 0]) < 0.0235 and np.cos(theta[j]) > 0.5]
        inner = slit_cols[1:-1]
        dup = {j: 1 + NR * NC + k for k, j in enumerate(inner)}
        verts.append(mrow[inner])
        self.slit_upper = np.array([vid(self.mouth_row, j) for j in inner])
        self.slit_lower = np.array([dup[j] for j in inner])
        self.slit_corners = np.array([vid(self.mouth_row, slit_cols[0]), vid(self.mouth_row, slit_cols[-1])])
        for i in range(NR - 1):
            for j in range(NC):
                a, b, c, e = vid(i, j), vid(i, j + 1), vid(i + 1, j + 1), vid(i + 1, j)
                if i == self.mouth_row:  # faces below the slit use the lower-lip copies
                    a = dup.get(j, a)
                    b = dup.get((j + 1) % NC, b)
                faces += _quad(a, b, c, e, j)
        head_v = np.concatenate(verts, 0)
        self.num_head = len(head_v)
        # UVs of the head: cylindrical unwrap, face in the middle, seam at the back
        uvs = []
        g = lambda t: (t + 0.2 * np.sin(np.pi * t) / np.pi)  # noqa: E731 (more texels for the face)
        vrow = 1.0 - (np.arange(NR) + 1) / NR
        ucol = 0.5 + 0.5 * g(np.linspace(-1, 1, NC + 1))
        uv_pole = [[(ucol[j] + ucol[j + 1]) / 2, 1.0] for j in range(NC)]
        uvs += uv_pole
        grid_uv = np.stack(np.meshgrid(ucol, 0.13 + 0.87 * vrow), -1).reshape(-1, 2)  # (NR*(NC+1), 2)
        uvs += grid_uv.tolist()
        tid = lambda i, j: NC + i * (NC + 1) + j  # noqa: E731
        uv_faces = [[j, tid(0, j), tid(0, j + 1)] for j in range(NC)]
        for i in range(NR - 1):
            for j in range(NC):
                a, b, c, e = tid(i, j), tid(i, j + 1), tid(i + 1, j + 1), tid(i + 1, j)
                uv_faces += _quad(a, b, c, e, j)
        # eyeballs
        self.eye_centers = []
        eye_v, eye_f, eye_uv, eye_ft = [], [], [], []
        for side, u0 in ((1.0, 0.55), (-1.0, 0.25)):  # left (+x) then right
            cx = side * 0.0325
            cy = 0.0265
            # socket surface depth in front of the eye centre
            k = np.argmin(np.linalg.norm(grid.reshape(-1, 3)[:, :2] - [cx, cy], axis=1)
                          + 10 * (grid.reshape(-1, 3)[:, 2] < 0))
            zs = grid.reshape(-1, 3)[k, 2]
            c = np.array([cx, cy, zs + 0.0042 - EYE_RADIUS])
            self.eye_centers.append(c)
            off = len(head_v) + sum(len(v) for v in eye_v)
            toff = len(uvs) + sum(len(t) for t in eye_uv)
            el = np.linspace(0, np.pi, EYE_RINGS + 1)[1:-1]
            az = 2 * np.pi * np.arange(EYE_SEG) / EYE_SEG
            E, A = np.meshgrid(el, az, indexing="ij")
            # pole 0 points forward (+z)
            sv = np.stack([np.sin(E) * np.cos(A), np.sin(E) * np.sin(A), np.cos(E)], -1).reshape(-1, 3)
            ev = np.concatenate([[[0, 0, 1.0]], sv, [[0, 0, -1.0]]]) * EYE_RADIUS + c
            n_ring = len(el)
            last = 1 + n_ring * EYE_SEG
            eid = lambda i, j: 1 + i * EYE_SEG + (j % EYE_SEG)  # noqa: E731
            ef = [[0, eid(0, j), eid(0, j + 1)] for j in range(EYE_SEG)]
            for i in range(n_ring - 1):
                for j in range(EYE_SEG):
                    a, b, cc, e = eid(i, j), eid(i, j + 1), eid(i + 1, j + 1), eid(i + 1, j)
                    ef += [[a, e, cc], [a, cc, b]]
            ef += [[last, eid(n_ring - 1, j + 1), eid(n_ring - 1, j)] for j in range(EYE_SEG)]
            # UV: disk projection of the sphere into a small square
            evn = (ev - c) / EYE_RADIUS
            rr = np.arccos(np.clip(evn[:, 2], -1, 1)) / np.pi
            ang = np.arctan2(evn[:, 1], evn[:, 0])
            euv = np.stack([u0 + 0.1 + 0.095 * rr * np.cos(ang), 0.065 + 0.06 * rr * np.sin(ang)], -1)
            eye_v.append(ev)
            eye_f.append(np.asarray(ef) + off)
            eye_uv.append(euv)
            eye_ft.append(np.asarray(ef) + toff)
        self.eye_ranges = []
        start = len(head_v)
        for ev in eye_v:
            self.eye_ranges.append(np.arange(start, start + len(ev)))
            start += len(ev)
        # mouth cavity: a flattened closed bag behind the lips, upper half on the head, lower on the jaw
        z_lip = float(mrow[NC // 2, 2])
        bc = np.array([0.0, self.y_mouth, z_lip - 0.019])
        self.bag_center = bc
        nseg, nring = 14, 8
        el = np.linspace(0, np.pi, nring + 1)[1:-1]
        az = 2 * np.pi * np.arange(nseg) / nseg
        E_, A_ = np.meshgrid(el, az, indexing="ij")
        sv = np.stack([np.sin(E_) * np.cos(A_), np.sin(E_) * np.sin(A_), np.cos(E_)], -1).reshape(-1, 3)
        unit = np.concatenate([[[0, 0, 1.0]], sv, [[0, 0, -1.0]]])
        bv = unit * np.array([0.021, 0.0095, 0.013]) + bc
        bid = lambda i, j: 1 + i * nseg + (j % nseg)  # noqa: E731
        nr = len(el)
        bf = [[0, bid(0, j), bid(0, j + 1)] for j in range(nseg)]
        for i in range(nr - 1):
            for j in range(nseg):
                a, b, cc, e = bid(i, j), bid(i, j + 1), bid(i + 1, j + 1), bid(i + 1, j)
                bf += [[a, e, cc], [a, cc, b]]
        bf += [[1 + nr * nseg, bid(nr - 1, j + 1), bid(nr - 1, j)] for j in range(nseg)]
        bf = np.asarray(bf)
        boff = start
        toff = len(uvs) + sum(len(t) for t in eye_uv)
        rr = np.arccos(np.clip(unit[:, 2], -1, 1)) / np.pi
        ang = np.arctan2(unit[:, 1], unit[:, 0])
        buv = np.stack([0.9 + 0.045 * rr * np.cos(ang), 0.065 + 0.06 * rr * np.sin(ang)], -1)
        self.bag_range = np.arange(boff, boff + len(bv))
        self.v = np.concatenate([head_v] + eye_v + [bv], 0)
        self.f = np.concatenate([np.asarray(faces)] + eye_f + [bf + boff], 0).astype(np.int64)
        self.vt = np.concatenate([np.asarray(uvs)] + eye_uv + [buv], 0)
        self.ft = np.concatenate([np.asarray(uv_faces)] + eye_ft + [bf + toff], 0).astype(np.int64)
        self.part_labels = np.zeros(len(self.v), np.int64)
        for k, r in enumerate(self.eye_ranges):
            self.part_labels[r] = 1 + k
        self.part_labels[self.bag_range] = 3
        # the duplicated slit vertices share the uv of their originals: ft already points to grid uv
        self.grid = grid
        self.theta = theta
        return self


# --------------------------------------------------------------------------- rig
def _skinning(h: _Head):
    v = h.v
    V = len(v)
    y, z = v[:, 1], v[:, 2]
    W = np.zeros((V, 5))
    ym = h.y_mouth
    # jaw: below a line through the mouth that rises to the hinge in front of the ears
    y_line = -0.006 + (ym + 0.001 + 0.006) * _smoothstep(0.00, 0.065, z)
    wj = _smoothstep(y_line + 0.0005, y_line - 0.010, y)
    wj *= _smoothstep(-0.016, 0.028, z)          # not the neck behind the jaw
    under = _smoothstep(0.055, 0.02, z) * _smoothstep(-0.07, -0.11, y)
    wj *= 1.0 - under
    wj[h.slit_upper] = 0.0
    wj[h.slit_lower] = 1.0
    wj[h.slit_corners] = 0.5
    root = _smoothstep(-0.085, -0.145, y) * (1 - wj)
    W[:, 2] = wj
    W[:, 0] = root
    W[:, 1] = 1.0 - wj - root
    for k, rng in enumerate(h.eye_ranges):
        W[rng] = 0.0
        W[rng, 3 + k] = 1.0
    bag = h.bag_range
    wb = _smoothstep(h.bag_center[1] + 0.003, h.bag_center[1] - 0.003, y[bag])
    W[bag] = 0.0
    W[bag, 2] = wb
    W[bag, 1] = 1.0 - wb
    return W


def _joint_regressor(h: _Head):
    v = h.v
    V = len(v)
    head = np.arange(h.num_head)
    J = np.zeros((5, V))

    def ring(y0, tol=0.006):
        hv = v[head]
        sel = head[(np.abs(hv[:, 1] - y0) < tol) & (hv[:, 2] < 0.04) & (np.abs(hv[:, 0]) < 0.06)]
        # keep a symmetric set whose centre lies on the neck axis
        return sel

    for row, y0 in ((0, -0.135), (1, -0.055)):
        sel = ring(y0)
        J[row, sel] = 1.0 / len(sel)
    hv = v[head]
    jaw = head[(np.abs(hv[:, 0]) > 0.045) & (np.abs(hv[:, 1] + 0.012) < 0.008) & (np.abs(hv[:, 2] - 0.002) < 0.012)]
    J[2, jaw] = 1.0 / len(jaw)
    for k, rng in enumerate(h.eye_ranges):
        J[3 + k, rng] = 1.0 / len(rng)
    return J


def _rbf_fields(p, centers, width, coef):
    """Smooth vector fields: sum_m coef[m] * exp(-|p - c_m|^2 / 2w^2) + affine part; coef (M+4, 3, K)."""
    d2 = ((p[:, None, :] - centers[None]) ** 2).sum(-1)
    ker = np.exp(-0.5 * d2 / width ** 2)
    basis = np.concatenate([ker, p, np.ones((len(p), 1))], 1)  # (N, M+4)
    return (basis @ coef.reshape(coef.shape[0], -1)).reshape(len(p), *coef.shape[1:])


def _shape_dirs(h: _Head, rng):
    v = h.v
    V = len(v)
    head = np.arange(h.num_head)
    mirror = np.array([-1.0, 1.0, 1.0])
    # centres spread over the head surface
    cidx = rng.choice(head, 160, replace=False)
    centers = v[cidx]
    centers = np.concatenate([centers, centers * mirror])
    K = 300
    coef = rng.standard_normal((len(centers) + 4, 3, K))
    coef[len(centers):len(centers) + 3] *= 0.8 / 0.1  # affine part comparable to the kernels
    # points to evaluate: head vertices, eyeball centres (eyes move rigidly)
    pts = np.concatenate([v[:h.num_head], np.asarray(h.eye_centers), h.bag_center[None]])
    f = _rbf_fields(pts, centers, 0.07, coef)
    fm = _rbf_fields(pts * mirror, centers, 0.07, coef) * mirror[None, :, None]
    sym = np.arange(K) < 220
    f = np.where(sym[None, None], 0.5 * (f + fm), f)
    # semantic leading directions: size, width, face length, jaw width, nose size
    c0 = np.array([0.0, 0.0, 0.0])
    sem = np.zeros((len(pts), 3, 5))
    sem[:, :, 0] = pts - c0
    sem[:, 0, 1] = pts[:, 0]
    sem[:, 1, 2] = np.minimum(pts[:, 1] - 0.02, 0) * _smoothstep(-0.01, 0.04, pts[:, 2])
    sem[:, 0, 3] = pts[:, 0] * _smoothstep(0.0, -0.07, pts[:, 1])
    nose = _gauss(pts[:, :2], [0.0, -0.005], [0.012, 0.02]) * _smoothstep(0.05, 0.09, pts[:, 2])
    sem[:, 2, 4] = nose
    f = np.concatenate([sem, f[:, :, :K - 5]], 2)
    full = np.zeros((V, 3, K))
    full[:h.num_head] = f[:h.num_head]
    for k, r in enumerate(h.eye_ranges + [h.bag_range]):
        full[r] = f[h.num_head + k][None]
    Q, _ = np.linalg.qr(full.reshape(V * 3, K))
    Q *= np.sign(np.sum(Q * full.reshape(V * 3, K), 0, keepdims=True) + 1e-30)
    Q = Q.reshape(V, 3, K)
    rms = np.sqrt((Q[:h.num_head] ** 2).sum(1).mean(0))
    scale = 0.004 * (np.arange(K) + 1.0) ** -0.9 / rms
    return Q * scale


# The named expression directions of the generated model, in coefficient order (v4). Each is
# mirror-symmetric ("both sides") or antisymmetric ("_asym": +1 moves the subject's left side
# (+x), -1 the right one); one unit is a moderate expression, about 2 a full one (eyes shut,
# lips pressed flat). The remaining directions up to 100 are random localized fields, alternately
# symmetric and antisymmetric.
EXPRESSION_NAMES = (
    "lips_part", "smile", "smile_asym", "mouth_stretch_open", "lips_press", "pucker",
    "mouth_frown", "mouth_frown_asym", "lip_stretch", "mouth_sideways_asym", "upper_lip_raise",
    "sneer_asym", "lower_lip_depress", "lip_funnel", "chin_raise", "cheek_puff", "cheek_puff_asym",
    "eyes_close", "wink_asym", "eyes_wide", "squint", "squint_asym", "brows_raise",
    "brow_raise_asym", "inner_brows_raise", "brows_frown", "brow_lower_asym", "nose_wrinkle",
    "nostril_flare", "lips_roll_in",
)


def _mirror_pairs(v, tag):
    """Each vertex's partner across the x = 0 plane (the template is symmetric); ``tag`` (V,)
    is a mirror-symmetric label that keeps coincident vertices apart (the two lips at the slit)."""
    from scipy.spatial import cKDTree

    pts = np.c_[v, 0.01 * tag]
    _, pair = cKDTree(pts).query(pts * np.array([-1.0, 1.0, 1.0, 1.0]))
    return pair


def _expr_dirs(h: _Head, W, rng):
    """(V, 3, 100) expression directions: the named ones of :data:`EXPRESSION_NAMES`, then random
    localized fields. Every direction is exactly mirror-symmetric or antisymmetric."""
    v = h.v
    V = len(v)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    ym = h.y_mouth
    xy = v[:, :2]
    ax = np.abs(x)
    pair = _mirror_pairs(v, W[:, 2])
    M = np.array([-1.0, 1.0, 1.0])
    front = _smoothstep(0.02, 0.06, z)
    lower = W[:, 2]                      # on the jaw: lower lip, chin
    left = _smoothstep(-0.004, 0.004, x)  # the subject's left half (+x)

    def vec(w, dx, dy, dz):
        return w[:, None] * np.array([dx, dy, dz])[None]

    def outward(w, d):
        """Displacement d * w along +x on the left half and -x on the right (mirror-symmetric)."""
        return np.c_[np.sign(x) * d * w, np.zeros(V), np.zeros(V)]

    # regions (the iBUG landmark layout of _ibug_inner: eyes at (+-0.0325, 0.0275), brows ~0.049,
    # mouth corners at (+-0.0235, ym), nose tip (0, -0.006), nostrils y ~ -0.018)
    ey, ehh = 0.0275, 0.0045
    eye_x = _gauss(np.c_[ax], [0.0325], [0.013]) * front
    mouth = _gauss(xy, [0, ym], [0.028, 0.018]) * front
    upper_lip = _gauss(xy, [0, ym + 0.006], [0.024, 0.009]) * (1 - lower) * front
    lower_lip = _gauss(xy, [0, ym - 0.007], [0.024, 0.010]) * lower * front
    corners = _gauss(np.c_[ax, y], [0.024, ym], [0.010, 0.010]) * front
    lip_band = _gauss(xy, [0, ym], [0.022, 0.012]) * front
    chin = _gauss(xy, [0, ym - 0.030], [0.018, 0.012]) * front
    cheeks = _gauss(np.c_[ax, y], [0.042, -0.020], [0.016, 0.016]) * front
    cheek_hi = _gauss(np.c_[ax, y], [0.040, 0.005], [0.016, 0.010]) * front
    brows = _gauss(np.c_[ax, y], [0.032, 0.049], [0.020, 0.009]) * front
    inner_brows = _gauss(np.c_[ax, y], [0.014, 0.048], [0.010, 0.008]) * front
    glabella = _gauss(xy, [0.0, 0.040], [0.010, 0.008]) * front
    nose = _gauss(xy, [0.0, 0.012], [0.010, 0.012]) * front
    wings = _gauss(np.c_[ax, y], [0.0135, -0.016], [0.007, 0.006]) * front
    # eyelids: the opening between the lid landmarks (ey +- ehh) closes towards y0, the skin
    # over the eyeball comes forward to cover it; above and below the movement fades out
    y0 = ey - 0.35 * ehh
    lo, hi = ey - ehh - 0.001, ey + ehh + 0.001
    fade = np.where(y > hi, np.exp(-0.5 * ((y - hi) / 0.007) ** 2),
                    np.where(y < lo, np.exp(-0.5 * ((lo - y) / 0.003) ** 2), 1.0))
    lid_close = -(np.clip(y, lo, hi) - y0) * fade * eye_x          # dy per unit (toward y0)
    lid_cover = _gauss(np.c_[ax, y], [0.0325, ey + 0.001], [0.010, 0.006]) * front
    upper_lid = _gauss(np.c_[ax, y], [0.0325, ey + ehh + 0.002], [0.012, 0.005]) * front
    lower_lid = _gauss(np.c_[ax, y], [0.0325, ey - ehh - 0.001], [0.011, 0.0035]) * front

    eyes_close = np.c_[np.zeros(V), 0.6 * lid_close, 0.0032 * lid_cover]
    squint = vec(lower_lid, 0, 0.0022, 0.0008) + vec(cheek_hi, 0, 0.0025, 0.001)
    smile = vec(corners, 0, 0.0042, -0.0022) + outward(corners, 0.0025) + vec(cheek_hi, 0, 0.0015, 0.0008)
    frown_m = vec(corners, 0, -0.0045, -0.0005) + vec(chin, 0, 0.001, 0.0005)
    brow_up = vec(brows, 0, 0.0055, 0.001)
    brow_down = vec(brows, 0, -0.0035, 0.0005) + outward(inner_brows, -0.0025)
    sneer = vec(wings, 0, 0.0025, 0.0005) + vec(upper_lip * _smoothstep(0.0, 0.012, ax), 0, 0.0025, 0.0005)
    puff = vec(cheeks, 0, 0, 0.004) + outward(cheeks, 0.004)
    named = {
        "lips_part": vec(upper_lip, 0, 0.0035, 0.0005) + vec(lower_lip, 0, -0.0055, -0.001),
        "smile": smile,
        "smile_asym": smile,
        "mouth_stretch_open": vec(upper_lip, 0, 0.005, -0.0005) + vec(lower_lip, 0, -0.008, -0.0015)
        + outward(corners, -0.003) + vec(chin, 0, -0.004, -0.001),
        "lips_press": vec(upper_lip, 0, -0.0022, -0.0018) + vec(lower_lip, 0, 0.0022, -0.0018)
        + outward(corners, 0.0008),
        "pucker": vec(lip_band, 0, 0, 0.0055) + outward(mouth, -0.0045),
        "mouth_frown": frown_m,
        "mouth_frown_asym": frown_m,
        "lip_stretch": outward(corners, 0.004) + vec(lip_band, 0, 0, -0.0015),
        "mouth_sideways_asym": vec(mouth, 0.004, 0, 0),
        "upper_lip_raise": vec(upper_lip, 0, 0.0035, 0.001),
        "sneer_asym": sneer,
        "lower_lip_depress": vec(lower_lip, 0, -0.0035, 0.0005),
        "lip_funnel": vec(lip_band, 0, 0, 0.004) + vec(upper_lip, 0, 0.002, 0) + vec(lower_lip, 0, -0.002, 0)
        + outward(corners, -0.0025),
        "chin_raise": vec(chin, 0, 0.0025, 0.002) + vec(lower_lip, 0, 0.002, 0.0015),
        "cheek_puff": puff,
        "cheek_puff_asym": puff,
        "eyes_close": eyes_close,
        "wink_asym": eyes_close,
        "eyes_wide": vec(upper_lid, 0, 0.0035, 0.0005) + vec(lower_lid, 0, -0.0008, 0),
        "squint": squint,
        "squint_asym": squint,
        "brows_raise": brow_up,
        "brow_raise_asym": brow_up,
        "inner_brows_raise": vec(inner_brows, 0, 0.0045, 0.0005) + outward(inner_brows, -0.0008),
        "brows_frown": brow_down + vec(glabella, 0, -0.0015, 0.0005),
        "brow_lower_asym": brow_down,
        "nose_wrinkle": vec(nose, 0, 0.0025, -0.001) + vec(wings, 0, 0.002, 0.0005) + vec(cheek_hi, 0, 0.001, 0),
        "nostril_flare": outward(wings, 0.0025) + vec(wings, 0, 0.0005, 0.0005),
        "lips_roll_in": vec(upper_lip, 0, -0.0015, -0.003) + vec(lower_lip, 0, 0.0015, -0.003),
    }
    assert tuple(named) == EXPRESSION_NAMES

    def sym(d):
        return 0.5 * (d + d[pair] * M)

    def antisym(d):
        # +1 on the subject's left: keep the left half's motion, mirrored negatively on the right
        d = d * left[:, None]
        return d - d[pair] * M

    dirs = [antisym(d) if n.endswith("_asym") else sym(d) for n, d in named.items()]
    regions = [mouth, upper_lip, lower_lip, corners, brows, lid_cover, cheeks, cheek_hi, nose, chin]
    while len(dirs) < 100:
        k = len(dirs)
        w = regions[rng.integers(len(regions))]
        centers = v[rng.choice(h.num_head, 12, replace=False)] * 0.6
        coef = rng.standard_normal((16, 3, 1)) * 0.004
        fld = _rbf_fields(v, centers, 0.05, coef)[:, :, 0]
        fld = w[:, None] * fld / (np.abs(fld).max() + 1e-12) * 0.004
        if rng.random() < 0.5:
            fld += vec(lower * mouth, *(rng.standard_normal(3) * 0.002))
        fld = sym(fld) if k % 2 == 0 else antisym(fld)
        dirs.append(fld / (np.abs(fld).max() + 1e-12) * 0.004 * 0.9 ** (k / 12))
    E = np.stack(dirs, -1)
    for r in h.eye_ranges + [h.bag_range]:
        E[r] = 0.0
    return E


def _pose_dirs(h: _Head, W):
    v = h.v
    V = len(v)
    x, z = v[:, 0], v[:, 2]
    P = np.zeros((V, 3, 36))
    xy = v[:, :2]
    front = _smoothstep(0.0, 0.05, z)
    # neck (joint 1, columns 0..8): nodding compresses/stretches the throat, turning the sides
    throat = _gauss(v[:, [1, 2]], [-0.085, 0.04], [0.025, 0.02])
    P[:, 2, 0 + 7] = 0.010 * throat       # (R-I)[2,1] ~ sin(pitch)
    P[:, 1, 0 + 7] = -0.004 * throat
    sides = _gauss(v[:, [1]], [-0.08], [0.03]) * (np.abs(x) > 0.02)
    P[:, 0, 0 + 2] = 0.004 * sides * np.sign(x)
    # jaw (joint 2, columns 9..17): opening hollows the cheeks and stretches the chin
    cheeks = sum(_gauss(xy, [s * 0.042, -0.03], [0.015, 0.015]) for s in (1, -1)) * front
    P[:, 0, 9 + 7] = -0.012 * cheeks * np.sign(x)
    P[:, 1, 9 + 4] = 0.006 * cheeks
    chin = _gauss(xy, [0, h.y_mouth - 0.03], [0.02, 0.015]) * front
    P[:, 2, 9 + 7] += 0.006 * chin
    # eyes (joints 3, 4, columns 18..35): the upper lid follows the gaze pitch
    for k, s in enumerate((1, -1)):
        lid = _gauss(xy, [s * 0.032, 0.036], [0.013, 0.006]) * front
        lid[np.concatenate(h.eye_ranges)] = 0.0
        P[:, 1, 18 + 9 * k + 7] = 0.006 * lid
        P[:, 2, 18 + 9 * k + 7] = 0.002 * lid
    return P


# --------------------------------------------------------------------------- landmarks
def _hit_faces(v, f, pts2d, prefer_z=True, face_mask=None):
    """Front-most face under each 2D point (orthographic view along -z): face index and barycentrics."""
    tri = v[f]
    a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
    n_z = np.cross(b - a, c - a)
    out_f, out_b = [], []
    for p in pts2d:
        v0, v1, v2 = b - a, c - a, p - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        den = np.where(np.abs(den) < 1e-18, 1e-18, den)
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        l0 = 1 - l1 - l2
        inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9) & (n_z > 0)
        if face_mask is not None:
            inside &= face_mask
        idx = np.nonzero(inside)[0]
        zs = l0[idx] * tri[idx, 0, 2] + l1[idx] * tri[idx, 1, 2] + l2[idx] * tri[idx, 2, 2]
        k = idx[np.argmax(zs)]
        out_f.append(k)
        out_b.append([l0[k], l1[k], l2[k]])
    return np.asarray(out_f, np.int64), np.clip(np.asarray(out_b), 0, 1)


def _ibug_inner(h: _Head):
    """2D (x, y) targets of iBUG landmarks 17..67 on the generated face (x: subject's left)."""
    ym = h.y_mouth
    pts = []
    for side in (-1, 1):  # 17-21 subject's right brow (image left), 22-26 left brow
        xs = np.linspace(0.052, 0.012, 5) if side < 0 else np.linspace(0.012, 0.052, 5)
        ys = 0.046 + 0.006 * np.sin(np.pi * (xs - 0.012) / 0.045)
        pts += [[side * xx, yy] for xx, yy in zip(xs, ys)]
    pts += [[0.0, yy] for yy in np.linspace(0.030, -0.006, 4)]          # 27-30 nose bridge to tip
    pts += [[xx, -0.018 + 0.002 * abs(xx) / 0.014] for xx in np.linspace(-0.014, 0.014, 5)]  # 31-35
    for side in (-1, 1):  # 36-41 right eye, 42-47 left eye (iBUG order, clockwise in the image)
        cx, cy, w, hh = side * 0.0325, 0.0275, 0.0125, 0.0045
        if side < 0:
            xs = [cx - w, cx - 0.4 * w, cx + 0.4 * w, cx + w, cx + 0.4 * w, cx - 0.4 * w]
        else:
            xs = [cx - w, cx - 0.4 * w, cx + 0.4 * w, cx + w, cx + 0.4 * w, cx - 0.4 * w]
        ys = [cy, cy + hh, cy + hh, cy, cy - hh, cy - hh]
        pts += [[a, b] for a, b in zip(xs, ys)]
    W = 0.0235
    outer = [[-W, ym], [-0.014, ym + 0.007], [-0.005, ym + 0.010], [0.0, ym + 0.0095], [0.005, ym + 0.010],
             [0.014, ym + 0.007], [W, ym], [0.014, ym - 0.010], [0.006, ym - 0.0125], [0.0, ym - 0.013],
             [-0.006, ym - 0.0125], [-0.014, ym - 0.010]]
    inner = [[-W + 0.003, ym], [-0.008, ym + 0.0012], [0.0, ym + 0.0012], [0.008, ym + 0.0012], [W - 0.003, ym],
             [0.008, ym - 0.0012], [0.0, ym - 0.0012], [-0.008, ym - 0.0012]]
    pts += outer + inner
    return np.asarray(pts)


def _contour_table(h: _Head, W):
    """Contour landmarks (17) for head yaw -39..39 degrees: (79 yaws, 17) vertex indices."""
    v = h.v[:h.num_head]
    y, z = v[:, 1], v[:, 2]
    cand = ((z > 0.045) | ((y > -0.06) & (z > -0.004))) & (y < 0.012) & (y > h.y_mouth - 0.06)
    cand_idx = np.nonzero(cand)[0]
    center = np.array([0.0, -0.012, 0.03])
    psi = np.deg2rad(np.linspace(180, 360, 17))
    table = {}
    for beta in range(-39, 40):
        b = np.deg2rad(beta)
        R = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        q = v[cand_idx] @ R.T
        c = R @ center
        rel = q[:, :2] - c[:2]
        ang = np.arctan2(rel[:, 1], rel[:, 0]) % (2 * np.pi)
        rad = np.linalg.norm(rel, axis=1)
        row = []
        for ps in psi:
            dang = np.abs((ang - ps + np.pi) % (2 * np.pi) - np.pi)
            ok = dang < np.deg2rad(4.0)
            # the outermost point along the ray (not the farthest from the centre: that put the
            # chin point 8 on a column beside the midline in v3)
            k = np.argmax(np.where(ok, rad * np.cos(dang), -1))
            row.append(cand_idx[k])
        table[beta] = row
    return table


def _vertex_embedding(f, vert_ids):
    """Face index and barycentrics placing a landmark exactly on each given vertex."""
    inc = {}
    for fi, tri in enumerate(f):
        for k, vv in enumerate(tri):
            inc.setdefault(int(vv), (fi, k))
    fids, bary = [], []
    for vv in np.asarray(vert_ids).reshape(-1):
        fi, k = inc[int(vv)]
        b = np.zeros(3)
        b[k] = 1.0
        fids.append(fi)
        bary.append(b)
    shp = np.asarray(vert_ids).shape
    return np.asarray(fids, np.int64).reshape(shp), np.asarray(bary).reshape(shp + (3,))


def _row_of(angle):
    return angle if angle >= 0 else 39 - angle


# --------------------------------------------------------------------------- writer
def build_generated_model():
    """Build the generated model: (model dict in FLAME 2020 layout, DECA embedding, RingNet static, RingNet dynamic)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(SEED)
    h = _Head().build()
    W = _skinning(h)
    J = _joint_regressor(h)
    S = _shape_dirs(h, rng)
    E = _expr_dirs(h, W, rng)
    P = _pose_dirs(h, W)
    model = {
        "v_template": h.v.astype(np.float64),
        "f": h.f.astype(np.uint32),
        "shapedirs": np.concatenate([S, E], 2).astype(np.float64),
        "posedirs": P.astype(np.float64),
        "J_regressor": sp.csc_matrix(J),
        "weights": W.astype(np.float64),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": (J @ h.v).astype(np.float64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "vt": h.vt.astype(np.float64),
        "ft": h.ft.astype(np.uint32),
        "part_labels": h.part_labels,  # 0 skin, 1 left eyeball, 2 right eyeball, 3 mouth cavity
        "generator": f"ppface3d.flame.generate v{GENERATOR_VERSION} (not FLAME; a FLAME-format stand-in)",
    }
    # landmarks
    head_faces = np.arange(len(h.f)) < (2 * NC * (NR - 1) + NC)
    inner2d = _ibug_inner(h)
    pts2d = inner2d.copy()
    ym = h.y_mouth
    sf, sb = _hit_faces(h.v, h.f, pts2d, face_mask=head_faces)
    table = _contour_table(h, W)
    neutral = table[0]
    full_cf, full_cb = _vertex_embedding(h.f, neutral)
    full_f = np.concatenate([full_cf, sf])
    full_b = np.concatenate([full_cb, sb])
    deca_rows = np.zeros((79, 17), np.int64)
    ring_rows = np.zeros((79, 17), np.int64)
    for a in range(-39, 40):
        deca_rows[_row_of(a)] = table[a]       # 'deca': row by +yaw of R_global R_neck
        ring_rows[_row_of(a)] = table[-a]      # 'smplx': row by -yaw of R_global
    dyn_f_deca, dyn_b_deca = _vertex_embedding(h.f, deca_rows)
    dyn_f_ring, dyn_b_ring = _vertex_embedding(h.f, ring_rows)
    deca = {
        "static_lmk_faces_idx": sf, "static_lmk_bary_coords": sb,
        "dynamic_lmk_faces_idx": dyn_f_deca, "dynamic_lmk_bary_coords": dyn_b_deca,
        "full_lmk_faces_idx": full_f[None], "full_lmk_bary_coords": full_b[None],
    }
    static = {"lmk_face_idx": sf.astype(np.uint32), "lmk_b_coords": sb}
    dynamic = {"lmk_face_idx": dyn_f_ring, "lmk_b_coords": dyn_b_ring}
    del ym
    return model, deca, static, dynamic


def write_generated_model(folder: str):
    """Write the generated model and its landmark files into ``folder`` (see the module docstring)."""
    model, deca, static, dynamic = build_generated_model()
    os.makedirs(folder, exist_ok=True)
    save_pickle(os.path.join(folder, "generic_model.pkl"), model)
    save_pickle(os.path.join(folder, "FLAME_NEUTRAL.pkl"), model)
    save_npy(os.path.join(folder, "landmark_embedding.npy"), deca)
    save_pickle(os.path.join(folder, "flame_static_embedding.pkl"), static)
    save_npy(os.path.join(folder, "flame_dynamic_embedding.npy"), dynamic)
    write_obj(os.path.join(folder, "head_template.obj"), model["v_template"], model["f"].astype(np.int64),
              model["vt"], model["ft"].astype(np.int64))
    return os.path.join(folder, "generic_model.pkl")
