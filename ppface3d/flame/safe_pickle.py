"""Restricted loading of FLAME pickles and pickled ``.npy`` files, without chumpy or torch.

A pickle can run arbitrary code, so FLAME files are never given to :func:`pickle.load`.
:class:`RestrictedUnpickler` admits only what array files contain:

* NumPy arrays, dtypes and scalars (``numpy.core.multiarray._reconstruct`` and friends);
* SciPy sparse matrices (``csc``/``csr``/``coo``), rebuilt from their arrays;
* chumpy ``Ch`` objects (FLAME 2020 pickles), mapped to their value ``x`` as a NumPy array;
* torch tensors pickled with :mod:`pickle` (DECA's ``landmark_embedding.npy``), whose
  storage bytes are parsed here and mapped to NumPy arrays;
* plain containers (dict, list, tuple, set, ``collections.OrderedDict``).

Any other global a pickle asks for is refused with :class:`UnsafePickleError`, before it is
imported or called.

    data = load_pickle("generic_model.pkl")      # dict of numpy arrays (and scipy sparse)
    emb = load_npy("landmark_embedding.npy")     # object arrays unpickled the same way
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import re
import struct
from collections import OrderedDict
from typing import Any

import numpy as np

from ppengine.errors import InputError

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load_pickle", "load_npy", "loads"]


class UnsafePickleError(InputError):
    """A pickle asked for something other than array types; it was not loaded."""


# --------------------------------------------------------------------------- stand-ins
class _Stub:
    """Records what a pickle builds for a foreign class, without importing that class."""

    kind = "object"
    cls_name = ""
    args = ()
    state = None  # protocol 2 builds with cls.__new__ (no __init__), then __setstate__

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = state[0] if state[0] is not None else state[1]  # (dict, slotstate)
        self.state = state

    # pickle's BUILD uses __setstate__; for protocol 0/1 dict states it may also set __dict__.


class _ChumpyStub(_Stub):
    kind = "chumpy"


class _SparseStub(_Stub):
    kind = "sparse"


def _make_stub(base, module, name):
    return type(name, (base,), {"cls_name": f"{module}.{name}"})


_SPARSE_RE = re.compile(r"^(csc|csr|coo)_(matrix|array)$")

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _TorchStorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """torch._utils._rebuild_tensor(_v2) -> a NumPy array (copy) viewing ``storage``."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("torch tensor without a readable storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    n = int(np.prod(size)) if size else 1
    if n == 0:
        return np.zeros(size, dtype=storage.dtype)
    last = int(storage_offset) + sum((s - 1) * st for s, st in zip(size, stride))
    if storage_offset < 0 or last >= storage.size or min(stride, default=0) < 0:
        raise pickle.UnpicklingError("torch tensor view lies outside its storage")
    base = storage[int(storage_offset):]
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(base, shape=size, strides=tuple(s * item for s in stride))
    return np.array(view, copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


def _safe_reconstructor(cls, base, state):
    """copyreg._reconstructor, allowed only to build our stand-ins (protocol 0/1 pickles)."""
    if isinstance(cls, type) and issubclass(cls, _Stub):
        return cls()
    raise UnsafePickleError(f"refused to load: copyreg._reconstructor may only rebuild array types, not {cls!r}")


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """_codecs.encode, used by protocol-2 pickles to carry bytes as latin-1 text."""
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode called with non-text arguments")
    return obj.encode(encoding, errors)


def _numpy_globals():
    import numpy.core.multiarray as ma  # numpy 1.x path (numpy 2 keeps it as an alias)

    table = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = ma._reconstruct
        table[(mod, "scalar")] = ma.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = _frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    return table


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


_BUILTINS = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "object"): object,
    ("collections", "OrderedDict"): OrderedDict,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("_codecs", "encode"): _safe_codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only arrays and containers (see the module docstring).

    ``source`` is used in error messages (the file name).
    """

    def __init__(self, file, source: str = "<bytes>"):
        super().__init__(file, encoding="latin1", fix_imports=True)
        self.source = source
        self._numpy = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (copy_reg, __builtin__, ...), as pickle's own fix_imports does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in self._numpy:
            return self._numpy[key]
        if key in _BUILTINS:
            return _BUILTINS[key]
        if module == "chumpy" or module.startswith("chumpy."):
            return _make_stub(_ChumpyStub, module, name)
        if module.startswith("scipy.sparse") and _SPARSE_RE.match(name):
            return _make_stub(_SparseStub, module, name)
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch.storage" and name == "_load_from_bytes":
            return lambda b: _load_torch_legacy_storage(b, self.source)
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _TorchStorageType(name)
        raise UnsafePickleError(
            f"{self.source}: refused to load: the pickle asks for '{module}.{name}', which is not "
            "an array type. FLAME model and landmark files contain only NumPy / SciPy sparse "
            "arrays (chumpy arrays and torch tensors are converted); a pickle can run code, so "
            "anything else is refused. If this is a genuine FLAME file, re-save its arrays with "
            "plain NumPy (np.savez) and load that, or get a fresh copy from https://flame.is.tue.mpg.de"
        )


def _load_torch_legacy_storage(data: bytes, source: str) -> np.ndarray:
    """Parse torch's legacy (non-zip) serialization of one storage (torch.storage._load_from_bytes)."""
    f = io.BytesIO(data)

    def unp():
        return RestrictedUnpickler(f, source).load()

    try:
        magic = unp()
        if magic != _TORCH_LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a legacy torch serialization")
        unp()  # protocol version
        unp()  # sys info
        records = {}

        def persistent_load(pid):
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            stype, key, _loc, numel = pid[1], pid[2], pid[3], pid[4]
            view = pid[5] if len(pid) > 5 else None
            if not isinstance(stype, _TorchStorageType):
                raise pickle.UnpicklingError("unknown torch storage type")
            records.setdefault(key, [stype, int(numel), None])
            return ("__storage__", key, view)

        up = RestrictedUnpickler(f, source)
        up.persistent_load = persistent_load
        main = up.load()
        keys = unp()
        for key in keys:
            stype, _numel, _ = records[key]
            (n,) = struct.unpack("<q", f.read(8))
            raw = f.read(n * stype.dtype.itemsize)
            if len(raw) != n * stype.dtype.itemsize:
                raise pickle.UnpicklingError("truncated torch storage")
            records[key][2] = np.frombuffer(raw, dtype=stype.dtype.newbyteorder("<")).astype(stype.dtype)
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - turned into a clear error below
        raise pickle.UnpicklingError(f"could not read a pickled torch tensor ({e})") from e
    if not (isinstance(main, tuple) and main and main[0] == "__storage__"):
        raise pickle.UnpicklingError("pickled torch storage has an unexpected layout")
    arr = records[main[1]][2]
    if main[2] is not None:
        off, size = int(main[2][1]), int(main[2][2])
        arr = arr[off:off + size]
    return arr


