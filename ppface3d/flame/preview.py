"""Quick shaded previews of FLAME meshes (NumPy + Pillow, painter's algorithm), for docs and checks.

    img = render_mesh(vertices, faces, size=256, yaw_deg=20)     # (H, W, 3) uint8
    python -m ppface3d.flame.preview --out docs/images/flame_sheet.png
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from ppengine.io import atomic_save


def render_mesh(vertices, faces, size=256, yaw_deg=0.0, pitch_deg=0.0, colors=None, extent=0.21,
                center=(0.0, -0.01, 0.0), landmarks=None, background=(255, 255, 255)):
    """Orthographic flat-shaded render. vertices (V, 3), faces (F, 3); colors (F, 3) in [0, 1] or None.

    The view looks along -z after rotating the mesh by yaw (about y) then pitch (about x).
    ``landmarks`` (L, 3) are drawn as red dots. Returns (size, size, 3) uint8.
    """
    from PIL import Image, ImageDraw

    v = np.asarray(vertices, dtype=np.float64) - np.asarray(center)
    f = np.asarray(faces, dtype=np.int64)
    b, a = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    Ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    R = Rx @ Ry
    v = v @ R.T
    tri = v[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    vis = n[:, 2] > 0
    light = np.array([0.35, 0.45, 1.0])
    light /= np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.clip(n @ light, 0, 1)
    base = np.full((len(f), 3), [0.80, 0.68, 0.60]) if colors is None else np.asarray(colors)
    col = np.clip(base * shade[:, None], 0, 1)
    order = np.argsort(tri[:, :, 2].mean(1))
    scale = size / (2 * extent)
    xy = np.stack([tri[:, :, 0] * scale + size / 2, -tri[:, :, 1] * scale + size / 2], -1)
    ss = 2
    img = Image.new("RGB", (size * ss, size * ss), background)
    draw = ImageDraw.Draw(img)
    for i in order:
        if not vis[i]:
            continue
        c = tuple(int(255 * t) for t in col[i])
        draw.polygon([tuple(p) for p in (xy[i] * ss)], fill=c, outline=c)
    if landmarks is not None:
        lm = (np.asarray(landmarks) - np.asarray(center)) @ R.T
        for x, y in zip(lm[:, 0] * scale + size / 2, -lm[:, 1] * scale + size / 2):
            draw.ellipse([x * ss - 3, y * ss - 3, x * ss + 3, y * ss + 3], fill=(220, 30, 30))
    img = img.resize((size, size), Image.LANCZOS)
    return np.asarray(img)


def face_colors(flame):
    """Per-face colours: skin for the head, white/iris for eyeballs, darker lips."""
    from .safe_pickle import load_pickle

    f = flame.faces
    v = flame.v_template.numpy()
    col = np.tile([0.80, 0.68, 0.60], (len(f), 1))
    labels = load_pickle(flame.model_path).get("part_labels") if flame.model_path.endswith(".pkl") else None
    if labels is not None and len(labels) == len(v):
        col[(np.asarray(labels)[f] == 3).all(1)] = [0.35, 0.08, 0.08]
    w = flame.lbs_weights.numpy()
    eye = (w[f][:, :, 3:].sum(-1) > 0.5).all(1)
    c = v[f].mean(1)
    col[eye] = [0.95, 0.95, 0.93]
    for k in (3, 4):
        sel = (w[f][:, :, k] > 0.5).all(1)
        if sel.any():
            ctr = v[(w[:, k] > 0.5)].mean(0)
            fwd = (c[sel] - ctr)[:, 2] / (np.linalg.norm(c[sel] - ctr, axis=1) + 1e-12)
            idx = np.nonzero(sel)[0]
            col[idx[fwd > 0.80]] = [0.25, 0.35, 0.45]
            col[idx[fwd > 0.93]] = [0.05, 0.05, 0.05]
    return col


def sheet(flame=None, size=200):
    """A grid of renders: neutral (front, 3/4, profile), identities, expressions, jaw open."""
    import paddle

    from .flame import FLAME

    flame = flame or FLAME()
    cols = face_colors(flame)
    cells = []

    def run(**kw):
        kw = {k: paddle.to_tensor(np.asarray(v, np.float32)[None]) for k, v in kw.items()}
        if not kw:
            kw = {"shape": paddle.zeros([1, 1])}
        out = flame(**kw)
        lm = None if out.landmarks is None else out.landmarks.numpy()[0]
        return out.vertices.numpy()[0], lm

    def add(title, yaw=0.0, lm=False, **kw):
        v, l = run(**kw)
        cells.append((title, render_mesh(v, flame.faces, size, yaw_deg=yaw, colors=cols, landmarks=l if lm else None)))

    add("neutral")
    add("neutral 3/4", yaw=35)
    add("profile", yaw=90)
    add("68 landmarks", lm=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        add(f"identity {i + 1}", yaw=20, shape=rng.standard_normal(flame.n_shape) * 1.5)
    for name, k, s in (("lips part (+2)", 0, 2.0), ("smile (+2.5)", 1, 2.5), ("brows raised (+2.5)", 22, 2.5),
                       ("eyes closed (+2)", 17, 2.0)):
        if k >= flame.n_expression:
            continue
        e = np.zeros(flame.n_expression)
        e[k] = s
        add(name, yaw=15, expression=e)
    add("jaw open", yaw=25, jaw_pose=[0.35, 0, 0])
    add("jaw open, profile", yaw=80, jaw_pose=[0.35, 0, 0])
    add("head turn + landmarks", lm=True, global_pose=[0, 0.5, 0])
    add("eyes + neck pose", eye_pose=[0.0, 0.35, 0, 0.0, 0.35, 0], neck_pose=[0.2, 0, 0.15])
    return cells


def save_sheet(path, cells, ncol=4):
    from PIL import Image, ImageDraw

    h, w = cells[0][1].shape[:2]
    rows = (len(cells) + ncol - 1) // ncol
    canvas = Image.new("RGB", (w * ncol, (h + 18) * rows), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (title, img) in enumerate(cells):
        r, c = divmod(i, ncol)
        canvas.paste(Image.fromarray(img), (c * w, r * (h + 18) + 18))
        draw.text((c * w + 4, r * (h + 18) + 3), title, fill=(0, 0, 0))
    atomic_save(path, lambda tmp: canvas.save(tmp, format="PNG"))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Render a sheet of the (generated) FLAME model")
    ap.add_argument("--out", default="docs/images/flame_sheet.png")
    ap.add_argument("--model", default=None, help="FLAME model pickle (default: the generated one)")
    ap.add_argument("--size", type=int, default=200)
    a = ap.parse_args(argv)
    from .flame import FLAME

    flame = FLAME(a.model) if a.model else FLAME()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_sheet(a.out, sheet(flame, a.size))
    print(a.out)


if __name__ == "__main__":
    main()
