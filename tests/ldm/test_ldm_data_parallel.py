"""Latent diffusion trained by two data-parallel ranks: the latent scale fitted on the first
batch (scale_by_std) is the same on both ranks, as are the trained weights."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle

import ppldm  # noqa: F401
from ppengine import load_config
from ppengine.checkpoint import save_weights
from ppengine.trainer import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def test_two_ranks_share_the_fitted_latent_scale(tmp_path):
    paddle.seed(0)
    ae = str(tmp_path / "ae.safetensors")
    save_weights(ae, build_model(load_config(os.path.join(ROOT, "configs", "ldm", "ae_shapes.yml"))))
    rec = tmp_path / "rec"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "logs"), os.path.join(ROOT, "tools", "train.py"),
           "-c", os.path.join(ROOT, "configs", "ldm", "layout2img_shapes.yml"),
           "-o", "train.max_iters=3", "-o", "train.eval_interval=0", "-o", "train.save_interval=0",
           "-o", "train.progress=false", "-o", "data.batch_size=4", "-o", "data.train.num_samples=16",
           "-o", "data.fixed_shards=true", "-o", f"model.autoencoder.weights={ae}",
           "-o", f"callbacks=[{{type: RecordRun, path: {rec}}}]", "--output", str(tmp_path / "run")]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    logs = "".join(open(tmp_path / "logs" / f).read()[-1500:] for f in os.listdir(tmp_path / "logs"))
    assert r.returncode == 0, r.stderr[-2000:] + logs
    a, b = (json.loads((rec / f"rank{i}.json").read_text()) for i in range(2))
    assert a["world_size"] == b["world_size"] == 2
    assert not set(a["seen"]) & set(b["seen"])  # the ranks read different images...
    scale_a, scale_b = a["weights"]["scale.scale_factor"], b["weights"]["scale.scale_factor"]
    assert a["weights"]["scale.fitted"] == [1.0]
    np.testing.assert_allclose(scale_a, scale_b, rtol=1e-6)  # ...and fitted one scale together
    for k in a["weights"]:
        np.testing.assert_allclose(np.array(a["weights"][k]), np.array(b["weights"][k]), rtol=1e-6, atol=1e-7,
                                   err_msg=k)
