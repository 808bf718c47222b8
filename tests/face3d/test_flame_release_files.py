"""FLAME's released files through ppengine.safe_load: FLAME 2020 generic/male/female pickles
(chumpy arrays, scipy csc J_regressor, Python-2 names), FLAME 2023-style plain pickles, DECA's
torch-pickled landmark embedding, and the FLAME_texture.npz / FLAME_albedo_from_BFM.npz albedo
spaces (read with allow_pickle=False). The files are written here in those layouts from the
generated FLAME-format model; nothing of chumpy or torch is needed to read them."""
import os
import pickle
import sys
import types

import numpy as np
import paddle
import pytest
import scipy.sparse as sp

from ppengine.errors import InputError
from ppengine.safe_load import UnsafePickleError, load_pickle
from ppface3d.flame import FLAME, build_generated_model, load_flame_model


@pytest.fixture(scope="module")
def generated():
    return build_generated_model()


class Ch:
    """Shaped like chumpy.ch.Ch as FLAME 2020's pickles hold it: the value is the 'x' entry of its
    __dict__, beside chumpy's bookkeeping."""

    def __init__(self, x):
        self.x = np.asarray(x)
        self._dirty_vars = set()
        self._itr = None
        self._cache = {"r": None, "drs": {}}
        self._depends_on_deps = {}


def _flame2020_bytes(model):
    """A FLAME 2020 model pickle: the keys of generic_model.pkl (v_template, shapedirs, posedirs,
    weights and J as chumpy Ch; J_regressor scipy csc; kintree_table, f; bs_style, bs_type),
    written with Python-2 names (protocol 2, fix_imports), as the originals were."""
    mod = types.ModuleType("chumpy.ch")
    Ch.__module__ = "chumpy.ch"
    mod.Ch = Ch
    saved = {n: sys.modules.get(n) for n in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), mod
    try:
        jreg = sp.csc_matrix(model["J_regressor"])
        d = {"f": model["f"].astype(np.uint32), "J_regressor": jreg, "kintree_table": model["kintree_table"],
             "J": Ch(jreg @ model["v_template"]), "weights": Ch(model["weights"]),
             "posedirs": Ch(model["posedirs"]), "bs_type": "lrotmin", "v_template": Ch(model["v_template"]),
             "shapedirs": Ch(model["shapedirs"]), "bs_style": "lbs"}
        return pickle.dumps(d, protocol=2, fix_imports=True)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def _flame2023_bytes(model):
    """A FLAME 2023-style pickle: the same keys with plain NumPy arrays (no chumpy), extra entries."""
    d = {k: np.asarray(v.toarray() if sp.issparse(v) else v) for k, v in model.items() if k in
         ("v_template", "shapedirs", "posedirs", "weights", "kintree_table", "f")}
    d["J_regressor"] = sp.csc_matrix(model["J_regressor"])
    d.update(bs_style="lbs", bs_type="lrotmin", J=d["J_regressor"] @ d["v_template"])
    return pickle.dumps(d, protocol=4)


@pytest.mark.parametrize("name", ["generic_model.pkl", "male_model.pkl", "female_model.pkl", "flame2023.pkl"])
def test_flame_release_pickles(tmp_path, generated, name):
    model = generated[0]
    data = _flame2023_bytes(model) if "2023" in name else _flame2020_bytes(model)
    assert (b"chumpy" in data) != ("2023" in name)
    (tmp_path / name).write_bytes(data)
    assert "chumpy" not in sys.modules  # the loader must not need it
    m = load_flame_model(str(tmp_path / name))
    for k in ("v_template", "shapedirs", "posedirs", "weights"):
        np.testing.assert_array_equal(m[k], model[k])
    np.testing.assert_array_equal(m["J_regressor"], model["J_regressor"].toarray())
    np.testing.assert_array_equal(m["f"], model["f"])
    raw = load_pickle(str(tmp_path / name))
    assert raw["bs_style"] == "lbs" and sp.issparse(raw["J_regressor"])


