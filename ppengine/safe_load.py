"""The one allow-list unpickler: array pickles and PyTorch checkpoints, read without running code.

A pickle can run arbitrary code when it is loaded, so no file a user gives us goes to
:func:`pickle.load`. :class:`RestrictedUnpickler` looks every global a pickle asks for up in an
allow-list and refuses anything else *before* importing or calling it, with the name of what was
asked for (as PyTorch's ``torch.load(weights_only=True)`` does). What it admits:

* containers and numbers: dict, ``collections.OrderedDict`` (``defaultdict`` as a dict), list,
  tuple, set, frozenset, str, bytes, int, float, complex, bool, None, slice;
* NumPy arrays, dtypes and scalars;
* SciPy sparse matrices (csc/csr/coo) and chumpy ``Ch`` arrays (FLAME 2020 model pickles), as
  inert stand-ins turned into SciPy / NumPy arrays after loading;
* PyTorch tensors and parameters (``torch._utils._rebuild_tensor_v2/_v3``, ``_rebuild_parameter``,
  every dense storage type), rebuilt as NumPy arrays: strided / offset views through NumPy stride
  tricks (copied, so views sharing one storage come back as independent arrays), ``bfloat16`` as
  float32 (NumPy has no bfloat16), ``torch.Size`` as a tuple, ``torch.device`` as its string;
* Lightning ``hyper_parameters`` values: ``argparse.Namespace`` (-> dict), OmegaConf
  ``DictConfig`` / ``ListConfig`` (-> dict / list of their stored values, interpolations kept as
  their ``${...}`` text), ``pathlib`` paths (-> str), and type names such as ``typing.Any`` or
  ``hparams_type`` (-> the class name as a string).

Checkpoint containers read by :func:`load_torch_checkpoint`:

* ``torch.save`` zip files (PyTorch >= 1.6; ``archive/data.pkl`` + ``archive/data/<key>``, with
  the ``byteorder`` record honoured), whatever the extension: ``.pt``, ``.pth``, ``.bin``,
  ``.ckpt`` (Lightning), ``.tar`` (DECA's ``deca_model.tar`` and MICA's ``mica.tar`` are such
  zip files: DECA reads them with a plain ``torch.load``);
* the legacy stream (``_use_new_zipfile_serialization=False``: magic number, protocol,
  sys_info, the pickle, its storage keys, then the raw little-endian storages);
* the very old tar layout of PyTorch < 0.4 (``sys_info``, ``storages``, ``tensors``, ``pickle``
  members).

    from ppengine.safe_load import load_torch_checkpoint, load_pickle, load_npy
    ckpt = load_torch_checkpoint("deca_model.tar")    # {'E_flame': {name: np.ndarray}, ...}
    flame = load_pickle("generic_model.pkl")          # dict of NumPy / SciPy sparse arrays
    emb = load_npy("landmark_embedding.npy")          # object payloads unpickled the same way
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
from collections import OrderedDict
from typing import Any, Dict

import numpy as np

from .errors import InputError

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "loads", "load_pickle", "load_npy", "safe_pickle_load",
           "load_torch_checkpoint", "torch_state_dict", "TORCH_LEGACY_MAGIC"]

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(InputError):
    """A pickle asked for something outside the allow-list; it was not loaded and nothing ran."""


# --------------------------------------------------------------------------- inert stand-ins
class _Stub:
    """Records what a pickle builds for a foreign class, without importing that class."""

    kind = "object"
    cls_name = ""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = state[0] if state[0] is not None else state[1]  # (dict, slotstate)
        self.state = state


class _ChumpyStub(_Stub):
    kind = "chumpy"


class _SparseStub(_Stub):
    kind = "sparse"


class _NamespaceStub(_Stub):
    kind = "namespace"


class _OmegaStub(_Stub):
    kind = "omegaconf"


class _PathStub(_Stub):
    kind = "path"


class _DeviceStub(_Stub):
    kind = "device"


def _make_stub(base, module, name):
    return type(name, (base,), {"cls_name": f"{module}.{name}"})


class _TypeName(str):
    """A class a pickle names only as a value (``typing.Any``, ``hparams_type``): kept as its name."""


# --------------------------------------------------------------------------- torch storages / tensors
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
# dtypes pickled by name (torch.float32 ...) for _rebuild_tensor_v3 / hyper-parameters
_TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64", "float16": "float16",
    "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32",
    "uint64": "uint64", "bool": "bool", "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128",
    "cdouble": "complex128",
}
_TENSOR_TYPES = {"FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "LongTensor", "IntTensor",
                 "ShortTensor", "CharTensor", "ByteTensor", "BoolTensor", "Tensor"}


class _StorageType:
    """``torch.FloatStorage`` & co. as named in a pickle: only its element type is used."""

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


class _TorchDtype(str):
    """``torch.float32`` & co. named in a pickle (kept as the dtype name)."""


class _TensorType:
    """``torch.Tensor`` / ``torch.nn.Parameter`` / ``torch.FloatTensor`` named as a type."""

    def __init__(self, name):
        self.name = name


_ALLOWED_DTYPES = set(_STORAGE_DTYPES.values()) | set(_TORCH_DTYPES.values())


def _np_dtype(name) -> np.dtype:
    if not isinstance(name, str) or name not in _ALLOWED_DTYPES:  # a BUILD may have rewritten it
        raise pickle.UnpicklingError(f"unsupported tensor element type {name!r}")
    return np.dtype("uint16" if name == "bfloat16" else name)


def _bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


class _Storage:
    """One torch storage: its bytes as a 1-D NumPy array of its element type."""

    def __init__(self, data: np.ndarray, dtype_name: str):
        self.data = data
        self.dtype_name = dtype_name
        self.lent = False  # handed out once as a whole (no copy); later views copy


def _make_storage(raw: bytes, dtype_name: str, numel: int, big_endian: bool, what: str) -> _Storage:
    dt = _np_dtype(dtype_name)
    need = int(numel) * dt.itemsize
    if len(raw) < need:
        raise pickle.UnpicklingError(f"storage {what} is truncated ({len(raw)} of {need} bytes)")
    arr = np.frombuffer(raw, dtype=dt.newbyteorder(">" if big_endian else "<"), count=int(numel))
    return _Storage(arr.astype(dt, copy=True), dtype_name)


def _strided(storage: _Storage, offset, size, stride, dtype_name=None) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a torch tensor without a readable storage")
    data, name = storage.data, storage.dtype_name
    if data.dtype.hasobject:
        raise pickle.UnpicklingError("a torch storage of Python objects")
    if dtype_name is not None and dtype_name != name:  # an untyped (byte) storage seen as dtype_name
        dt = _np_dtype(dtype_name)
        usable = data.size - data.size % dt.itemsize
        data, name = data[:usable].view(dt), dtype_name
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(offset)
    if len(stride) != len(size):
        raise pickle.UnpicklingError("a torch tensor whose size and stride disagree")
    if 0 in size:
        out = np.zeros(size, dtype=data.dtype)
    else:
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if offset < 0 or min(stride, default=0) < 0 or last >= data.size:
            raise pickle.UnpicklingError("a torch tensor view lies outside its storage")
        contiguous = all(st == int(np.prod(size[i + 1:])) for i, st in enumerate(stride) if size[i] > 1)
        if (offset == 0 and contiguous and int(np.prod(size)) == data.size and not storage.lent
                and data.flags.writeable and dtype_name in (None, storage.dtype_name)):
            storage.lent = True  # the whole storage as one tensor (the common case): no second copy
            out = data.reshape(size)
        else:
            base = data[offset:]
            out = np.array(np.lib.stride_tricks.as_strided(
                base, shape=size, strides=tuple(s * data.itemsize for s in stride), writeable=False), copy=True)
    return _bf16_to_f32(out) if name == "bfloat16" else out


class _Tensor:
    """A tensor named while unpickling; its storage bytes may come later (legacy format), so the
    array is made by :func:`_to_plain` once the whole file is read."""

    def __init__(self, storage, offset, size, stride, dtype_name=None):
        self.storage, self.offset, self.size, self.stride, self.dtype_name = storage, offset, size, stride, dtype_name

    def array(self) -> np.ndarray:
        return _strided(self.storage, self.offset, self.size, self.stride, self.dtype_name)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """torch._utils._rebuild_tensor / _rebuild_tensor_v2."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a torch tensor without a readable storage")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *unused):
    if not isinstance(storage, _Storage) or not isinstance(dtype, _TorchDtype):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v3 without a storage and a torch dtype ({dtype!r})")
    return _Tensor(storage, storage_offset, size, stride, str(dtype))


