"""Engine behaviour across processes: SIGKILL during a checkpoint write, 2-rank data parallel,
and the thin command-line tools."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ppengine.checkpoint import CheckpointManager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}

KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    import ppengine.toy
    import ppengine.checkpoint as ck
    from ppengine import Trainer, load_config

    out, marker = sys.argv[1], sys.argv[2]
    orig = ck.save_tensors

    def slow_save(path, tensors, metadata=None):
        if ".tmp_ckpt_00000020" in path:          # second checkpoint: write half a file, then hang
            with open(path, "wb") as f:
                f.write(b"\\x00" * 100)
            open(marker, "w").close()
            time.sleep(120)
        return orig(path, tensors, metadata)

    ck.save_tensors = slow_save
    cfg = load_config(os.path.join(%r, "configs", "toy.yml"),
                      ["train.output=" + out, "train.save_interval=10", "train.max_iters=40",
                       "train.eval_interval=0", "train.progress=false"])
    Trainer(cfg).train()
""" % ROOT)


def test_sigkill_during_checkpoint_write_keeps_previous(tmp_path):
    out, marker = str(tmp_path / "run"), str(tmp_path / "writing")
    script = tmp_path / "killme.py"
    script.write_text(KILLED_WRITER)
    p = subprocess.Popen([PY, str(script), out, marker], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if os.path.exists(marker) or p.poll() is not None:
                break
            time.sleep(0.1)
        assert os.path.exists(marker), "the writer never reached the second checkpoint"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    mgr = CheckpointManager(out)
    assert [os.path.basename(c) for c in mgr.list()] == ["ckpt_00000010"]
    state, files = CheckpointManager.load(mgr.latest())
    assert state["step"] == 10 and "fc1.weight" in files["model"]
    assert any(d.startswith(".tmp_ckpt_00000020") for d in os.listdir(out))  # the half write is aside
    # resuming from the run folder continues from step 10 and cleans the leftover
    r = subprocess.run([PY, os.path.join(ROOT, "tools", "train.py"), "-c", os.path.join(ROOT, "configs", "toy.yml"),
                        "-o", "train.max_iters=30", "-o", "train.save_interval=10", "-o", "train.progress=false",
                        "-o", "train.eval_interval=0", "--output", out, "--resume"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr and "ckpt_00000010 at step 10" in r.stderr
    assert [os.path.basename(c) for c in mgr.list()] == ["ckpt_00000010", "ckpt_00000020", "ckpt_00000030"]
    assert not any(d.startswith(".tmp_ckpt_") for d in os.listdir(out))


def test_two_rank_data_parallel(tmp_path):
    rec = tmp_path / "rec"
    cmd = [PY, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "logs"),
           os.path.join(ROOT, "tools", "train.py"), "-c", os.path.join(ROOT, "configs", "toy.yml"),
           "-o", "train.max_iters=8", "-o", "train.eval_interval=0", "-o", "train.progress=false",
           "-o", "data.batch_size=16", "-o", "data.train.n=64",
           "-o", f"callbacks=[{{type: RecordRun, path: {rec}}}]", "--output", str(tmp_path / "run")]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    logs = "".join(open(os.path.join(tmp_path / "logs", f)).read()[-1500:] for f in os.listdir(tmp_path / "logs"))
    assert r.returncode == 0, r.stderr[-2000:] + logs
    a = json.loads((rec / "rank0.json").read_text())
    b = json.loads((rec / "rank1.json").read_text())
    assert a["world_size"] == b["world_size"] == 2
    for k in a["weights"]:
        np.testing.assert_array_equal(np.array(a["weights"][k]), np.array(b["weights"][k]), err_msg=k)
    # 8 steps x 16 per rank = 128 = two epochs of 64: each rank saw its own half of every epoch
    assert len(a["seen"]) == len(b["seen"]) == 128
    for epoch in range(2):
        ea = set(a["seen"][epoch * 32:(epoch + 1) * 32])
        eb = set(b["seen"][epoch * 32:(epoch + 1) * 32])
        assert not ea & eb and ea | eb == set(range(64)), epoch
    # rank 0 alone writes checkpoints and logs
    assert os.path.isdir(tmp_path / "run" / "ckpt_00000008")
    assert os.path.isfile(tmp_path / "run" / "train.log")


def _tool(name, *args, timeout=300):
    return subprocess.run([PY, os.path.join(ROOT, "tools", name), *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_train_then_eval_cli(tmp_path):
    out = tmp_path / "run"
    r = _tool("train.py", "-c", "configs/toy.yml", "-o", "train.max_iters=20", "-o", "train.eval_interval=10",
              "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "it/s" in r.stderr and "loss=" in r.stderr  # progress bar with loss
    best = json.loads((out / "best.json").read_text())
    r = _tool("eval.py", "-c", "configs/toy.yml", "-o", f"model.weights={out / 'best.safetensors'}",
              "--json", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["mae"] == pytest.approx(best["value"], rel=1e-5)
    assert json.loads((tmp_path / "m.json").read_text()) == m


@pytest.mark.parametrize("args, expect", [
    (["-c", "configs/nothere.yml"], "config file not found"),
    (["-c", "configs/toy.yml", "-o", "model.type=ToyRegresor"], "Did you mean 'ToyRegressor'"),
    (["-c", "configs/toy.yml", "-o", "train.max_iter=3"], "Did you mean 'max_iters'"),
    (["-c", "configs/toy.yml", "--resume", "/nonexistent/run"], "no checkpoint found"),
])
def test_cli_errors_are_clear(args, expect):
    r = _tool("train.py", *args)
    assert r.returncode == 2
    assert expect in r.stderr and "Traceback" not in r.stderr
