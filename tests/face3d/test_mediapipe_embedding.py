"""The mediapipe-to-FLAME embedding: where mediapipe puts its 468 points on the model in use."""
import os
import shutil

import numpy as np
import paddle
import pytest

import ppface3d  # noqa: F401


@pytest.fixture(scope="module")
def face():
    from ppface3d.face_model import FaceModel

    return FaceModel(n_shape=20, n_exp=10, n_tex=10, image_size=256)


def test_face_oval_is_mediapipes():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    from ppface3d.flame.mediapipe_embedding import FACE_OVAL

    assert set(FACE_OVAL.tolist()) == {i for e in FACEMESH_FACE_OVAL for i in e}


def test_embedding_matches_detections_on_new_renders(face):
    """Projected through the model, the embedded points land where mediapipe detects them on
    renders the embedding was not made from (other shapes, poses, lights), and the 51 inner
    anchors are the model's own landmarks."""
    from ppface3d.data.preprocess import MEDIAPIPE_TO_68, FacePreprocessor
    from ppface3d.flame.mediapipe_embedding import mediapipe_embedding

    emb = mediapipe_embedding(face)
    assert emb.faces_idx.shape == (468,) and np.allclose(emb.bary.sum(1), 1, atol=1e-5)
    assert emb.weight.sum() >= 400
    F = face.flame.faces
    # anchors: the model's static landmark embedding, except where it sits on the other lip
    vid = F[emb.faces_idx[MEDIAPIPE_TO_68[17:]]]
    same = (vid == face.flame.lmk_static_idx.numpy()).all(1)
    assert same.sum() >= 45
    np.testing.assert_allclose(emb.bary[MEDIAPIPE_TO_68[17:]][same], face.flame.lmk_static_bary.numpy()[same], atol=1e-6)
    pre = FacePreprocessor()
    errs = []
    # independent check: detections on fresh renders vs the embedded points projected there
    from scipy.spatial.transform import Rotation

    from ppface3d.face_model import sh_ambient
    from ppface3d.flame.mediapipe_embedding import feature_colors
    from ppface3d.render import ndc_to_pixels

    rng = np.random.default_rng(7)
    face.flame.set_dense_landmarks(emb.faces_idx, emb.bary)
    t = paddle.to_tensor
    for k in range(3):
        pose = np.zeros((1, 6), np.float32)
        pose[0, :3] = Rotation.from_euler("YX", [rng.uniform(-15, 15), rng.uniform(-8, 8)], degrees=True).as_rotvec()
        pose[0, 3] = 0.1
        shape = t(rng.normal(size=(1, 20)).astype(np.float32))
        with paddle.no_grad():
            dec = face.decode({"shape": shape, "pose": t(pose)})
            cam = face.framing_camera(dec["landmarks3d"].numpy()[0])
            dec = face.place(dec, t(cam[None]))
            light = sh_ambient(0.75)
            light[3] = 0.35
            r = face.renderer(dec["vertices"], face.camera(dec["cam"]), lights=t(light[None]),
                              vertex_colors=t(feature_colors(face.flame)[None]), background=paddle.full([1, 3, 256, 256], 0.3))
            fo = face.flame_forward({"shape": shape, "pose": t(pose)}, landmarks_only=True)
            proj = ndc_to_pixels(face.camera(dec["cam"]).project(fo.landmarks_dense).numpy()[0], 256)
        img = (np.clip(r["images"].numpy()[0].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
        box = pre.detect_boxes(img)[0][0]
        det = pre.mesh_landmarks(img, box)
        io = np.linalg.norm(det[33] - det[263])  # outer eye corners
        w = emb.weight > 0
        errs.append(np.median(np.linalg.norm(proj[w] - det[w], axis=1)) / io)
    assert np.mean(errs) < 0.07, errs  # the median point within 7% of the eye distance (measured: 4-5.5%)


def test_cached_per_model_file(face, tmp_path, monkeypatch):
    """A FLAME file given by path gets its own embedding (keyed on the file's bytes), cached."""
    from ppface3d.face_model import FaceModel
    from ppface3d.flame import mediapipe_embedding as me

    src = os.path.dirname(face.flame.model_path)
    dst = tmp_path / "flame"
    shutil.copytree(src, dst)
    monkeypatch.setenv("PPFACE3D_CACHE", str(tmp_path / "cache"))
    other = FaceModel(n_shape=10, n_exp=5, n_tex=5, image_size=256, flame_model_path=str(dst / "generic_model.pkl"))
    path = me.cache_path(other.flame)
    assert not os.path.exists(path)
    a = me.mediapipe_embedding(other, views=6)
    assert os.path.isfile(path)
    b = me.MediapipeEmbedding.load(path)
    np.testing.assert_array_equal(a.faces_idx, b.faces_idx)
    np.testing.assert_array_equal(a.bary, b.bary)
    with open(path, "wb") as fh:
        fh.write(b"not an npz")
    from ppengine.errors import InputError

    with pytest.raises(InputError, match="not a mediapipe embedding"):
        me.MediapipeEmbedding.load(path)