def _rebuild_parameter(data, *unused):
    """torch._utils._rebuild_parameter(_with_state): a parameter is its data."""
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError("_rebuild_parameter without a tensor")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2: a tensor with Python state; only plain tensors here."""
    if func not in _REBUILDERS or not isinstance(new_type, _TensorType):
        raise UnsafePickleError(f"refused to load: _rebuild_from_type_v2 may only rebuild plain tensors, "
                                f"not {getattr(new_type, 'cls_name', new_type)!r}")
    return func(*args)


def _safe_reconstructor(cls, base, state):
    """copyreg._reconstructor (protocol 0/1 pickles), allowed only to build the stand-ins."""
    if isinstance(cls, type) and issubclass(cls, _Stub):
        return cls()
    raise UnsafePickleError(f"refused to load: copyreg._reconstructor may only rebuild array types, not {cls!r}")


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """_codecs.encode, used by protocol-2 pickles to carry bytes as latin-1 text."""
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode called with non-text arguments")
    return obj.encode(encoding, errors)


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _plain_dict(*unused):
    """collections.defaultdict(factory): a plain dict (the factory is dropped, never kept to call)."""
    return {}


def _torch_size(dims=()):
    return tuple(int(d) for d in dims)


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


_NUMPY = _numpy_globals()
_BUILTINS = {
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
    ("builtins", "slice"): slice, ("builtins", "bytearray"): bytearray, ("builtins", "object"): object,
    ("collections", "OrderedDict"): OrderedDict, ("collections", "defaultdict"): _plain_dict,
    ("copyreg", "_reconstructor"): _safe_reconstructor, ("_codecs", "encode"): _safe_codecs_encode,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor, ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
}
# plain value types: as a value (a config's element_type) or called on plain values, all harmless
_PLAIN_TYPES = {"dict": dict, "list": list, "tuple": tuple, "str": str, "int": int, "float": float,
                "bool": bool, "bytes": bytes, "NoneType": type(None)}
_SPARSE_RE = re.compile(r"^(csc|csr|coo)_(matrix|array)$")
_OMEGA_CLASSES = {("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
                  ("omegaconf.base", "Metadata"), ("omegaconf.base", "ContainerMetadata")}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only what the module docstring lists; ``source`` names the file
    in error messages. ``persistent_load`` is set by the torch readers."""

    def __init__(self, file, source: str = "<bytes>", persistent_load=None):
        super().__init__(file, encoding="latin1", fix_imports=True)
        self.source = source
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def _storage_from_bytes(self, data):
        if not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("torch.storage._load_from_bytes without bytes")
        st = _load_legacy_stream(io.BytesIO(bytes(data)), self.source)
        if not isinstance(st, _Storage):
            raise pickle.UnpicklingError("a pickled torch storage with an unexpected layout")
        return st

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (copy_reg, __builtin__, ...), as pickle's own fix_imports does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in _NUMPY:
            return _NUMPY[key]
        if key in _BUILTINS:
            return _BUILTINS[key]
        if module == "builtins" and name in _PLAIN_TYPES:
            return _PLAIN_TYPES[name]
        if module == "chumpy" or module.startswith("chumpy."):
            return _make_stub(_ChumpyStub, module, name)
        if module.startswith("scipy.sparse") and _SPARSE_RE.match(name):
            return _make_stub(_SparseStub, module, name)
        if module == "torch.storage" and name == "_load_from_bytes":  # a storage pickled with pickle
            return self._storage_from_bytes
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module in ("torch", "torch.storage") and name in ("UntypedStorage", "TypedStorage"):
            return _StorageType("UntypedStorage")
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(_TORCH_DTYPES[name])
        if (module in ("torch", "torch._tensor") and name in _TENSOR_TYPES) or \
                (module in ("torch.nn.parameter", "torch.nn") and name == "Parameter"):
            return _TensorType(name)
        if module == "torch" and name == "device":
            return _make_stub(_DeviceStub, module, name)
        if module == "argparse" and name == "Namespace":
            return _make_stub(_NamespaceStub, module, name)
        if key in _OMEGA_CLASSES or (module == "omegaconf.nodes" and name.endswith("Node")):
            return _make_stub(_OmegaStub, module, name)
        if module == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath",
                                            "PureWindowsPath"):
            return _make_stub(_PathStub, module, name)
        if module == "typing" and name == "Any":
            return _TypeName("typing.Any")
        raise UnsafePickleError(
            f"{self.source}: refused to load: the pickle asks for '{module}.{name}', which is not on the "
            "allow-list (arrays, tensors, containers, numbers and plain hyper-parameter values). A pickle "
            "can run code when loaded, so nothing else is built and nothing from the file was run. If this "
            "file is a genuine release, re-save its arrays without that object (safetensors or np.savez) "
            "or fetch a fresh copy from its release page.")


