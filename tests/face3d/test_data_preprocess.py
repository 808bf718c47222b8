"""Photo loading, mediapipe 68 landmarks, DECA crop + inverse, and every bad-input case."""
import os

import numpy as np
import pytest
import skimage.data as skimage_data  # noqa: E402

from ppengine.errors import InputError


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def pre():
    from ppface3d.data.preprocess import FacePreprocessor

    p = FacePreprocessor(crop_size=224, scale=1.25, min_face_size=64)
    yield p
    p.close()


@pytest.fixture(scope="module")
def good(pre, astronaut):
    r = pre(astronaut)
    assert r.ok and len(r.faces) == 1, r.summary()
    return r.faces[0]


def test_exif_orientation_matches_pillow(tmp_path):
    from PIL import Image, ImageOps

    from ppface3d.data.io import load_image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)
    for o in range(1, 9):
        p = str(tmp_path / f"o{o}.png")
        ex = Image.Exif()
        ex[0x0112] = o
        Image.fromarray(arr).save(p, exif=ex)
        got, notes = load_image(p)
        with Image.open(p) as im:
            ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        np.testing.assert_array_equal(got, ref, err_msg=f"orientation {o}")
        assert (o == 1) != any("EXIF" in n for n in notes)


def test_mapping_is_anatomically_ordered(good):
    lm = good.landmarks
    assert lm.shape == (68, 2)
    # jaw runs image-left -> chin -> image-right, chin lowest
    assert lm[0, 0] < lm[8, 0] < lm[16, 0]
    assert lm[8, 1] == lm[:17, 1].max()
    # eye corners left to right; brows above eyes above nose tip above mouth above chin
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]
    assert lm[17:27, 1].mean() < lm[36:48, 1].mean() < lm[30, 1] < lm[48:68, 1].mean() < lm[8, 1]
    # upper lids above lower lids, upper inner lip above lower inner lip (or touching)
    assert np.all(lm[[37, 38, 43, 44], 1] <= lm[[41, 40, 47, 46], 1] + 1)
    assert np.all(lm[[61, 62, 63], 1] <= lm[[67, 66, 65], 1] + 1)
    # the face fills DECA's crop: landmark box about 1/1.25/1.1 of the side, centred
    span = (np.ptp(lm[:, 0]) + np.ptp(lm[:, 1])) / 2
    assert abs(span - 224 / 1.25 / 1.1) < 4
    assert np.allclose(lm.min(0) + np.ptp(lm, 0) / 2, 111.5, atol=3)


def test_crop_inverse_maps_back(good, astronaut):
    from ppface3d.data.preprocess import paste_back

    back = good.to_original(good.landmarks)
    np.testing.assert_allclose(back, good.landmarks_original, atol=1e-3)
    # pasting the crop back reproduces the photo inside the crop region
    pasted = paste_back(good.image, good.tform, astronaut.shape, background=astronaut)
    x0, y0 = good.landmarks_original.min(0).astype(int) + 5
    x1, y1 = good.landmarks_original.max(0).astype(int) - 5
    err = np.abs(pasted[y0:y1, x0:x1] - astronaut[y0:y1, x0:x1] / 255.0).mean()
    assert err < 0.03, err


