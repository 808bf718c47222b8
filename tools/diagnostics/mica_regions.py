"""Render the MICA loss regions of the FLAME model in use: docs/images/mica_regions.png.

    python tools/diagnostics/mica_regions.py [--out docs/images/mica_regions.png] [--flame generic_model.pkl --masks FLAME_masks.pkl]

Red: face (weight 150), green: ears (0.01), blue: eyeballs (0.01), grey: the rest (1); the head
seen from the front, at 60 and at 90 degrees.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from ppengine.quiet import quiet  # noqa: E402

quiet()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "images", "mica_regions.png"))
    p.add_argument("--flame", default=None, help="FLAME model pickle (default: the generated one)")
    p.add_argument("--masks", default=None, help="FLAME's FLAME_masks.pkl (needed for a real FLAME model)")
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args(argv)

    import numpy as np
    import paddle
    from scipy.spatial.transform import Rotation

    from ppengine.io import save_png
    from ppface3d.face_model import FaceModel
    from ppface3d.flame.masks import flame_masks

    face = FaceModel(n_shape=1, image_size=a.size, flame_model_path=a.flame)
    m = flame_masks(face.flame, a.masks)
    V = face.flame.num_vertices
    col = np.full((1, V, 3), 0.7, np.float32)
    col[0, m["face"]], col[0, m["ears"]], col[0, m["eyes"]] = (1, 0.3, 0.3), (0.3, 1, 0.3), (0.3, 0.3, 1)
    cam = face.framing_camera(face.mean_landmarks())[None] * np.array([[0.8, 1, 1]], np.float32)
    views = []
    for yaw in (0, 60, 90):
        pose = np.zeros((1, 6), np.float32)
        pose[0, :3] = Rotation.from_euler("y", yaw, degrees=True).as_rotvec()
        dec = face.place(face.decode({"pose": paddle.to_tensor(pose)}), paddle.to_tensor(cam))
        r = face.renderer(dec["vertices"], face.camera(dec["cam"]), vertex_colors=paddle.to_tensor(col))
        views.append(r["images"].numpy()[0].transpose(1, 2, 0))
    save_png(a.out, np.concatenate(views, 1))
    print(f"{a.out}: face {len(m['face'])}, ears {len(m['ears'])}, eyes {len(m['eyes'])} of {V} vertices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
