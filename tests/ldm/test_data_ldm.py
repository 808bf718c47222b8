"""ppldm datasets: digits, shapes world (captions/boxes/masks), LR/HR pairs, image folder + JSONL."""
import json

import numpy as np
import pytest
from PIL import Image

from ppengine.errors import ConfigError, InputError
from ppldm.data import Digits, ImageFolderJSONL, ShapesWorld, SuperResPairs, class_name, downscale
from ppldm.data.shapes import COLORS, render_scene


def test_digits_splits_labels_and_range():
    tr, te = Digits("train", size=16), Digits("test", size=16)
    assert len(tr) + len(te) == 1797 and 350 <= len(te) <= 370
    it = tr[0]
    assert it["image"].shape == (1, 16, 16) and it["image"].dtype == np.float32
    assert -1 <= it["image"].min() and it["image"].max() <= 1
    assert sorted(set(tr.labels.tolist())) == list(range(10))
    # the held-out split is disjoint from train
    a = {x.tobytes() for x in tr.images}
    assert sum(x.tobytes() in a for x in te.images) < 5
    with pytest.raises(ConfigError):
        Digits("nope")


def test_shapes_world_deterministic_and_consistent():
    ds = ShapesWorld("train", size=32, num_samples=50, seed=3)
    a, b = ds[7], ShapesWorld("train", size=32, num_samples=50, seed=3)[7]
    assert np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert not np.array_equal(ds[7]["image"], ShapesWorld("val", size=32, num_samples=50, seed=3)[7]["image"])
    for i in range(20):
        it = ds[i]
        boxes = it["boxes"][it["boxes"][:, 0] >= 0]
        assert 1 <= len(boxes) <= 2
        words = it["caption"].split()
        c0, s0 = class_name(boxes[0, 0])
        assert words[1:3] == [c0, s0]
        img = (it["image"].transpose(1, 2, 0) + 1) / 2
        # the centre pixel of each object's box has the object's colour
        for cls, x0, y0, x1, y1 in boxes:
            col, shape = class_name(cls)
            cy, cx = int((y0 + y1) / 2 * 32), int((x0 + x1) / 2 * 32)
            if shape == "triangle":
                cy = int((y0 + 0.75 * (y1 - y0)) * 32)
            assert np.abs(img[cy, cx] - np.asarray(COLORS[col])).max() < 0.05
        if len(boxes) == 2:
            (xa, ya), (xb, yb) = ((boxes[0, 1] + boxes[0, 3]) / 2, (boxes[0, 2] + boxes[0, 4]) / 2), \
                                 ((boxes[1, 1] + boxes[1, 3]) / 2, (boxes[1, 2] + boxes[1, 4]) / 2)
            rel = " ".join(words[3:-3])
            expect = ("left of" if xa < xb else "right of") if abs(xa - xb) >= abs(ya - yb) else \
                     ("above" if ya < yb else "below")
            assert rel == expect
        m = it["mask"]
        assert m.shape == (1, 32, 32) and 0.05 < m.mean() < 0.3
        assert np.all(it["masked_image"][:, m[0] > 0] == 0)


def test_swap_captions_names_the_same_scene_from_either_object():
    from ppldm.metrics.shapes import check_caption, parse_caption

    plain = ShapesWorld("train", size=32, num_samples=40, seed=3)
    swap = ShapesWorld("train", size=32, num_samples=40, seed=3, swap_captions=True)
    seen_swapped = ok_orig = ok_swap = 0
    for i in range(40):
        p = plain[i]
        caps = {swap[i]["caption"] for _ in range(12)}
        assert np.array_equal(swap[i]["image"], p["image"]) and np.array_equal(swap[i]["boxes"], p["boxes"])
        objs, rel = parse_caption(p["caption"])
        if rel is None:
            assert caps == {p["caption"]}
            continue
        assert p["caption"] in caps and len(caps) == 2  # both readings occur
        (other,) = caps - {p["caption"]}
        objs2, rel2 = parse_caption(other)
        inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        assert objs2 == objs[::-1] and rel2 == inverse[rel]
        # the independent checker accepts both captions on the (ground-truth) image
        img = (p["image"].transpose(1, 2, 0) + 1) / 2
        ok_orig += check_caption(img, p["caption"])["all"]
        ok_swap += check_caption(img, other)["all"]
        seen_swapped += 1
    assert seen_swapped >= 10 and ok_swap >= 0.9 * seen_swapped and ok_orig >= 0.9 * seen_swapped