def _write_cases(folder, img):
    import cv2
    from PIL import Image
    from skimage.transform import rescale

    cases = {}
    cases["good"] = str(folder / "good.jpg")
    Image.fromarray(img).save(cases["good"], quality=92)
    cases["noface"] = str(folder / "noface.png")
    yy, xx = np.mgrid[0:256, 0:256]
    Image.fromarray(np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)).save(cases["noface"])
    cases["two"] = str(folder / "two.png")
    Image.fromarray(np.concatenate([img, img[:, ::-1]], 1)).save(cases["two"])
    small = (rescale(img, 0.5, channel_axis=2) * 255).astype(np.uint8)
    canvas = np.full((512, 512, 3), 128, np.uint8)
    canvas[:256, :256] = small
    cases["tiny"] = str(folder / "tiny.png")
    Image.fromarray(canvas).save(cases["tiny"])
    cases["gray"] = str(folder / "gray.png")
    Image.fromarray(np.round(img.mean(-1)).astype(np.uint8)).save(cases["gray"])
    cases["rgba"] = str(folder / "rgba.png")
    Image.fromarray(np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], -1)).save(cases["rgba"])
    cases["16bit"] = str(folder / "sixteen.png")
    cv2.imwrite(cases["16bit"], (img[..., ::-1].astype(np.uint16) * 257))
    cases["exif"] = str(folder / "exif.jpg")
    ex = Image.Exif()
    ex[0x0112] = 6  # stored turned left; a viewer turns it right
    Image.fromarray(np.ascontiguousarray(np.rot90(img, k=1))).save(cases["exif"], exif=ex, quality=92)
    cases["corrupt"] = str(folder / "corrupt.jpg")
    with open(cases["good"], "rb") as f:
        data = f.read()
    with open(cases["corrupt"], "wb") as f:
        f.write(data[: len(data) // 3])
    cases["garbage"] = str(folder / "garbage.png")
    with open(cases["garbage"], "wb") as f:
        f.write(os.urandom(2000))
    cases["empty"] = str(folder / "empty.jpg")
    open(cases["empty"], "wb").close()
    return cases


def test_bad_inputs_each_get_a_message_and_batch_goes_on(tmp_path, pre, astronaut, good):
    cases = _write_cases(tmp_path, astronaut)
    names = list(cases)
    logged = []
    results = pre.process_many([cases[n] for n in names], progress=False, log=logged.append)
    r = dict(zip(names, results))
    assert len(results) == len(names)
    assert r["good"].ok and not r["good"].messages
    assert not r["noface"].ok and "no face found" in r["noface"].messages[0]
    assert len(r["two"].faces) == 2 and "2 faces found" in r["two"].messages[0]
    assert not r["tiny"].ok and any("too small" in m for m in r["tiny"].messages)
    assert r["gray"].ok and any("grayscale" in m for m in r["gray"].messages)
    assert r["rgba"].ok and any("alpha" in m for m in r["rgba"].messages)
    assert r["16bit"].ok and any("16-bit" in m for m in r["16bit"].messages)
    assert r["16bit"].original.dtype == np.uint8
    np.testing.assert_allclose(r["16bit"].original.astype(int), astronaut.astype(int), atol=1)
    assert r["exif"].ok and any("EXIF orientation 6" in m for m in r["exif"].messages)
    # turned upright: same landmarks as the upright photo (JPEG noise aside)
    assert r["exif"].original.shape == astronaut.shape
    assert np.abs(r["exif"].faces[0].landmarks_original - good.landmarks_original).mean() < 3.0
    assert not r["corrupt"].ok and "corrupt or truncated" in r["corrupt"].messages[0]
    assert not r["garbage"].ok and "not an image" in r["garbage"].messages[0]
    assert not r["empty"].ok and "empty" in r["empty"].messages[0]
    # one log line per problem image, naming the file
    for n in ["noface", "tiny", "corrupt", "garbage", "empty", "two"]:
        assert any(os.path.basename(cases[n]) in line for line in logged), n


def test_load_image_errors(tmp_path):
    from ppface3d.data.io import load_image

    with pytest.raises(InputError, match="no such file"):
        load_image(str(tmp_path / "missing.jpg"))


def test_landmark_files_and_folder(tmp_path, astronaut, good):
    from PIL import Image

    from ppface3d.data.image_folder import FaceImageFolder
    from ppface3d.data.preprocess import read_landmark_file

    lm = good.landmarks_original
    root = tmp_path / "faces"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(astronaut).save(root / "a" / "x.jpg")
    np.save(root / "a" / "x.npy", lm)
    Image.fromarray(astronaut).save(root / "a" / "y.png")
    np.savetxt(root / "a" / "y.txt", np.concatenate([lm, np.full((68, 1), 0.5)], 1))
    Image.fromarray(astronaut).save(root / "b" / "z.png")   # no file: mediapipe, then cached
    with open(root / "b" / "bad.jpg", "wb") as f:
        f.write(b"not a jpeg")
    pts = root / "p.pts"
    pts.write_text("version: 1\nn_points: 68\n{\n" + "\n".join(f"{x} {y}" for x, y in lm) + "\n}\n")
    np.testing.assert_allclose(read_landmark_file(str(pts))[:, :2], lm, atol=1e-4)
    np.save(root / "wrong.npy", np.zeros((5, 2)))
    with pytest.raises(InputError, match=r"\(68, 2\)"):
        read_landmark_file(str(root / "wrong.npy"))

    ds = FaceImageFolder(str(root), image_size=64, K=1, verbose=False)
    assert len(ds) == 3 and len(ds.skipped) == 1 and "bad.jpg" in ds.skipped[0]
    assert os.path.isfile(root / ".landmarks_cache" / "b" / "z.npy")
    s = ds[0]
    assert s["image"].shape == (1, 3, 64, 64) and s["landmark"].shape == (1, 68, 3)
    assert s["mask"].shape == (1, 64, 64) and 0.2 < s["mask"].mean() < 0.8
    assert np.abs(s["landmark"][..., :2]).max() < 1.0
    assert np.allclose(ds[1]["landmark"][0, :, 2], 0.5)
    # cached detection ~ file landmarks for the same photo
    np.testing.assert_allclose(ds[2]["landmark"][0, :, :2], s["landmark"][0, :, :2], atol=0.02)
    ds2 = FaceImageFolder(str(root), image_size=64, K=2, verbose=False)
    assert len(ds2) == 2 and ds2[0]["image"].shape == (2, 3, 64, 64)
    with pytest.raises(InputError, match="not a folder"):
        FaceImageFolder(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no usable face photos"):
        FaceImageFolder(str(empty))
