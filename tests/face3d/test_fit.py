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


def test_closed_form_appearance_recovers_albedo_and_light(target):
    """With the true geometry, the alternating least squares reproduces the image the albedo code
    and SH light rendered (the renderer is the reference), the albedo's higher components included."""
    from ppface3d.apps.fit import FaceFitter

    _, s, ds = target
    fitter = FaceFitter(ds.face, image_size=64, progress=False, w_tex=1e-6)
    fitter._set_origin()
    t = paddle.to_tensor
    p = {"shape": t(s["shape"][None]), "exp": t(s["exp"]), "glob": t(s["pose"][:, :3]), "jaw": t(s["pose"][:, 3:]),
         "cam": t(fitter.to_fit_camera(s["cam"])), "tex": paddle.zeros([1, 10]), "light": t(np.zeros((1, 9, 3), np.float32))}
    with paddle.no_grad():
        out = fitter._decode(dict(p, tex=t(s["tex"][None]), light=t(s["light"])), render=True)
    image, mask = out["image"], out["alpha"][:, 0]
    from ppface3d import sh_ambient

    p["light"] = t(sh_ambient(1.0)[None])  # the start: white ambient light, mean albedo
    tex, light = fitter.solve_appearance(p, image, mask, rounds=6)
    with paddle.no_grad():
        again = fitter._decode(dict(p, tex=t(tex), light=t(light)), render=True)["image"]
        start = fitter._decode(p, render=True)["image"]
    m = mask.numpy()[0] > 0.5
    err = np.abs(again.numpy()[0] - image.numpy()[0])[:, m].mean()
    err0 = np.abs(start.numpy()[0] - image.numpy()[0])[:, m].mean()
    assert err < 0.01 and err < 0.1 * err0, (err, err0)  # albedo x light is identified (not each alone)
    np.testing.assert_allclose(tex[0, 3:], s["tex"][3:], atol=0.15)


def test_dense_points_improve_the_fit_on_a_photo():
    """On the astronaut, the fit's inner landmarks come closer to an independent detector (dlib's
    68-point predictor) with mediapipe's dense points than with the 68 points alone."""
    import dlib
    import face_recognition_models as frm
    import skimage.data

    from ppface3d.apps.fit import FaceFitter
    from ppface3d.data.preprocess import FacePreprocessor
    from ppface3d.render import ndc_to_pixels

    img = skimage.data.astronaut()
    rects, scores, _ = dlib.get_frontal_face_detector().run(img, 1, -0.5)
    sp = dlib.shape_predictor(frm.pose_predictor_model_location())(img, rects[int(np.argmax(scores))])
    ref = np.array([[sp.part(i).x, sp.part(i).y] for i in range(68)], np.float64)
    face = FacePreprocessor()(img).faces[0]
    assert face.dense is not None and face.dense.shape == (468, 2)
    err = {}
    for w in (0.0, 1.0):
        f = FaceFitter(n_shape=50, n_exp=50, n_tex=10, image_size=64, w_dense=w, progress=False)
        c = f.fit(face)
        lm = face.to_original(ndc_to_pixels(f.render(c)["landmarks2d"].numpy()[0], 224))
        err[w] = np.linalg.norm(lm[17:] - ref[17:], axis=1).mean()
    assert err[1.0] < err[0.0], err