def test_scene_masks_cover_objects():
    sc = render_scene(11, size=48)
    for o, m in zip(sc.objects, sc.masks):
        x0, y0, x1, y1 = (np.asarray(o.box) * 48).astype(int)
        area = m.sum() / ((x1 - x0) * (y1 - y0))
        expect = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[o.shape]
        assert abs(area - expect) < 0.12


def test_superres_pairs_area_downscale():
    ds = SuperResPairs({"type": "ShapesWorld", "size": 32, "num_samples": 4}, factor=4)
    it = ds[1]
    assert it["lr"].shape == (3, 8, 8)
    np.testing.assert_allclose(it["lr"][:, 2, 3], it["image"][:, 8:12, 12:16].mean(axis=(1, 2)), atol=1e-6)
    with pytest.raises(ConfigError):
        downscale(np.zeros((3, 10, 10), np.float32), 4)


def test_image_folder_reports_and_skips_bad_records(tmp_path, caplog):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "gray.jpg")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    lines = [
        json.dumps({"file": "ok.png", "caption": "noise", "label": 2, "boxes": [[1, 0.1, 0.1, 0.5, 0.6]]}),
        "{not json",
        json.dumps({"file": "missing.png"}),
        json.dumps({"file": "corrupt.png", "caption": "x"}),
        json.dumps({"file": "gray.jpg", "label": "seven"}),
        json.dumps({"file": "gray.jpg", "boxes": [[0, 0.5, 0.5, 0.2, 0.9]]}),
        json.dumps({"caption": "no file"}),
        json.dumps({"file": "gray.jpg"}),
    ]
    (tmp_path / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        ds = ImageFolderJSONL(str(tmp_path), size=16, max_objects=4)
    assert len(ds) == 2
    assert [n for n, _ in ds.skipped] == [2, 3, 4, 5, 6, 7]
    assert "6 record(s) skipped" in caplog.text
    a, b = ds[0], ds[1]
    assert a["image"].shape == (3, 16, 16) and a["label"] == 2 and a["caption"] == "noise"
    assert a["boxes"][0].tolist() == pytest.approx([1, 0.1, 0.1, 0.5, 0.6]) and a["boxes"][1, 0] == -1
    assert b["label"] == -1 and b["caption"] == "" and np.allclose(b["image"][0], b["image"][1])
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(InputError, match="no usable record"):
        ImageFolderJSONL(str(tmp_path), annotations="bad.jsonl")
    with pytest.raises(InputError, match="does not exist"):
        ImageFolderJSONL(str(tmp_path / "nope"))


def test_image_folder_grounding_phrases(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    cat, dog = [0.0, 0.25, 0.5, 0.75], [0.5, 0.0, 1.0, 0.5]
    lines = [
        json.dumps({"file": "a.png", "caption": "a Cat left of a dog",
                    "phrases": [{"text": "cat", "box": cat}, {"text": "dog", "box": dog}]}),
        json.dumps({"file": "a.png", "caption": "a cat", "phrases": [{"text": "dog", "box": dog}]}),
        json.dumps({"file": "a.png", "caption": "a cat", "phrases": [{"text": "cat", "box": [0.5, 0.5, 0.2]}]}),
        json.dumps({"file": "a.png", "caption": "a cat", "phrases": [{"text": "a|cat", "box": cat}]}),
        json.dumps({"file": "a.png", "caption": "a cat"}),
    ]
    (tmp_path / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    ds = ImageFolderJSONL(str(tmp_path), size=16, max_objects=2, grounding=True)
    assert len(ds) == 2 and [n for n, _ in ds.skipped] == [2, 3, 4]
    assert "does not occur in the caption" in ds.skipped[0][1] and "box" in ds.skipped[1][1]
    a = ds[0]
    assert a["phrases"] == "cat|dog" and a["phrase_masks"].shape == (2, 16, 16)
    assert a["phrase_masks"][0, 4:12, 0:8].min() == 1 and a["phrase_masks"][0].sum() == 64
    assert a["phrase_masks"][1, 0:8, 8:16].min() == 1 and a["phrase_masks"][1].sum() == 64
    b = ds[1]
    assert b["phrases"] == "" and b["phrase_masks"].sum() == 0
    assert "phrases" not in ImageFolderJSONL(str(tmp_path), size=16, max_objects=2)[0]
