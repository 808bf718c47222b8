"""Sample an exported latent-diffusion folder with NumPy + onnxruntime only (no Paddle, no ppldm).

    python docs/examples/ddim_onnx.py EXPORT_FOLDER --class 3 7 --seed 0 --out samples.npy

Everything comes from EXPORT_FOLDER/manifest.json (written by tools/export.py --target onnx): the
component files and their input names, the DDIM scheduler's config, the guidance rule, the latent
scale factor and the conditioner's null input. Written for class-conditional and unconditional
models (the class_embedder conditioner); text and layout models differ only in what feeds the
conditioner (token ids from tokenizer/vocab.txt, box tokens).
The initial noise is NumPy's ``RandomState(seed).standard_normal((B, c, h, w))``, as ppldm draws it.
"""
import argparse
import json
import os

import numpy as np
import onnxruntime as ort


def load(folder, name, manifest):
    files = manifest["components"][name]["files"]["onnx"]
    return ort.InferenceSession(os.path.join(folder, files[0]), providers=["CPUExecutionProvider"])


def run_batched(session, feeds, batch):
    """The graphs have a fixed batch: run ``feeds`` (any batch) in pieces of ``batch``."""
    n = len(next(iter(feeds.values())))
    outs = []
    for s in range(0, n, batch):
        part = {k: v[s:s + batch] for k, v in feeds.items()}
        m = len(next(iter(part.values())))
        part = {k: np.concatenate([v, np.repeat(v[-1:], batch - m, 0)]) for k, v in part.items()}
        outs.append(session.run(None, part)[0][:m])
    return np.concatenate(outs)


def alphas_cumprod(cfg):
    T = cfg["num_train_timesteps"]
    if cfg["beta_schedule"] == "linear":
        betas = np.linspace(cfg["beta_start"], cfg["beta_end"], T, dtype=np.float64)
    elif cfg["beta_schedule"] == "scaled_linear":
        betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T, dtype=np.float64) ** 2
    else:
        raise SystemExit(f"beta_schedule {cfg['beta_schedule']!r} is not written in this example")
    return np.cumprod(1.0 - betas.astype(np.float32), dtype=np.float32)


def ddim_timesteps(cfg, steps):
    T = cfg["num_train_timesteps"]
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing == "leading":
        return (np.arange(steps) * (T // steps))[::-1] + cfg.get("steps_offset", 0)
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    return np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)


def sample(folder, labels, seed=0, steps=None, guidance=None):
    """Images (B, C, H, W) in [0, 1] for class ``labels`` (None: an unconditional model, one image)."""
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    pipe, comps = manifest["pipeline"], manifest["components"]
    sch = pipe["scheduler"]
    cfg, steps = sch["config"], int(steps or sch["steps"])
    guidance = float(sch["guidance_scale"] if guidance is None else guidance)
    unet = load(folder, "unet", manifest)
    unet_batch = comps["unet"]["inputs"][0]["shape"][0]
    cond = pipe.get("conditioner")
    b = len(labels) if labels is not None else 1
    ctx = None
    if cond:
        embed = load(folder, cond["component"], manifest)
        emb_batch = comps[cond["component"]]["inputs"][0]["shape"][0]
        labels = np.asarray(labels, np.int64)
        null = np.full_like(labels, cond["null_label"])
        c = run_batched(embed, {"class_labels": labels}, emb_batch)
        u = run_batched(embed, {"class_labels": null}, emb_batch)
        guided = guidance != 1.0
        ctx = np.concatenate([u, c]) if guided else c                    # (2B | B, L, D)
        ctx = np.ascontiguousarray(ctx.transpose(0, 2, 1)[:, :, None, :])  # the UNet's (B, D, 1, L)
    else:
        guided = False
    lat = pipe["latent"]
    x = np.random.RandomState(seed).standard_normal((b, lat["channels"], lat["size"], lat["size"])).astype(np.float32)
    ac = alphas_cumprod(cfg)
    final = np.float32(1.0) if cfg.get("set_alpha_to_one", False) else ac[0]
    step = cfg["num_train_timesteps"] // steps
    for t in ddim_timesteps(cfg, steps):
        x_in = np.concatenate([x, x]) if guided else x
        feeds = {"sample": x_in, "timestep": np.full([len(x_in)], t, np.float32)}
        if ctx is not None:
            feeds["encoder_hidden_states"] = ctx
        out = run_batched(unet, feeds, unet_batch)
        if guided:
            out_u, out_c = np.split(out, 2)
            out = out_u + guidance * (out_c - out_u)
        a_t = ac[t]
        a_prev = ac[t - step] if t - step >= 0 else final
        if sch["prediction_type"] == "eps":
            x0, eps = (x - (1 - a_t) ** 0.5 * out) / a_t ** 0.5, out
        elif sch["prediction_type"] == "v":
            x0, eps = a_t ** 0.5 * x - (1 - a_t) ** 0.5 * out, a_t ** 0.5 * out + (1 - a_t) ** 0.5 * x
        else:  # x0
            x0, eps = out, (x - a_t ** 0.5 * out) / (1 - a_t) ** 0.5
        x = (a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps).astype(np.float32)   # DDIM, eta = 0
    if "vae_decoder" in comps:
        dec = load(folder, "vae_decoder", manifest)
        x = run_batched(dec, {"z": x / np.float32(lat["scale_factor"])}, comps["vae_decoder"]["inputs"][0]["shape"][0])
    return ((np.clip(x, -1, 1) + 1) / 2).astype(np.float32)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--class", dest="classes", nargs="+", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--out", default="samples.npy")
    a = p.parse_args()
    images = sample(a.folder, a.classes, a.seed, a.steps, a.guidance)
    np.save(a.out, images)
    print(f"{a.out}: {images.shape} in [0, 1]")