# --------------------------------------------------------------------------- stand-ins -> plain values
def _to_plain(obj, source: str, path: str = "", seen=None):
    """Replace stand-ins by NumPy arrays / SciPy sparse matrices / plain values, recursively."""
    seen = set() if seen is None else seen
    where = path or "(root)"
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, (_TypeName, _TorchDtype)):
        return str(obj)
    if isinstance(obj, type) and issubclass(obj, _Stub):
        return obj.cls_name  # a class named as a value (Lightning's hparams_type)
    if isinstance(obj, type) and obj in _PLAIN_TYPES.values():
        return obj.__name__
    if isinstance(obj, _ChumpyStub):
        st = obj.state if isinstance(obj.state, dict) else {}
        x = st.get("x")
        if x is None:
            raise InputError(
                f"{source}: entry {where} is a chumpy expression ({obj.cls_name}) rather than a stored "
                "array; it cannot be evaluated without chumpy. Convert it once with chumpy installed "
                "(np.array(value)) and save the arrays with np.savez.")
        return np.asarray(_to_plain(x, source, path, seen))
    if isinstance(obj, _SparseStub):
        return _sparse_from_state(obj, source, path, seen)
    if isinstance(obj, _NamespaceStub):
        st = obj.state if isinstance(obj.state, dict) else {}
        return {k: _to_plain(v, source, f"{path}.{k}", seen) for k, v in st.items()}
    if isinstance(obj, _OmegaStub):
        return _omegaconf_value(obj, source, path, seen)
    if isinstance(obj, _PathStub):
        parts = [str(p) for p in obj.args]
        return os.path.join(*parts) if parts else "."
    if isinstance(obj, _DeviceStub):
        return ":".join(str(a) for a in obj.args)
    if isinstance(obj, (_StorageType, _TensorType, _Storage)):
        raise InputError(f"{source}: entry {where} is a bare torch storage or type, not a tensor; "
                         "save tensors (or a state_dict) instead")
    if isinstance(obj, _Stub):
        raise InputError(f"{source}: entry {where} is a {obj.cls_name} that could not be read")
    if isinstance(obj, (dict, list, tuple, set, frozenset)) or (isinstance(obj, np.ndarray) and obj.dtype == object):
        if id(obj) in seen:
            raise InputError(f"{source}: entry {where} refers to itself (a cyclic container)")
        seen = seen | {id(obj)}
    if isinstance(obj, dict):
        items = ((k, _to_plain(v, source, f"{path}[{k!r}]", seen)) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [_to_plain(v, source, f"{path}[{i}]", seen) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_to_plain(v, source, f"{path}[{i}]", seen) for i, v in enumerate(obj))
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_to_plain(v, source, path, seen) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        out = np.empty(obj.shape, dtype=object)
        for idx in np.ndindex(obj.shape):
            out[idx] = _to_plain(obj[idx], source, path, seen)
        return out
    return obj


def _omegaconf_value(obj: _OmegaStub, source, path, seen):
    """DictConfig / ListConfig / value nodes -> their stored content (never their ``_parent``)."""
    st = obj.state if isinstance(obj.state, dict) else {}
    if obj.cls_name.endswith("Node"):
        return _to_plain(st.get("_val"), source, path, seen)
    if obj.cls_name.endswith("Metadata"):
        return None
    content = st.get("_content")
    if content is None or isinstance(content, str):  # None, '???' (missing) or an interpolation
        return content
    if isinstance(content, dict):
        return {k: _to_plain(v, source, f"{path}.{k}", seen) for k, v in content.items()}
    if isinstance(content, list):
        return [_to_plain(v, source, f"{path}[{i}]", seen) for i, v in enumerate(content)]
    raise InputError(f"{source}: entry {path or '(root)'} is an OmegaConf {obj.cls_name} with unreadable content")


def _sparse_from_state(obj: _SparseStub, source: str, path: str, seen):
    import scipy.sparse as sp

    st = obj.state if isinstance(obj.state, dict) else {}
    st = {k: _to_plain(v, source, path, seen) for k, v in st.items()}
    shape = st.get("_shape", st.get("shape"))
    fmt = obj.cls_name.rsplit(".", 1)[-1][:3]
    try:
        shape = tuple(int(s) for s in shape)
        if fmt in ("csc", "csr"):
            cls = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
            return cls((np.asarray(st["data"]), np.asarray(st["indices"]), np.asarray(st["indptr"])), shape=shape)
        row = st.get("row", st["coords"][0] if "coords" in st else None)
        col = st.get("col", st["coords"][1] if "coords" in st else None)
        return sp.coo_matrix((np.asarray(st["data"]), (np.asarray(row), np.asarray(col))), shape=shape)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{source}: entry {path or '(root)'} is a scipy sparse matrix ({obj.cls_name}) that "
                         f"could not be rebuilt from its arrays ({e}).") from e


