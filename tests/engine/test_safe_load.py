"""ppengine.safe_load against PyTorch: files written by real torch.save (zip and legacy), an old
tar checkpoint, a Lightning-style .ckpt, and malicious files for each container."""
import argparse
import io
import os
import pathlib
import pickle
import struct
import tarfile
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from ppengine.errors import InputError
from ppengine.safe_load import TORCH_LEGACY_MAGIC, UnsafePickleError, load_torch_checkpoint, loads, torch_state_dict


def _np(t):
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def assert_same(got, ref, where="(root)"):
    """``got`` (NumPy / plain) equals ``ref`` (torch.load's result) exactly, dtype and shape included."""
    if isinstance(ref, torch.Tensor):
        r = _np(ref)
        assert isinstance(got, np.ndarray), where
        assert got.dtype == r.dtype and got.shape == r.shape, (where, got.dtype, r.dtype, got.shape, r.shape)
        np.testing.assert_array_equal(got, r, err_msg=where)
    elif isinstance(ref, dict):
        assert isinstance(got, dict) and list(got.keys()) == list(ref.keys()), where
        assert isinstance(got, OrderedDict) == isinstance(ref, OrderedDict), where
        for k in ref:
            assert_same(got[k], ref[k], f"{where}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert type(got) is type(ref) and len(got) == len(ref), where
        for i, (g, r) in enumerate(zip(got, ref)):
            assert_same(g, r, f"{where}[{i}]")
    else:
        assert got == ref and type(got) is type(ref), (where, got, ref)


def every_kind(legacy=False):
    """All storage dtypes, views sharing one storage (transposed, sliced, offset, strided), zero-size,
    0-d, a Parameter, nested containers."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    out = {
        "f32": base, "f64": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "f16": torch.randn(4, 3, generator=g).half(), "bf16": torch.randn(5, 2, generator=g).bfloat16(),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8), "i16": torch.tensor([-32768, 7], dtype=torch.int16),
        "i32": torch.tensor([[-(2 ** 31), 5]], dtype=torch.int32), "i64": torch.tensor([2 ** 62, -3]),
        "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([[True, False, True]]),
        "c64": torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
        "transposed": base.t(), "sliced": base[1:5, 2:7], "offset": base.view(-1)[13:29], "stepped": base[::2, ::3],
        "expanded": torch.ones(3)[:, None].expand(3, 4), "zero": torch.zeros(0, 5), "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.randn(2, 3, generator=g)),
        "nested": OrderedDict(a=[base[0], (torch.arange(4), {"deep": base[:, 1]})], b=None),
        "plain": [1, -2.5, "text", b"bytes", True, None, (1, 2), {"k": 3}],
    }
    if not legacy:  # dtypes the legacy format cannot hold (torch itself refuses to load them)
        out["u16"] = torch.tensor([0, 65535], dtype=torch.uint16)
        out["u32"] = torch.tensor([2 ** 32 - 1], dtype=torch.uint32)
    return out


def torch_save_in_clean_process(obj, path, legacy: bool):
    """``torch.save`` of ``obj`` to ``path`` done by torch in a fresh interpreter that imports
    torch only, and ``torch.load(path, weights_only=True)`` of the result from there (the
    reference). Once other libraries of the suite (ppdiffusers / paddlenlp) are imported, torch's
    legacy writer in this process can record untyped storages that torch itself then cannot load
    ("UntypedStorage has no attribute dtype"); the object travels to the child as a zip file."""
    import subprocess
    import sys

    src, ref = str(path) + ".src.pt", str(path) + ".ref.pt"
    torch.save(obj, src)
    code = ("import sys, torch; o = torch.load(sys.argv[1], weights_only=True); "
            "torch.save(o, sys.argv[2], _use_new_zipfile_serialization=sys.argv[4] == '0'); "
            "torch.save(torch.load(sys.argv[2], weights_only=True), sys.argv[3])")
    r = subprocess.run([sys.executable, "-c", code, src, str(path), ref, "1" if legacy else "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return torch.load(ref, weights_only=True)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_dtype_and_view_matches_torch_load(tmp_path, legacy):
    obj = every_kind(legacy)
    path = tmp_path / "all.pt"
    ref = torch_save_in_clean_process(obj, path, legacy)
    assert zipfile.is_zipfile(path) != legacy
    got = load_torch_checkpoint(str(path))
    assert_same(got, ref)
    assert got["bf16"].dtype == np.float32  # NumPy has no bfloat16: widened exactly
    # views of one storage come back as independent arrays
    got["transposed"][0, 0] = 1e6
    assert got["f32"][0, 0] != 1e6


def conv_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))


@pytest.mark.parametrize("name", ["model.pth", "deca_model.tar", "pytorch_model.bin", "weights.pt"])
def test_state_dict_any_extension(tmp_path, name):
    net = conv_net()
    net(torch.randn(2, 3, 8, 8))  # BatchNorm running stats and num_batches_tracked (int64)
    path = tmp_path / name
    torch.save({"E_flame": net.state_dict(), "opt": {"step": 3}}, path)
    got = load_torch_checkpoint(str(path))
    assert_same(got, torch.load(path, weights_only=True))
    sd = torch_state_dict(got, str(path), key="E_flame")
    assert list(sd) == list(net.state_dict()) and sd["1.num_batches_tracked"].dtype == np.int64
    with pytest.raises(InputError, match="no 'E_detail' entry"):
        torch_state_dict(got, str(path), key="E_detail")


def lightning_ckpt():
    """A checkpoint laid out as Lightning's ModelCheckpoint writes it (EMOCA's .ckpt files)."""
    from omegaconf import OmegaConf

    net = conv_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    cfg = OmegaConf.create({"model": {"n_shape": 100, "tex_type": "BFM", "layers": [1, 2.5, "x"],
                                      "ref": "${model.n_shape}", "missing": "???", "none": None}})
    return {
        "epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.4.9",
        "state_dict": OrderedDict(("deca." + k, v) for k, v in net.state_dict().items()),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 8}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "best_model_score": torch.tensor(0.125), "best_model_path": "/runs/emoca/best.ckpt",
            "best_k_models": {"/runs/emoca/best.ckpt": torch.tensor(0.125)}, "dirpath": "/runs/emoca"}},
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"model_params": cfg.model, "full": cfg, "args": argparse.Namespace(lr=1e-4, name="emoca"),
                             "output_dir": pathlib.PurePosixPath("/runs", "emoca"), "dtype": torch.float32},
        "hparams_type": type(cfg),
    }


def test_lightning_ckpt(tmp_path):
    ckpt = lightning_ckpt()
    path = tmp_path / "emoca.ckpt"
    torch.save(ckpt, path)
    got = load_torch_checkpoint(str(path))
    ref = torch.load(path, weights_only=False)  # our own trusted file: the reference reader
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "epoch", "global_step"):
        assert_same(got[key], ref[key], key)
    hp = got["hyper_parameters"]
    assert hp["model_params"] == {"n_shape": 100, "tex_type": "BFM", "layers": [1, 2.5, "x"],
                                  "ref": "${model.n_shape}", "missing": "???", "none": None}
    assert hp["full"] == {"model": hp["model_params"]}
    assert hp["args"] == {"lr": 1e-4, "name": "emoca"}
    assert hp["output_dir"] == "/runs/emoca" and hp["dtype"] == "float32"
    assert got["hparams_type"] == "omegaconf.dictconfig.DictConfig"
    sd = torch_state_dict(got, str(path))  # Lightning's state_dict is found without a key
    assert sd.keys() == ref["state_dict"].keys()


def write_old_tar(path, tensors, pickle_payload=None):
    """A PyTorch < 0.4 tar checkpoint (sys_info, storages, tensors, pickle), float tensors only."""
    def dump(obj, f):
        pickle.dump(obj, f, protocol=2)

    storages, tens = io.BytesIO(), io.BytesIO()
    dump(len(tensors), storages)
    dump(len(tensors), tens)
    for i, t in enumerate(tensors.values()):
        flat = np.frombuffer(bytes(t.untyped_storage()), np.float32)
        dump((i, "cpu", torch.FloatStorage), storages)
        storages.write(struct.pack("<q", flat.size) + flat.tobytes())
        dump((100 + i, i, torch.FloatTensor), tens)
        tens.write(struct.pack("<i", t.dim()) + b"\0" * 4 + struct.pack(f"<{t.dim()}q", *t.shape)
                   + struct.pack(f"<{t.dim()}q", *t.stride()) + struct.pack("<q", t.storage_offset()))
    dump([], storages)  # storage views

    class Ref:
        def __init__(self, pid):
            self.pid = pid

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, Ref) else None

    main = io.BytesIO()
    P(main, protocol=2).dump(pickle_payload if pickle_payload is not None else
                             OrderedDict((k, Ref(str(100 + i))) for i, k in enumerate(tensors)))
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("sys_info", pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)),
                           ("storages", storages.getvalue()), ("tensors", tens.getvalue()),
                           ("pickle", main.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_old_tar_checkpoint(tmp_path):
    base = torch.randn(4, 5)
    tensors = OrderedDict(w=base, wt=base.t(), row=base[2], b=torch.randn(3))
    path = tmp_path / "old.tar"
    write_old_tar(path, tensors)
    ref = torch.load(path, weights_only=False)  # torch still reads this layout
    got = load_torch_checkpoint(str(path))
    assert_same(got, ref)
    np.testing.assert_array_equal(got["wt"], base.t().numpy())


def test_big_endian_zip(tmp_path):
    """A zip written on a big-endian machine: byteorder 'big' and byte-swapped storages."""
    t = {"w": torch.randn(3, 4), "i": torch.arange(5)}
    src, dst = tmp_path / "le.pt", tmp_path / "be.pt"
    torch.save(t, src)
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        ref = torch.load(src, weights_only=True)
        by_key = {}
        for name in zi.namelist():
            data = zi.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name and not name.endswith("serialization_id"):
                key = name.rsplit("/", 1)[1]
                by_key[key] = data
                arr = np.frombuffer(data, np.float32 if len(data) == 48 else np.int64)
                data = arr.byteswap().tobytes()
            zo.writestr(name, data)
    got = load_torch_checkpoint(str(dst))
    assert_same(got, ref)


# --------------------------------------------------------------------------- malicious files
class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class WriteMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "pwned"))


def malicious_files(tmp_path, marker):
    evil = Evil(str(marker))
    good = conv_net().state_dict()
    files = {}
    p = tmp_path / "zip.pt"
    torch.save({"state_dict": good, "x": evil}, p)
    files["zip"] = (p, "system")
    p = tmp_path / "legacy.pth"
    torch.save({"state_dict": good, "x": evil}, p, _use_new_zipfile_serialization=False)
    files["legacy"] = (p, "system")
    p = tmp_path / "mica.tar"
    torch.save({"arcface": good, "hook": WriteMarker(str(marker))}, p)
    files["zip named .tar"] = (p, "builtins.getattr")  # a bound method is pickled via getattr
    p = tmp_path / "old.tar"
    write_old_tar(p, {"w": torch.randn(2)}, pickle_payload={"w": evil})
    files["old tar"] = (p, "system")
    ck = lightning_ckpt()
    ck["hyper_parameters"]["callback"] = evil
    p = tmp_path / "evil.ckpt"
    torch.save(ck, p)
    files["lightning ckpt"] = (p, "system")
    p = tmp_path / "module.pt"
    torch.save(conv_net(), p)  # a whole pickled nn.Module runs class code on load: refused too
    files["whole module"] = (p, "torch.nn.modules.container.Sequential")
    return files


def test_malicious_files_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for kind, (path, asked) in malicious_files(tmp_path, marker).items():
        with pytest.raises(UnsafePickleError, match="refused to load") as ei:
            load_torch_checkpoint(str(path))
        msg = str(ei.value)
        assert str(path) in msg and any(a in msg for a in asked.split("|")), (kind, msg)
        assert "\n" not in msg, kind
        assert not marker.exists(), kind
    # the reference: torch.load without weights_only does run it
    torch.load(tmp_path / "zip.pt", weights_only=False)
    assert marker.exists()


def test_plain_pickle_reduce_tricks_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (pickle.dumps(Evil(str(marker)), protocol=p) for p in (0, 2, 5)):
        with pytest.raises(UnsafePickleError, match="system"):
            loads(payload, "x.pkl")
    # allowed names cannot be used to reach a callable: getattr / builtins.eval / _rebuild_from_type_v2
    for raw in (b"cbuiltins\ngetattr\n.", b"cbuiltins\neval\n(S'1'\ntR.", b"c__builtin__\nexec\n."):
        with pytest.raises(UnsafePickleError, match="getattr|eval|exec"):
            loads(raw, "x.pkl")
    rebuild = (b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\nctorch._utils\n_rebuild_parameter\n"
               b"cposix\nsystem\n)N\x87R.")
    with pytest.raises(UnsafePickleError, match="posix.system"):
        loads(rebuild, "x.pkl")
    assert not marker.exists()


def test_bad_files_give_one_line_errors(tmp_path):
    torch.save({"w": torch.randn(100)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    legacy = io.BytesIO()
    pickle.dump(TORCH_LEGACY_MAGIC, legacy, protocol=2)
    (tmp_path / "cut_legacy.pt").write_bytes(legacy.getvalue())
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    for name, match in (("missing.pt", "file not found"), ("trunc.pt", "corrupt or truncated"),
                        ("text.pt", "corrupt or truncated|not a PyTorch checkpoint"),
                        ("cut_legacy.pt", "corrupt or truncated"), ("other.zip", "not a torch.save checkpoint")):
        with pytest.raises(InputError, match=match) as ei:
            load_torch_checkpoint(str(tmp_path / name))
        assert "\n" not in str(ei.value) and not isinstance(ei.value, UnsafePickleError), name


def test_reads_without_torch(tmp_path):
    """The reader never imports torch: a checkpoint loads in a process where torch cannot be imported."""
    import subprocess
    import sys

    torch.save({"w": torch.arange(6.0).reshape(2, 3).t(), "n": 3}, tmp_path / "c.pt")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from ppengine.safe_load import load_torch_checkpoint\n"
            f"d = load_torch_checkpoint({str(tmp_path / 'c.pt')!r})\n"
            "print(d['w'].tolist(), d['n'], 'torch' in sys.modules and sys.modules['torch'] is not None)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=root))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]] 3 False"


def test_tensor_with_python_state_device_size_dtype(tmp_path):
    """A tensor carrying attributes (pickled through _rebuild_from_type_v2), torch.device,
    torch.Size and dtypes stored as values."""
    t = torch.arange(6.0).reshape(2, 3)
    t.note = "attribute"
    torch.save({"t": t, "dev": torch.device("cpu"), "size": torch.Size([2, 3]), "dt": torch.bfloat16},
               tmp_path / "x.pt")
    ref = torch.load(tmp_path / "x.pt", weights_only=True)
    got = load_torch_checkpoint(str(tmp_path / "x.pt"))
    np.testing.assert_array_equal(got["t"], ref["t"].numpy())
    assert got["dev"] == str(ref["dev"]) and got["size"] == tuple(ref["size"]) and got["dt"] == "bfloat16"
