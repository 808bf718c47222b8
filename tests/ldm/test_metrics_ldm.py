"""The independent checkers: digit classifier/FID, shapes reader, inpainting and SR metrics."""
import numpy as np
import paddle
import pytest

from ppldm.data import Digits, ShapesWorld, SuperResPairs
from ppldm.data.shapes import render_scene
from ppldm.metrics import (
    DigitAccuracy,
    DigitFID,
    InpaintingError,
    ReconstructionQuality,
    ShapesCaptionAccuracy,
    ShapesLayoutAccuracy,
    SuperResQuality,
    check_caption,
    detect,
    frechet_distance,
)
from ppldm.metrics.shapes import parse_caption


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    a = rng.normal(m1, s1, size=(200000, 3))
    b = rng.normal(m2, s2, size=(200000, 3))
    expect = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()  # diagonal Gaussians
    assert frechet_distance(a, b) == pytest.approx(expect, rel=0.03)


def test_digit_checker_reads_real_digits_and_rejects_noise():
    te = Digits("test", size=16)
    batch = {"label": paddle.to_tensor(te.labels)}
    acc = DigitAccuracy(size=16)
    acc.update(batch, {"samples": paddle.to_tensor(te.images[:, None])})
    r = acc.compute()
    assert r["digit_acc"] > 0.95 and r["digit_acc"] == pytest.approx(r["digit_acc_real"])
    acc.reset()
    acc.update({"label": paddle.to_tensor(np.roll(te.labels, 1))}, {"samples": paddle.to_tensor(te.images[:, None])})
    assert acc.compute()["digit_acc"] < 0.3
    fid = DigitFID(size=16)
    fid.update(batch, {"samples": te.images[:, None]})
    real = fid.compute()["fid"]
    fid.reset()
    noise = np.random.default_rng(0).uniform(-1, 1, te.images.shape)[:, None]
    fid.update(batch, {"samples": noise})
    assert fid.compute()["fid"] > 10 * real


def test_shapes_checker_on_ground_truth_and_on_wrong_captions():
    ds = ShapesWorld("test", size=32, num_samples=100)
    items = [ds[i] for i in range(100)]
    batch = {"caption": [it["caption"] for it in items], "boxes": np.stack([it["boxes"] for it in items])}
    imgs = {"samples": np.stack([it["image"] for it in items])}
    cap, lay = ShapesCaptionAccuracy(), ShapesLayoutAccuracy()
    cap.update(batch, imgs)
    lay.update(batch, imgs)
    c, l = cap.compute(), lay.compute()
    assert c["caption_acc"] >= 0.95 and c["color_acc"] >= 0.98 and c["relation_acc"] >= 0.9
    assert c["color_relation_acc"] >= 0.9
    assert l["layout_object_acc"] >= 0.95 and l["box_iou"] >= 0.75
    assert l["color_found"] >= 0.97 and l["box_iou_found"] >= 0.75
    # the right objects in the wrong places: found, but the IoU given found collapses
    lay.reset()
    lay.update({"boxes": batch["boxes"]}, {"samples": imgs["samples"][:, :, ::-1, ::-1]})
    moved = lay.compute()
    assert moved["color_found"] >= 0.97 and moved["box_iou_found"] < 0.5 * l["box_iou_found"]
    # a blank background satisfies nothing
    blank = np.zeros((1, 3, 32, 32), np.float32) - 0.4
    cap.reset()
    cap.update({"caption": ["a red circle left of a blue square"]}, {"samples": blank})
    assert cap.compute()["caption_acc"] == 0 and cap.compute()["color_acc"] == 0
    # the wrong relation is caught
    sc = render_scene(5, 64, min_objects=2)
    objs, rel = parse_caption(sc.caption)
    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
    wrong = f"a {objs[0][0]} {objs[0][1]} {flip} a {objs[1][0]} {objs[1][1]}"
    assert check_caption(sc.image, sc.caption)["all"] == 1 and check_caption(sc.image, wrong)["relation"] == 0
    assert check_caption(sc.image, wrong)["color_relation"] == 0
    # the relation read from the colours alone ignores a wrong shape; the full relation does not
    other = {"circle": "square", "square": "triangle", "triangle": "circle"}[objs[1][1]]
    wrong_shape = f"a {objs[0][0]} {objs[0][1]} {rel} a {objs[1][0]} {other}"
    r = check_caption(sc.image, wrong_shape)
    assert r["color_relation"] == 1 and r["relation"] == 0 and r["all"] == 0


