"""Multi-image fusion: shared shape from K views, photo texture merged across views."""
import os

import numpy as np
import paddle
import pytest

import ppface3d  # noqa: F401


@pytest.fixture(scope="module")
def data():
    from ppface3d.data.synthetic import SyntheticFaces

    return SyntheticFaces(split="test", num_subjects=3, K=4, image_size=64, n_shape=100, n_exp=50, n_tex=50, max_jaw=0.2)


def test_fusion_beats_a_single_view(data):
    """Fitting 4 views of a subject together recovers its neutral head better (NoW-style
    scan-to-mesh against the ground truth) than fitting one view."""
    from ppface3d.apps.fit import FaceFitter
    from ppface3d.apps.fuse import FUSE_FIT
    from ppface3d.losses.metrics import now_errors
    from ppface3d.render import ndc_to_pixels

    face = data.face
    fitter = FaceFitter(face, image_size=64, landmark_iters=60, progress=False, **FUSE_FIT)
    err = {1: [], 4: []}
    for i in range(len(data)):
        s = data[i]
        views = [{"image": s["image"][j].transpose(1, 2, 0), "landmarks": ndc_to_pixels(s["landmark"][j, :, :2], 64)}
                 for j in range(4)]
        for k in err:
            c = fitter.fit_views(views[:k])
            assert c["shape"].shape == (1, 100) and c["exp"].shape == (k, 50) and c["light"].shape == (k, 9, 3)
            with paddle.no_grad():
                pr = face.neutral(paddle.to_tensor(c["shape"]))
            d, _ = now_errors(pr["vertices"].numpy()[0], pr["landmarks68"].numpy()[0], s["gt_verts_neutral"][0],
                              s["gt_lmk3d_neutral"][0], face.faces)
            err[k].append(np.median(d))
    assert np.mean(err[4]) < 0.95 * np.mean(err[1]), err


def test_photo_texture_sampling_inverts_the_renderer(data):
    """A face rendered unlit with a known texture, sampled back into UV through its geometry:
    the texels seen squarely carry the texture's colours (the renderer is the reference)."""
    from ppface3d.apps.fuse import best_view, sample_views

    face = data.face.at_size(128)
    rng = np.random.default_rng(0)
    T = 64
    yy, xx = np.mgrid[0:T, 0:T] / T
    tex = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.3 + 0.5 * xx * yy], -1).astype(np.float32)
    t = paddle.to_tensor
    pose = np.zeros((2, 6), np.float32)
    pose[:, 1] = [0.3, -0.3]  # two views, turned either way
    with paddle.no_grad():
        dec = face.decode({"shape": t(rng.normal(size=(2, 100)).astype(np.float32) * 0.5), "pose": t(pose)})
        cam = face.framing_camera(dec["landmarks3d"].numpy()[0])
        dec = face.place(dec, t(np.repeat(cam[None], 2, 0)))
        img = face.render(dec, albedo=t(np.repeat(tex.transpose(2, 0, 1)[None], 2, 0)))["images"]
    s = sample_views(face, dec, img, size=T)
    assert s["texture"].shape == (2, T, T, 3) and s["weight"].shape == (2, T, T)
    for k in range(2):
        seen = s["weight"][k] > 0.9
        assert seen.sum() > 200
        assert np.abs(s["texture"][k][seen] - tex[seen]).mean() < 0.03
    m = best_view(s)
    assert (m["weight"] >= s["weight"].max(0) - 1e-7).all()
    # the two turned views see opposite cheeks: the merge covers more than either
    assert (m["weight"] > 0.9).sum() > 1.1 * max((s["weight"][k] > 0.9).sum() for k in range(2))


def test_fuse_photos_writes_one_head(tmp_path):
    import imageio.v3 as iio
    import skimage.data
    import trimesh

    from ppface3d.apps.fit import FaceFitter
    from ppface3d.apps.fuse import fuse_photos

    a = skimage.data.astronaut()
    iio.imwrite(tmp_path / "a.png", a)
    iio.imwrite(tmp_path / "b.png", a[:, ::-1])  # another pose of the face
    (tmp_path / "c.png").write_bytes(b"broken")  # left out with a message
    fitter = FaceFitter(n_shape=20, n_exp=10, n_tex=10, image_size=64, landmark_iters=30, progress=False)
    files = fuse_photos([str(tmp_path / n) for n in ("a.png", "b.png", "c.png")], str(tmp_path / "fused"),
                        fitter=fitter, uv_size=64, progress=False)
    names = sorted(os.path.basename(f) for f in files)
    assert {"codes.npz", "fused.obj", "fused.png", "fused.glb", "fused_neutral.obj"} <= set(names)
    z = np.load(tmp_path / "fused" / "codes.npz")
    assert z["exp"].shape == (2, 10) and z["shape"].shape == (1, 20) and len(z["sources"]) == 2
    assert len(trimesh.load(tmp_path / "fused" / "fused.glb").geometry) == 1