# --------------------------------------------------------------------------- conversion
def _to_plain(obj, source: str, path: str = ""):
    """Replace stand-ins by NumPy arrays / scipy sparse matrices, recursively."""
    if isinstance(obj, _ChumpyStub):
        st = obj.state if isinstance(obj.state, dict) else {}
        x = st.get("x") if isinstance(st, dict) else None
        if x is None:
            raise InputError(
                f"{source}: entry {path or '(root)'} is a chumpy expression ({obj.cls_name}) rather "
                "than a stored array; it cannot be evaluated without chumpy. Convert it once with "
                "chumpy installed (np.array(value)) and save the arrays with np.savez."
            )
        return np.asarray(_to_plain(x, source, path))
    if isinstance(obj, _SparseStub):
        return _sparse_from_state(obj, source, path)
    if isinstance(obj, dict):
        return type(obj)((k, _to_plain(v, source, f"{path}[{k!r}]")) for k, v in obj.items()) \
            if isinstance(obj, OrderedDict) else {k: _to_plain(v, source, f"{path}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v, source, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_to_plain(v, source, f"{path}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        out = np.empty(obj.shape, dtype=object)
        for idx in np.ndindex(obj.shape):
            out[idx] = _to_plain(obj[idx], source, path)
        return out
    if isinstance(obj, _TorchStorageType):
        raise InputError(f"{source}: entry {path} is a bare torch storage type, not an array")
    return obj


def _sparse_from_state(obj: _SparseStub, source: str, path: str):
    import scipy.sparse as sp

    st = obj.state if isinstance(obj.state, dict) else {}
    st = {k: _to_plain(v, source, path) for k, v in st.items()}
    shape = st.get("_shape", st.get("shape"))
    fmt = obj.cls_name.rsplit(".", 1)[-1][:3]
    try:
        shape = tuple(int(s) for s in shape)
        if fmt in ("csc", "csr"):
            cls = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
            return cls((np.asarray(st["data"]), np.asarray(st["indices"]), np.asarray(st["indptr"])), shape=shape)
        row = st.get("row", st.get("coords", [None, None])[0] if "coords" in st else None)
        col = st.get("col", st.get("coords", [None, None])[1] if "coords" in st else None)
        return sp.coo_matrix((np.asarray(st["data"]), (np.asarray(row), np.asarray(col))), shape=shape)
    except Exception as e:  # noqa: BLE001
        raise InputError(
            f"{source}: entry {path or '(root)'} is a scipy sparse matrix ({obj.cls_name}) that could "
            f"not be rebuilt from its arrays ({e})."
        ) from e


# --------------------------------------------------------------------------- public API
def loads(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`, mapping stand-ins to arrays."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError as e:
        if str(e).startswith(source):
            raise
        raise UnsafePickleError(f"{source}: {e}") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{source}: not a readable pickle ({type(e).__name__}: {e}). "
                         "The file is corrupt or truncated; download it again.") from e
    return _to_plain(obj, source)


def load_pickle(path: str):
    """Read a pickle file safely (see the module docstring). Raises InputError if unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        data = f.read()
    return loads(data, source=path)


def load_npy(path: str):
    """Read a ``.npy`` file; object arrays (pickled dicts) go through the restricted unpickler.

    A 0-d object array holding a dict (``np.save(path, dict)``) is returned as that dict.
    """
    import numpy.lib.format as fmt

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            payload = f.read()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not a readable .npy file ({type(e).__name__}: {e}). "
                         "The file is corrupt or truncated; download it again.") from e
    arr = loads(payload, source=path)
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == ():
        return arr[()]
    return arr
