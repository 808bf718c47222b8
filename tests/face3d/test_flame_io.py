"""Loading FLAME files without chumpy/torch: chumpy-like objects, scipy sparse, torch tensors, bad files."""
import io
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from ppengine.errors import InputError
from ppface3d.flame import (
    FLAME,
    UnsafePickleError,
    build_generated_model,
    load_flame_model,
    load_landmark_embedding,
    load_npy,
    load_pickle,
)


@pytest.fixture(scope="module")
def generated():
    model, deca, static, dynamic = build_generated_model()
    return model, deca, static, dynamic


class _FakeModule:
    """Registers a throw-away module (e.g. 'chumpy.ch') so pickle can write its classes by name."""

    def __init__(self, name, **attrs):
        self.name = name
        self.mod = types.ModuleType(name)
        for k, v in attrs.items():
            v.__module__ = name
            setattr(self.mod, k, v)

    def __enter__(self):
        self.saved = {n: sys.modules.get(n) for n in (self.name, self.name.split(".")[0])}
        sys.modules[self.name] = self.mod
        sys.modules.setdefault(self.name.split(".")[0], types.ModuleType(self.name.split(".")[0]))
        return self.mod

    def __exit__(self, *exc):
        for n, m in self.saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class Ch:  # shaped like chumpy.ch.Ch: state is a dict holding the value as 'x'
    def __init__(self, x):
        self.x = np.asarray(x)
        self._dirty_vars = set()
        self._itr = None


def _chumpy_model(model, protocol):
    """A FLAME 2020-style pickle: shapedirs/posedirs/v_template as chumpy Ch objects."""
    with _FakeModule("chumpy.ch", Ch=Ch):
        d = dict(model)
        for k in ("shapedirs", "posedirs", "v_template"):
            d[k] = sys.modules["chumpy.ch"].Ch(model[k])
        return pickle.dumps(d, protocol=protocol)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_chumpy_and_sparse_model(tmp_path, generated, protocol):
    model = generated[0]
    p = tmp_path / "generic_model.pkl"
    p.write_bytes(_chumpy_model(model, protocol))
    assert "chumpy" not in sys.modules  # the loader must not need it
    m = load_flame_model(str(p))
    np.testing.assert_array_equal(m["shapedirs"], model["shapedirs"])
    np.testing.assert_array_equal(m["v_template"], model["v_template"])
    np.testing.assert_allclose(m["J_regressor"], model["J_regressor"].toarray())
    assert m["parents"].tolist() == [-1, 0, 1, 1, 1]


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_other_sparse_formats(tmp_path, generated, fmt):
    model = dict(generated[0])
    model["J_regressor"] = getattr(sp, f"{fmt}_matrix")(model["J_regressor"].toarray())
    p = tmp_path / "m.pkl"
    p.write_bytes(pickle.dumps(model, protocol=2))
    np.testing.assert_allclose(load_flame_model(str(p))["J_regressor"], generated[0]["J_regressor"].toarray())


def test_torch_pickled_landmark_embedding(tmp_path, generated):
    """DECA's landmark_embedding.npy stores the contour table as torch tensors (np.save of a dict)."""
    torch = pytest.importorskip("torch")
    deca = generated[1]
    d = dict(deca)
    d["dynamic_lmk_faces_idx"] = torch.tensor(deca["dynamic_lmk_faces_idx"])          # int64
    d["dynamic_lmk_bary_coords"] = torch.tensor(deca["dynamic_lmk_bary_coords"]).float()  # float32
    big = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    d["strided_view"] = big[1:, ::2].t()  # non-contiguous view into a larger storage
    d["param"] = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    p = tmp_path / "landmark_embedding.npy"
    np.save(p, d, allow_pickle=True)
    loaded = load_npy(str(p))
    np.testing.assert_array_equal(loaded["dynamic_lmk_faces_idx"], deca["dynamic_lmk_faces_idx"])
    assert loaded["dynamic_lmk_bary_coords"].dtype == np.float32
    np.testing.assert_allclose(loaded["dynamic_lmk_bary_coords"], deca["dynamic_lmk_bary_coords"], atol=1e-7)
    np.testing.assert_array_equal(loaded["strided_view"], big[1:, ::2].t().numpy())
    np.testing.assert_array_equal(loaded["param"], np.ones(3, np.float16))
    emb = load_landmark_embedding(str(p))
    assert emb.convention == "deca" and emb.dynamic_faces.shape == (79, 17) and emb.full_faces.shape == (68,)


def _write_model_folder(tmp_path, generated):
    model, deca, static, dynamic = generated
    (tmp_path / "generic_model.pkl").write_bytes(pickle.dumps(model, protocol=2))
    np.save(tmp_path / "flame_dynamic_embedding.npy", dynamic, allow_pickle=True)
    return tmp_path