def test_flame_forward_same_from_chumpy_and_plain_files(tmp_path, generated):
    model = generated[0]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "generic_model.pkl").write_bytes(_flame2020_bytes(model))
    (tmp_path / "b" / "generic_model.pkl").write_bytes(pickle.dumps(model, protocol=2))
    rng = np.random.RandomState(0)
    inputs = dict(shape=paddle.to_tensor(rng.randn(2, 300).astype("float32")),
                  expression=paddle.to_tensor(rng.randn(2, 100).astype("float32")),
                  global_pose=paddle.to_tensor(rng.randn(2, 3).astype("float32") * 0.2),
                  jaw_pose=paddle.to_tensor(np.abs(rng.randn(2, 3)).astype("float32") * 0.1))
    outs = [FLAME(str(tmp_path / d / "generic_model.pkl"), landmark_path=None)(**inputs).vertices.numpy()
            for d in ("a", "b")]
    assert np.abs(outs[0]).max() > 0.01
    np.testing.assert_array_equal(outs[0], outs[1])


def test_flame_pickle_with_a_payload_is_refused(tmp_path, generated):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    d = dict(generated[0], bs_style=Evil())
    (tmp_path / "generic_model.pkl").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UnsafePickleError, match="generic_model.pkl: refused to load.*system"):
        load_flame_model(str(tmp_path / "generic_model.pkl"))
    assert not (tmp_path / "pwned").exists()


def _texture_space(S=16, K=6, seed=0):
    rng = np.random.RandomState(seed)
    return rng.uniform(60, 200, (S, S, 3)).astype(np.float32), rng.randn(S, S, 3, K).astype(np.float32) * 5


def test_flame_texture_npz(tmp_path):
    """FLAME_texture.npz: mean (S, S, 3) and tex_dir (S, S, 3, K), BGR 0..255 (+ vt, ft)."""
    from ppface3d.flame.albedo import AlbedoModel, load_albedo_file

    mean, tex_dir = _texture_space()
    path = tmp_path / "FLAME_texture.npz"
    np.savez(path, mean=mean, tex_dir=tex_dir, vt=np.zeros((5, 2)), ft=np.zeros((3, 3), np.int64))
    m, basis = load_albedo_file(str(path), n_tex=4, uv_size=16)  # same size: no resampling
    np.testing.assert_allclose(m, mean[..., ::-1].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(basis, tex_dir[..., ::-1, :4].transpose(3, 2, 0, 1) / 255.0, rtol=1e-6, atol=1e-8)
    code = np.random.RandomState(1).randn(2, 4).astype("float32")
    albedo = AlbedoModel(n_tex=4, uv_size=16, path=str(path))(paddle.to_tensor(code)).numpy()
    ref = (mean[None, ..., ::-1] + np.einsum("hwck,bk->bhwc", tex_dir[..., ::-1, :4], code)) / 255.0
    np.testing.assert_allclose(albedo, np.clip(ref, 0, 1).transpose(0, 3, 1, 2), atol=1e-5)
    assert 0.2 < albedo.mean() < 0.8
    # DECA's BFM-derived albedo (flat MU / PC, BGR 0..1)
    np.savez(tmp_path / "FLAME_albedo_from_BFM.npz", MU=(mean / 255).reshape(1, -1),
             PC=(tex_dir / 255).reshape(-1, 6))
    m2, b2 = load_albedo_file(str(tmp_path / "FLAME_albedo_from_BFM.npz"), n_tex=4, uv_size=16)
    np.testing.assert_allclose(m2, m, rtol=1e-5)
    np.testing.assert_allclose(b2, basis, rtol=1e-5, atol=1e-8)


def test_texture_npz_with_pickled_objects_is_refused(tmp_path):
    """An .npz holding an object array would need pickle: read with allow_pickle=False, refused."""
    from ppface3d.flame.albedo import load_albedo_file

    mean, tex_dir = _texture_space()
    np.savez(tmp_path / "FLAME_texture.npz", mean=mean, tex_dir=np.array([tex_dir, "x"], dtype=object))
    with pytest.raises(InputError, match="FLAME_texture.npz"):
        load_albedo_file(str(tmp_path / "FLAME_texture.npz"), n_tex=4, uv_size=16)