def test_shapes_detector_shapes_and_boxes():
    sc = render_scene(3, 64, min_objects=2)
    dets = detect(sc.image)
    assert sorted((d.color, d.shape) for d in dets) == sorted((o.color, o.shape) for o in sc.objects)
    for o in sc.objects:
        d = next(d for d in dets if d.color == o.color)
        assert np.abs(np.asarray(d.box) - np.asarray(o.box)).max() < 2.5 / 64


def test_inpainting_error_inside_and_outside():
    ds = ShapesWorld("val", size=32, num_samples=4)
    items = [ds[i] for i in range(4)]
    img = np.stack([it["image"] for it in items])
    mask = np.stack([it["mask"] for it in items])
    batch = {"image": img, "mask": mask}
    m = InpaintingError()
    m.update(batch, {"samples": img + 0.2 * mask})
    r = m.compute()
    inside = np.broadcast_to(mask > 0.5, img.shape)
    expect = np.abs(np.clip((img + 0.2 * mask + 1) / 2, 0, 1) - (img + 1) / 2)[inside].mean()
    assert r["inpaint_mae_masked"] == pytest.approx(expect, rel=1e-5)
    assert r["inpaint_mae_outside"] == pytest.approx(0.0, abs=1e-7)
    assert 0 < r["telea_mae_masked"] < 0.5


def test_superres_quality_against_numpy_psnr():
    ds = SuperResPairs({"type": "ShapesWorld", "size": 32, "num_samples": 3}, factor=4)
    items = [ds[i] for i in range(3)]
    batch = {"image": np.stack([i["image"] for i in items]), "lr": np.stack([i["lr"] for i in items])}
    m = SuperResQuality()
    noisy = batch["image"] + np.random.default_rng(0).normal(0, 0.05, batch["image"].shape).astype(np.float32)
    m.update(batch, {"samples": noisy})
    r = m.compute()
    hr, g = (batch["image"] + 1) / 2, np.clip((noisy + 1) / 2, 0, 1)
    psnr = np.mean([10 * np.log10(1 / ((a - b) ** 2).mean()) for a, b in zip(hr, g)])
    assert r["psnr"] == pytest.approx(psnr, rel=1e-4)
    assert 0.5 < r["ssim"] < 1 and r["bicubic_psnr"] < r["psnr"]
    m.reset()
    m.update(batch, {"samples": batch["image"]})
    assert m.compute()["ssim"] == pytest.approx(1.0) and m.compute()["psnr"] == 100.0


def test_reconstruction_quality():
    x = np.zeros((2, 1, 8, 8), np.float32)
    m = ReconstructionQuality()
    m.update({"image": x}, {"samples": x + 0.2})  # 0.1 error on [0, 1] pixels -> 20 dB
    assert m.compute()["psnr"] == pytest.approx(20.0, abs=1e-3) and m.compute()["mae"] == pytest.approx(0.1)
    assert "caption_acc" not in m.compute()
    # with shapes-world captions: exact reconstructions are read like the originals, a flat
    # grey reconstruction is read as nothing
    ds = ShapesWorld("val", size=32, num_samples=6)
    batch = {"image": np.stack([ds[i]["image"] for i in range(6)]), "caption": [ds[i]["caption"] for i in range(6)]}
    m = ReconstructionQuality()
    m.update(batch, {"samples": batch["image"].copy()})
    r = m.compute()
    assert r["caption_acc"] == r["caption_acc_original"] > 0.8
    m = ReconstructionQuality()
    m.update(batch, {"samples": np.zeros_like(batch["image"])})
    assert m.compute()["caption_acc"] == 0.0 and m.compute()["caption_acc_original"] > 0.8
    # free-text captions (a user's own data) are not shapes-world captions: no readability score
    m = ReconstructionQuality()
    m.update(dict(batch, caption=["a photo of my cat"] * 6), {"samples": batch["image"].copy()})
    assert "caption_acc" not in m.compute() and m.compute()["psnr"] > 90