# --------------------------------------------------------------------------- plain pickles
def _guard(source: str, fn):
    """Run a reader; unsafe globals and our own errors pass through, anything else is a bad file."""
    try:
        return fn()
    except UnsafePickleError as e:
        if str(e).startswith(source):
            raise
        raise UnsafePickleError(f"{source}: {e}") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file, reported as one
        detail = " ".join(str(e).split())[:300]
        raise InputError(f"{source}: not a readable file of its kind ({type(e).__name__}: {detail}). "
                         "The file is corrupt or truncated; download it again.") from None


def loads(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`, stand-ins mapped to arrays."""
    obj = _guard(source, lambda: RestrictedUnpickler(io.BytesIO(data), source).load())
    return _to_plain(obj, source)


def safe_pickle_load(f, source: str = None):
    """Like :func:`pickle.load` on an open binary file, through the allow-list."""
    return loads(f.read(), source or getattr(f, "name", "<file>"))


def _read_file(path: str) -> bytes:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        return f.read()


def load_pickle(path: str):
    """Read a pickle file through the allow-list. Raises InputError if unreadable."""
    return loads(_read_file(path), source=os.fspath(path))


def load_npy(path: str):
    """Read a ``.npy`` file; object arrays (pickled dicts) go through the allow-list.

    A 0-d object array holding a dict (``np.save(path, dict)``) is returned as that dict.
    """
    import numpy.lib.format as fmt

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")

    def header():
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            _shape, _fortran, dtype = (fmt.read_array_header_1_0(f) if version == (1, 0)
                                       else fmt.read_array_header_2_0(f))
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False), None
            return None, f.read()

    arr, payload = _guard(path, header)
    if payload is None:
        return arr
    arr = loads(payload, source=path)
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == ():
        return arr[()]
    return arr


# --------------------------------------------------------------------------- torch checkpoints
def _torch_pickle(f, source: str, storage_for) -> Any:
    """Unpickle a torch pickle whose persistent ids are ('storage', type, key, location, numel[, view])."""
    def persistent_load(pid):
        if isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage") and len(pid) >= 5:
            stype, key, numel = pid[1], str(pid[2]), int(pid[4])
            if not isinstance(stype, _StorageType):
                raise pickle.UnpicklingError(f"unknown torch storage type {stype!r}")
            view = pid[5] if len(pid) > 5 else None
            return storage_for(stype, key, numel, view)
        if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
            raise UnsafePickleError(f"{source}: refused to load: the file pickles a whole nn.Module class "
                                    f"({pid[1]!r}), not a state_dict; re-save model.state_dict() in PyTorch")
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")

    return RestrictedUnpickler(f, source, persistent_load).load()


def _read_zip_storage(zf: zipfile.ZipFile, name: str, dtype_name: str, numel: int, big: bool, key) -> _Storage:
    """One ``data/<key>`` record read straight into a NumPy array (one copy)."""
    dt = _np_dtype(dtype_name)
    size = zf.getinfo(name).file_size
    if size < numel * dt.itemsize:
        raise pickle.UnpicklingError(f"storage {key} is truncated ({size} of {numel * dt.itemsize} bytes)")
    arr = np.empty(int(numel), dtype=dt)
    with zf.open(name) as fh:
        got = fh.readinto(memoryview(arr).cast("B")) if arr.nbytes else 0
    if got != arr.nbytes:
        raise pickle.UnpicklingError(f"storage {key} is truncated ({got} of {arr.nbytes} bytes)")
    if big and dt.itemsize > 1:
        arr = arr.byteswap()
    return _Storage(arr, dtype_name)


def _load_zip(path: str, zf: zipfile.ZipFile):
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1] or \
        [n for n in names if n == "data.pkl"]
    if not pkls:
        raise InputError(f"{path}: a zip file, but not a torch.save checkpoint (no <archive>/data.pkl). "
                         f"Entries: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    prefix = pkls[0][: -len("data.pkl")]
    big = False
    if prefix + "byteorder" in names:
        order = zf.read(prefix + "byteorder").strip()
        if order not in (b"little", b"big"):
            raise InputError(f"{path}: unknown byteorder record {order!r}")
        big = order == b"big"
    cache: Dict[str, _Storage] = {}

    def storage_for(stype, key, numel, view):
        if key not in cache:
            name = f"{prefix}data/{key}"
            if name not in names:
                raise InputError(f"{path}: the checkpoint refers to storage {key!r}, which is missing "
                                 "from the archive (the file is incomplete; download it again)")
            cache[key] = _read_zip_storage(zf, name, stype.dtype, numel, big, key)
        return cache[key]

    return _torch_pickle(io.BytesIO(zf.read(pkls[0])), path, storage_for)


def _load_legacy_stream(f, source: str):
    """The non-zip torch.save stream: magic, protocol, sys_info, pickle, keys, raw storages."""
    def small():
        return RestrictedUnpickler(f, source).load()

    magic = small()
    if magic != TORCH_LEGACY_MAGIC:
        raise InputError(f"{source}: not a PyTorch checkpoint (neither a torch.save zip, nor the legacy format, "
                         "nor a tar checkpoint)")
    proto = small()
    if proto != 1001:
        raise InputError(f"{source}: unsupported legacy PyTorch protocol version {proto!r}")
    small()  # sys_info; storages are written little-endian whatever the machine
    records: Dict[str, list] = {}
    views = []

    def storage_for(stype, key, numel, view):
        rec = records.setdefault(key, [stype, numel, _Storage(np.zeros(0, _np_dtype(stype.dtype)), stype.dtype)])
        if view is not None:  # (view_key, offset, size) of an old storage view
            holder = _Storage(np.zeros(0, _np_dtype(stype.dtype)), stype.dtype)
            views.append((holder, key, int(view[1]), int(view[2])))
            return holder
        return rec[2]

    main = _torch_pickle(f, source, storage_for)
    keys = small()
    for key in keys:
        key = str(key)
        if key not in records:
            raise InputError(f"{source}: storage {key!r} listed but never used")
        stype, numel, holder = records[key]
        (n,) = struct.unpack("<q", f.read(8))
        st = _make_storage(f.read(n * _np_dtype(stype.dtype).itemsize), stype.dtype, n, False, key)
        holder.data = st.data
    for holder, key, off, size in views:
        holder.data = records[key][2].data[off:off + size]
    return main


def _load_tar(path: str, tar: tarfile.TarFile):
    """PyTorch < 0.4: tar members ``storages``, ``tensors``, ``pickle``."""
    def member(name):
        try:
            return tar.extractfile(name).read()
        except KeyError:
            raise InputError(f"{path}: a tar file without the '{name}' member of an old PyTorch checkpoint "
                             "(DECA/MICA .tar files are zip checkpoints; this one is neither)") from None

    objs: Dict[str, Any] = {}
    f = io.BytesIO(member("storages"))

    def small():
        return RestrictedUnpickler(f, path).load()

    for _ in range(int(small())):
        key, _loc, stype = small()
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unknown torch storage type {stype!r}")
        (n,) = struct.unpack("<q", f.read(8))
        objs[str(key)] = _make_storage(f.read(n * _np_dtype(stype.dtype).itemsize), stype.dtype, n, False, key)
    for target, root, off, numel in small():
        r = objs[str(root)]
        objs[str(target)] = _Storage(r.data[int(off):int(off) + int(numel)], r.dtype_name)
    f = io.BytesIO(member("tensors"))
    for _ in range(int(small())):
        key, storage_id, _ttype = small()
        (ndim,) = struct.unpack("<i", f.read(4))
        f.read(4)
        size = struct.unpack(f"<{ndim}q", f.read(8 * ndim))
        stride = struct.unpack(f"<{ndim}q", f.read(8 * ndim))
        (offset,) = struct.unpack("<q", f.read(8))
        objs[str(key)] = _strided(objs[str(storage_id)], offset, size, stride)
    def persistent(pid):
        if isinstance(pid, tuple):
            raise UnsafePickleError(f"{path}: refused to load: the file pickles a whole nn.Module class "
                                    f"({pid[0]!r}), not a state_dict; re-save model.state_dict() in PyTorch")
        if str(pid) not in objs:
            raise pickle.UnpicklingError(f"unknown storage / tensor id {pid!r}")
        return objs[str(pid)]

    return RestrictedUnpickler(io.BytesIO(member("pickle")), path, persistent).load()


def load_torch_checkpoint(path: str):
    """Read a PyTorch checkpoint (zip, legacy or tar ``torch.save`` file) without importing torch.

    Returns what was saved, with every tensor (and parameter) as a NumPy array, containers as
    dict / OrderedDict / list / tuple, and Lightning hyper-parameters as plain values (see the
    module docstring). Anything outside the allow-list raises :class:`UnsafePickleError` naming
    it, before anything from the file is run; a damaged file raises :class:`InputError`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")

    def read():
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return _load_zip(path, zf)
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head == b"PK\x03\x04":
            raise InputError(f"{path}: a zip checkpoint without its central directory: the file is corrupt "
                             "or truncated; download it again.")
        if head[:1] != b"\x80":  # pickles start with PROTO; an old tar checkpoint does not
            try:
                with tarfile.open(path, mode="r:") as tar:
                    return _load_tar(path, tar)
            except tarfile.TarError:
                pass
        with open(path, "rb") as fh:
            return _load_legacy_stream(fh, path)

    return _to_plain(_guard(path, read), path)


def torch_state_dict(obj, path: str = "<checkpoint>", key: str = None) -> Dict[str, np.ndarray]:
    """The flat name -> array state dict inside a loaded checkpoint.

    ``key`` picks a sub-dict (``"state_dict"`` of Lightning, ``"E_flame"`` of DECA); without it a
    Lightning ``state_dict`` / common ``model`` / ``module`` wrapper is unwrapped when present.
    """
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            have = list(obj.keys())[:12] if isinstance(obj, dict) else type(obj).__name__
            raise InputError(f"{path}: no {key!r} entry in the checkpoint (it has {have})")
        obj = obj[key]
    elif isinstance(obj, dict):
        for k in ("state_dict", "model", "module"):
            if k in obj and isinstance(obj[k], dict) and not isinstance(obj.get(k), np.ndarray):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[str(k)] = v
    if not out:
        raise InputError(f"{path}: the checkpoint holds no tensors at this level (keys: {list(obj.keys())[:12]})")
    return out
