"""Whole sampling runs through the exported graphs, against ppdiffusers and ppldm in dygraph.

    /work/bin/slot .venv/bin/python bench/export.py [--cases sd,digits,face] [--repeats 3] [--steps 25]

Cases (each in this one process; the implementations are called in turn, round after round, so
load from elsewhere on the machine hits them alike; median seconds per run):

* ``sd``: a 25-step DDIM text-to-image run (guidance 7.5, one 256x256 image: a 32x32 latent) of the
  Stable Diffusion 2.x-layout model whose UNet bench/ldm.py times (4 levels 64/128/128/128,
  cross-attention on three, 77x64 context), with a small CLIP text encoder and VAE, random weights,
  saved as a diffusers pipeline folder. (a) ppdiffusers' StableDiffusionPipeline, (b) ppldm's
  StableDiffusion from that folder in dygraph, (c) ppldm sampling with its exported graphs on
  onnxruntime, (d) on Paddle Inference, without and with oneDNN.
* ``digits``: 25-step DDIM of configs/ldm/class2img_digits.yml, guidance 3: with a trained run
  (``--digits-run``, default output/ldm/class2img_digits) 4 images of each digit, read back by the
  independent digit classifier; else 4 images with random weights. (a) ppldm's sampling loop with
  ppdiffusers' UNet2DConditionModel holding the same weights, (b)-(d) as above.
* ``face``: DECA (configs/deca.yml) encoder + FLAME graph (``reconstruct``) per image, batch 1:
  dygraph, onnxruntime, Paddle Inference.
* ``sizes`` (not in the default list): every default config's components exported with random
  weights: bytes on disk per target and the worst PSNR of each file (docs/export.md's tables).

Each backend's images are compared with ppldm's dygraph images (PSNR on [0, 1] pixels, and the
largest difference in 0-255 steps); the fp32 floor is 60 dB. Prints one JSON line per case and
backend, then one summary line per case with the fastest backend's speed-up over (a).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ppengine.quiet import quiet  # noqa: E402

quiet()

import numpy as np  # noqa: E402
import paddle  # noqa: E402

import ppface3d  # noqa: E402,F401
import ppldm  # noqa: E402,F401
from ppengine.export import export  # noqa: E402
from ppengine.export.checks import FLOORS, psnr  # noqa: E402
from ppengine.export.pipeline import jsonable  # noqa: E402
from ppengine.export.runtime import ExportedGraphs  # noqa: E402
from ppldm.pipelines.backends import exported_networks  # noqa: E402

THREADS = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)


def _randomize(layer, seed, scale=0.05):
    rng = np.random.RandomState(seed)
    layer.set_state_dict({k: paddle.to_tensor(rng.standard_normal(v.shape).astype("float32") * scale)
                          for k, v in layer.state_dict().items()})
    layer.eval()
    return layer


def _backends(model, cfg, folder):
    """name -> a context manager factory running ``model`` on that backend (None: dygraph)."""
    export(model, cfg, folder, targets=["paddle", "onnx"], log=lambda s: None)
    out = {"ppldm dygraph": None}
    for name, kind, onednn in (("ppldm onnxruntime", "onnxruntime", False),
                               ("ppldm paddle-inference", "paddle-inference", False),
                               ("ppldm paddle-inference onednn", "paddle-inference", True)):
        graphs = ExportedGraphs(folder, kind, threads=THREADS, onednn=onednn)
        out[name] = graphs
    return out


def _timed_rounds(fns: dict, repeats: int):
    """Call every function once per round (warm-up round first): name -> (median s, last output)."""
    outs = {k: f() for k, f in fns.items()}  # warm-up (and the compared outputs)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            outs[k] = f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}, outs


def _report(case, times, outs, peer, ref="ppldm dygraph", extra=None):
    ref_img = outs[ref]
    for k, s in times.items():
        d = {"bench": "export", "case": case, "backend": k, "seconds": round(s, 3), "threads": THREADS,
             "speedup_vs_peer": round(times[peer] / s, 3) if peer else None}
        if k != ref and outs[k] is not None:
            d["psnr_vs_ppldm_dygraph"] = round(psnr(ref_img, outs[k]), 1)
            d["max_pixel_diff_255"] = int(np.abs(np.round(ref_img * 255) - np.round(outs[k] * 255)).max())
        d.update(extra or {})
        print(json.dumps(jsonable(d)), flush=True)
    fast = min((k for k in times if k.startswith("ppldm") and k != ref), key=lambda k: times[k])
    below = [k for k in times if k not in (ref, peer) and psnr(ref_img, outs[k]) < FLOORS["fp32"]]
    print(json.dumps({"bench": "export", "case": case, "summary": True, "fastest": fast,
                      "speedup_vs_peer": round(times[peer] / times[fast], 3) if peer else None,
                      "fastest_within_fp32_floor": fast not in below, "below_fp32_floor": below,
                      "load": os.getloadavg()[0]}), flush=True)


def _run_graphs(model, graphs, fn):
    if graphs is None:
        return fn()
    with exported_networks(model, graphs):
        return fn()


# ----------------------------------------------------------------------------- cases
def case_sd(steps, repeats, tmp):
    from paddlenlp.transformers import CLIPTokenizer
    from ppdiffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from ppdiffusers.transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, os.path.join(ROOT, "tests", "ldm"))
    from random_weights import write_byte_level_tokenizer

    from ppengine import load_config
    from ppengine.trainer import build_model
    from ppldm.diffusion import make_scheduler

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from ldm import CASES

    c = CASES["sd"]
    n = write_byte_level_tokenizer(os.path.join(tmp, "tok"))
    tok = CLIPTokenizer(os.path.join(tmp, "tok", "vocab.json"), os.path.join(tmp, "tok", "merges.txt"))
    paddle.seed(0)
    text = _randomize(CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=c["ctx"][1], intermediate_size=128,
                                                   num_hidden_layers=2, num_attention_heads=2,
                                                   max_position_embeddings=77, hidden_act="gelu")), 1)
    unet = _randomize(UNet2DConditionModel(
        sample_size=c["size"], block_out_channels=c["blocks"], layers_per_block=c["layers"], down_block_types=c["down"],
        up_block_types=tuple("CrossAttnUpBlock2D" if d.startswith("CrossAttn") else "UpBlock2D"
                             for d in reversed(c["down"])),
        attention_head_dim=c["heads"], cross_attention_dim=c["ctx"][1], use_linear_projection=True), 2)
    vae = _randomize(AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                   block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
                                   norm_num_groups=16), 3)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=make_scheduler("ddim", steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(os.path.join(tmp, "pipe"))
    size = c["size"] * 8
    cfg = load_config(os.path.join(ROOT, "configs", "ldm", "sd21_base.yml"),
                      [f"model.folder={os.path.join(tmp, 'pipe')}", f"model.sample_size={size}"])
    model = build_model(cfg)
    model.eval()
    noise = paddle.to_tensor(np.random.RandomState(0).standard_normal((1, 4, c["size"], c["size"])).astype("float32"))
    prompt = "a red circle left of a blue square"

    def ppdiffusers_run():
        return pipe(prompt=prompt, negative_prompt="", latents=noise, num_inference_steps=steps, guidance_scale=7.5,
                    height=size, width=size, output_type="np").images.transpose(0, 3, 1, 2)

    def ppldm_run(graphs):
        return lambda: _run_graphs(model, graphs, lambda: model.generate(
            prompt, latents=noise, steps=steps, guidance_scale=7.5, sampler="ddim", progress=False).numpy())

    backends = _backends(model, cfg, os.path.join(tmp, "export_sd"))
    fns = {"ppdiffusers dygraph": ppdiffusers_run}
    fns.update({k: ppldm_run(g) for k, g in backends.items()})
    times, outs = _timed_rounds(fns, repeats)
    _report("sd", times, outs, "ppdiffusers dygraph",
            extra={"steps": steps, "image": size, "latent": c["size"], "unet_batch": 2})


def case_digits(steps, repeats, tmp, trained):
    from ppdiffusers import UNet2DConditionModel

    from ppengine import load_config, load_for_inference
    from ppengine.trainer import build_model
    from ppldm.diffusion import sample
    from ppldm.interop import save_unet

    if trained and os.path.isfile(os.path.join(trained, "final.safetensors")):
        model, cfg = load_for_inference(trained)
        weights = "trained"
    else:
        cfg = load_config(os.path.join(ROOT, "configs", "ldm", "class2img_digits.yml"), ["model.autoencoder.weights=null"])
        model = _randomize(build_model(cfg), 4)
        model.ae_ready.set_value(paddle.to_tensor([1.0]))
        model.scale.scale_factor.set_value(paddle.to_tensor([0.8]))
        model.scale.fitted.set_value(paddle.to_tensor([1.0]))
        weights = "random"
    save_unet(model.unet, os.path.join(tmp, "digits_unet"), layout="pd")
    peer_unet = UNet2DConditionModel.from_pretrained(os.path.join(tmp, "digits_unet"))
    peer_unet.eval()
    # trained weights: 4 of each digit, read back by the independent digit classifier
    labels_np = np.repeat(np.arange(10), 4) if weights == "trained" else np.array([0, 3, 5, 7])
    labels, n = paddle.to_tensor(labels_np), len(labels_np)
    g = 3.0

    def ppdiffusers_run():  # ppldm's loop and conditioner, ppdiffusers' UNet with the same weights
        cond = {"context": model.conditioner(labels)}
        uncond = {"context": model.conditioner(model.conditioner.null(n))}
        z = sample(lambda x, t, context: peer_unet(x, t, encoder_hidden_states=context).sample,
                   model.diffusion.scheduler("ddim"), [n, model.latent_channels, 8, 8], cond=cond, uncond=uncond,
                   guidance_scale=g, num_inference_steps=steps, seed=0, progress=False)
        return ((model.decode(z) + 1) / 2).clip(0, 1).numpy()

    def ppldm_run(graphs):
        return lambda: _run_graphs(model, graphs, lambda: model.generate(
            {"label": labels}, guidance_scale=g, steps=steps, seed=0).numpy())

    backends = _backends(model, cfg, os.path.join(tmp, "export_digits"))
    fns = {"ppdiffusers dygraph": ppdiffusers_run}
    fns.update({k: ppldm_run(gr) for k, gr in backends.items()})
    times, outs = _timed_rounds(fns, repeats)
    _report("digits", times, outs, "ppdiffusers dygraph", extra={"steps": steps, "images": n, "weights": weights})
    if weights == "trained":
        from ppldm.metrics import digit_checker

        checker = digit_checker(16)
        print(json.dumps({"bench": "export", "case": "digits", "digit_accuracy": {
            k: float((checker.predict(v) == labels_np).mean()) for k, v in outs.items()}}), flush=True)


def case_face(repeats, tmp):
    from ppengine import load_config, load_for_inference
    from ppengine.trainer import build_model

    trained = os.path.join(ROOT, "output", "deca")
    if os.path.isfile(os.path.join(trained, "final.safetensors")):
        model, cfg = load_for_inference(trained)
    else:
        cfg = load_config(os.path.join(ROOT, "configs", "deca.yml"))
        model = build_model(cfg)
        model.eval()
    folder = os.path.join(tmp, "export_face")
    export(model, cfg, folder, targets=["paddle", "onnx"], components=["reconstruct"], log=lambda s: None)
    s = model.image_size
    image = np.random.RandomState(0).uniform(0, 1, (1, 3, s, s)).astype("float32")
    keys = ("vertices", "landmarks3d", "landmarks2d", "cam")

    def dygraph():
        with paddle.no_grad():
            out = model.decode(model.encode_test(paddle.to_tensor(image)), render=False)
        return np.concatenate([out[k].numpy().ravel() for k in keys])

    def graph(kind, onednn=False):
        g = ExportedGraphs(folder, kind, threads=THREADS, onednn=onednn)
        return lambda: np.concatenate([v.ravel() for v in g.run("reconstruct", {"image": image}).values()])

    fns = {"ppface3d dygraph": dygraph, "ppface3d onnxruntime": graph("onnxruntime"),
           "ppface3d paddle-inference": graph("paddle-inference"),
           "ppface3d paddle-inference onednn": graph("paddle-inference", True)}
    times, outs = _timed_rounds(fns, repeats * 10)
    for k, t in times.items():
        d = {"bench": "export", "case": "face_reconstruct", "backend": k, "ms_per_image": round(t * 1000, 2),
             "speedup_vs_dygraph": round(times["ppface3d dygraph"] / t, 3), "threads": THREADS,
             "image": s, "load": os.getloadavg()[0]}
        if k != "ppface3d dygraph":
            d["psnr_vs_dygraph"] = round(psnr(outs["ppface3d dygraph"], outs[k]), 1)
        print(json.dumps(jsonable(d)), flush=True)


SIZE_CONFIGS = ["ldm/class2img_digits.yml", "ldm/uncond_digits.yml", "ldm/txt2img_shapes.yml",
                "ldm/txt2img_shapes_minilm.yml", "ldm/layout2img_shapes.yml", "ldm/inpaint_shapes.yml",
                "ldm/sr_shapes.yml", "ldm/sr_shapes_pixel.yml", "deca.yml", "deca_release.yml"]


def case_sizes(tmp, configs=None):
    """Every default config with random weights (sizes and parity do not depend on their values)
    exported to Paddle and ONNX: one JSON line per component (bytes on disk, worst PSNR)."""
    from ppengine import load_config
    from ppengine.trainer import build_model

    for name in configs or SIZE_CONFIGS:
        over = ["model.autoencoder.weights=null"] if name.startswith("ldm/") and "pixel" not in name else []
        cfg = load_config(os.path.join(ROOT, "configs", name), over)
        model = _randomize(build_model(cfg), 5)
        for n, p in model.named_parameters():
            if n.endswith("_variance"):
                p.set_value(p.abs() + 0.5)
        if hasattr(model, "ae_ready"):
            model.ae_ready.set_value(paddle.to_tensor([1.0]))
            model.scale.scale_factor.set_value(paddle.to_tensor([0.8]))
        t0 = time.time()
        m = export(model, cfg, os.path.join(tmp, "sizes"), targets=["paddle", "onnx"], log=lambda s: None)
        for comp, e in m["components"].items():
            worst = {t: min(r["psnr"] for r in res.values()) for t, res in e["parity"].items()}
            print(json.dumps(jsonable({"bench": "export_sizes", "config": name, "component": comp,
                                       "inputs": {i["name"]: i["shape"] for i in e["inputs"]},
                                       "outputs": {o["name"]: o["shape"] for o in e["outputs"]},
                                       "bytes": e["size_bytes"], "psnr": worst,
                                       "export_seconds": e["export_seconds"]})), flush=True)
        print(json.dumps({"bench": "export_sizes", "config": name, "total_seconds": round(time.time() - t0, 1),
                          "load": os.getloadavg()[0]}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="sd,digits,face")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--configs", default=None, help="sizes case: comma-separated configs (default: all)")
    p.add_argument("--digits-run", default=os.path.join(ROOT, "output", "ldm", "class2img_digits"),
                   help="a trained class2img_digits run for the digits case (default output/ldm/class2img_digits; "
                        "random weights when absent)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        for case in a.cases.split(","):
            if case == "sd":
                case_sd(a.steps, a.repeats, tmp)
            elif case == "digits":
                case_digits(a.steps, a.repeats, tmp, a.digits_run)
            elif case == "face":
                case_face(a.repeats, tmp)
            elif case == "sizes":
                case_sizes(tmp, a.configs.split(",") if a.configs else None)
            else:
                raise SystemExit(f"unknown case {case!r}: sd, digits, face, sizes")


if __name__ == "__main__":
    main()
