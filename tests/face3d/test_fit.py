"""Optimisation-based fitting recovers a rendered face's landmarks (ground truth known)."""
import numpy as np
import paddle
import pytest

import ppface3d  # noqa: F401


@pytest.fixture(scope="module")
def target():
    from ppface3d.data.synthetic import SyntheticFaces
    from ppface3d.render import ndc_to_pixels

    ds = SyntheticFaces(split="test", num_subjects=2, K=1, image_size=64, n_shape=20, n_exp=10, n_tex=10,
                        max_jaw=0.15)
    s = ds[1]
    img = s["image"][0].transpose(1, 2, 0)
    lm_px = ndc_to_pixels(s["landmark"][0, :, :2], 64)
    return {"image": img, "landmarks": lm_px}, s, ds


def test_fit_recovers_landmarks_and_appearance(target):
    from ppface3d.apps.fit import FaceFitter
    from ppface3d.render import OrthographicCamera

    face, s, ds = target
    flame = ds.face.flame
    fitter = FaceFitter(ds.face, image_size=64, landmark_iters=80, photo_iters=25, lr=0.03, progress=False)
    assert fitter.face.flame is flame  # the data's face model, shared
    codes = fitter.fit(face)
    out = fitter.render(codes)
    lm_fit = (out["landmarks2d"].numpy()[0] + 1.0) * 32 - 0.5
    err = np.linalg.norm(lm_fit - face["landmarks"], axis=1).mean()
    # the mean face under the framing camera (the fit's starting point)
    from ppface3d import framing_camera

    mean = flame(shape=paddle.zeros([1, 20]))
    cam0 = framing_camera(mean.landmarks.numpy()[0])
    lm0 = (OrthographicCamera(paddle.to_tensor(cam0[None])).project(mean.landmarks).numpy()[0] + 1) * 32 - 0.5
    err0 = np.linalg.norm(lm0 - face["landmarks"], axis=1).mean()
    assert err < 1.0 and err < 0.35 * err0, (err, err0)
    # head pose recovered (axis-angle of the global rotation, radians)
    assert np.abs(codes["pose"][0, :3] - s["pose"][0, :3]).max() < 0.12
    # photometric stage: the render matches the photo in the face region better than the mean albedo under ambient light
    mask = (out["alpha"].numpy()[0, 0] > 0.5)
    rendered = out["image"].numpy()[0].transpose(1, 2, 0)
    err_photo = np.abs(rendered - face["image"])[mask].mean()
    c2 = dict(codes)
    c2["tex"] = np.zeros_like(codes["tex"])
    from ppface3d import sh_ambient

    c2["light"] = sh_ambient(1.0)[None]
    base = fitter.render(c2)["image"].numpy()[0].transpose(1, 2, 0)
    assert err_photo < 0.8 * np.abs(base - face["image"])[mask].mean()
    assert codes["shape"].shape == (1, 20) and codes["light"].shape == (1, 9, 3)