def test_ringnet_static_68_and_dynamic(tmp_path, generated):
    model, deca, static, dynamic = generated
    _write_model_folder(tmp_path, generated)
    full = {"lmk_face_idx": deca["full_lmk_faces_idx"][0], "lmk_b_coords": deca["full_lmk_bary_coords"][0]}
    (tmp_path / "flame_static_embedding_68.pkl").write_bytes(pickle.dumps(full, protocol=2))
    emb = load_landmark_embedding(str(tmp_path / "flame_static_embedding_68.pkl"))
    assert emb.convention == "smplx" and emb.full_faces.shape == (68,) and emb.static_faces.shape == (51,)
    np.testing.assert_array_equal(emb.dynamic_faces, dynamic["lmk_face_idx"])
    flame = FLAME.from_files(str(tmp_path / "generic_model.pkl"), str(tmp_path / "flame_static_embedding_68.pkl"))
    assert flame.has_full68 and flame.has_contour and flame.uv_coords is not None


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused(tmp_path, generated):
    marker = tmp_path / "pwned"
    evil = _Evil(str(marker))
    model = dict(generated[0])
    model["shapedirs"] = evil
    cases = {
        "model.pkl": pickle.dumps(model, protocol=2),
        "eval.pkl": pickle.dumps({"x": types.SimpleNamespace(a=1)}, protocol=2),
        "proto0.pkl": pickle.dumps({"v": evil}, protocol=0),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnsafePickleError, match="refused") as ei:
            load_flame_model(str(tmp_path / name))
        assert name in str(ei.value)
    # inside the object payload of a .npy
    np.save(tmp_path / "evil.npy", {"static_lmk_faces_idx": evil}, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        load_landmark_embedding(str(tmp_path / "evil.npy"))
    # hidden in the bytes of a 'torch storage'
    inner = pickle.dumps(evil, protocol=2)
    payload = pickle.dumps({"t": _TorchLoadFromBytes(inner)}, protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        load_pickle_bytes(tmp_path, payload)
    # copyreg._reconstructor may only rebuild array stand-ins
    rec = b"ccopyreg\n_reconstructor\n(cbuiltins\ndict\ncbuiltins\nobject\nNtR."
    with pytest.raises(UnsafePickleError, match="x.pkl: refused"):
        load_pickle_bytes(tmp_path, rec)
    assert not marker.exists()


class _TorchLoadFromBytes:
    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        import torch.storage  # noqa: F401  (only to name the global)

        return (_named("torch.storage", "_load_from_bytes"), (self.data,))


def _named(module, name):
    mod = sys.modules.get(module)
    fn = getattr(mod, name, None) if mod is not None else None
    if fn is None:
        pytest.skip(f"{module}.{name} not available")
    return fn


def load_pickle_bytes(tmp_path, data):
    p = tmp_path / "x.pkl"
    p.write_bytes(data)
    return load_pickle(str(p))


def test_bad_files_give_clear_errors(tmp_path, generated):
    model = generated[0]
    with pytest.raises(InputError, match=r"not found.*flame\.is\.tue\.mpg\.de"):
        load_flame_model(str(tmp_path / "generic_model.pkl"))
    good = pickle.dumps(model, protocol=2)
    (tmp_path / "trunc.pkl").write_bytes(good[: len(good) // 3])
    with pytest.raises(InputError, match="trunc.pkl.*corrupt or truncated"):
        load_flame_model(str(tmp_path / "trunc.pkl"))
    bad = dict(model)
    bad["posedirs"] = model["posedirs"][:, :, :30]
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(InputError, match=r"bad.pkl.*'posedirs' should have shape \(\d+, 3, 36\)"):
        load_flame_model(str(tmp_path / "bad.pkl"))
    miss = {k: v for k, v in model.items() if k != "weights"}
    (tmp_path / "miss.pkl").write_bytes(pickle.dumps(miss, protocol=2))
    with pytest.raises(InputError, match=r"missing key\(s\) \['weights'\]"):
        load_flame_model(str(tmp_path / "miss.pkl"))
    (tmp_path / "lmk.pkl").write_bytes(pickle.dumps({"foo": np.zeros(3)}, protocol=2))
    with pytest.raises(InputError, match="neither DECA's landmark_embedding.npy"):
        load_landmark_embedding(str(tmp_path / "lmk.pkl"))
    # an embedding of another topology
    d = dict(generated[1])
    d["static_lmk_faces_idx"] = d["static_lmk_faces_idx"] + 10 ** 6
    np.save(tmp_path / "landmark_embedding.npy", d, allow_pickle=True)
    (tmp_path / "generic_model.pkl").write_bytes(good)
    with pytest.raises(InputError, match="another mesh topology"):
        FLAME.from_files(str(tmp_path / "generic_model.pkl"), str(tmp_path / "landmark_embedding.npy"))
    with pytest.raises(InputError, match="model_path is None"):
        FLAME.from_files(None)


def test_safe_loader_matches_pickle_on_plain_data(generated):
    model = generated[0]
    buf = io.BytesIO()
    pickle.dump(model, buf, protocol=5)
    from ppface3d.flame.safe_pickle import loads

    got = loads(buf.getvalue())
    for k, v in model.items():
        if sp.issparse(v):
            np.testing.assert_array_equal(got[k].toarray(), v.toarray())
        elif isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got[k], v)
        else:
            assert got[k] == v
