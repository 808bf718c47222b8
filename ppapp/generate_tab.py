"""Generate tab: sample the trained ppldm runs found under ``output/ldm/*/`` (a run folder holds
the ``config.yml`` the trainer wrote and ``final.safetensors``), loaded with
:func:`ppengine.load_for_inference`; ``model.generate`` returns float (N, 3, H, W) in [0, 1].

Class-conditional, text-conditional and unconditional runs are sampled here; layout,
inpainting and super-resolution runs are listed with the command line that samples them.
"""
from __future__ import annotations

import argparse
import os
import uuid
from typing import Dict, List, Optional

from ppengine.errors import InputError

from .common import MODEL_LOCK, Sessions

_MODELS: Dict[str, object] = {}


def find_runs(root: str) -> List[str]:
    """Run folders under ``root`` with a config.yml and final.safetensors, sorted by name."""
    if not root or not os.path.isdir(root):
        return []
    out = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if os.path.isfile(os.path.join(d, "config.yml")) and os.path.isfile(os.path.join(d, "final.safetensors")):
            out.append(d)
    return out


def load_run(run: str):
    """The run's model (cached), in eval mode."""
    if run not in _MODELS:
        import ppldm  # noqa: F401  (registers the diffusion models)
        from ppengine import load_for_inference

        model, _ = load_for_inference(run)
        if type(model).__name__ != "LatentDiffusion":
            raise InputError(f"{run}: a {type(model).__name__} is not a latent-diffusion model")
        _MODELS[run] = model
    return _MODELS[run]


def task_of(model) -> str:
    """'class', 'text', 'layout', 'inpaint', 'sr' or 'uncond'."""
    if getattr(model, "concat", None) == "inpaint":
        return "inpaint"
    if getattr(model, "concat", None) == "lowres":
        return "sr"
    cond = getattr(model, "conditioner", None)
    if cond is None:
        return "uncond"
    return {"label": "class", "caption": "text", "boxes": "layout"}.get(getattr(cond, "key", ""), "other")


def parse_classes(text: str) -> List[int]:
    try:
        vals = [int(v) for v in str(text or "").replace(",", " ").split()]
    except ValueError:
        raise InputError(f"classes {text!r}: give whole numbers separated by spaces, e.g. 0 1 2 3") from None
    if not vals:
        raise InputError("this is a class-conditional model: give one or more classes, e.g. 0 1 2 3")
    return vals


def generate(sessions: Sessions, run: str, folder: Optional[str], classes: str = "", prompts: str = "",
             num: int = 4, steps: int = 25, guidance: float = 3.0, seed: int = 0, progress=None):
    """Sample a run -> ``(folder, grid_png, sample_pngs)`` in the visitor's folder."""
    import paddle

    from ppengine.io import image_grid, save_png, to_uint8
    from ppldm.pipelines.cli import build_batch

    folder = sessions.ensure(folder)
    if not run:
        raise InputError("no trained diffusion run: train one (e.g. python tools/train.py -c "
                         "configs/ldm/class2img_digits.yml) and restart the app")
    num = max(1, min(16, int(num)))
    if int(steps) < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    with MODEL_LOCK:
        model = load_run(run)
        task = task_of(model)
        if task not in ("class", "text", "uncond"):
            raise InputError(f"{os.path.basename(run)} is a {task} model: sample it with "
                             f"python tools/infer.py ldm --weights {run} (the app samples class, text and "
                             f"unconditional models)")
        a = argparse.Namespace(num=num, classes=parse_classes(classes) if task == "class" else None,
                               prompt=[p.strip() for p in str(prompts or "").splitlines() if p.strip()] or None,
                               boxes=None, image=None, mask=None, lowres=None)
        batch, nrow = build_batch(model, a, model.sample_size)
        if progress is not None:
            progress(0.05, desc=f"sampling {os.path.basename(run)}")
        x = model.generate(batch, n=num, guidance_scale=float(guidance), steps=int(steps), seed=int(seed),
                           progress=True)
    x = paddle.clip(x, 0.0, 1.0)
    job = os.path.join(folder, "generate_" + uuid.uuid4().hex[:8])
    samples = [save_png(os.path.join(job, f"sample_{i:03d}.png"), im) for i, im in enumerate(to_uint8(x))]
    size = int(x.shape[-1])
    grid = save_png(os.path.join(job, "grid.png"), image_grid(x, nrow=nrow, upscale=max(1, 128 // size), pad=1))
    return folder, grid, samples


def build(gr, sessions: Sessions, runs_root: str, state):
    from ppengine.errors import PPError

    runs = find_runs(runs_root)
    with gr.Tab("Generate 生成"):
        if not runs:
            gr.Markdown(f"No trained diffusion runs under `{runs_root}` (a run folder holds `config.yml` and "
                        "`final.safetensors`). Train one, e.g. `python tools/train.py -c "
                        "configs/ldm/ae_digits.yml` then `-c configs/ldm/class2img_digits.yml`, and restart the app.")
            return
        with gr.Row():
            with gr.Column(scale=1):
                run = gr.Dropdown([(os.path.basename(r), r) for r in runs], value=runs[0], label="Trained run",
                                  elem_id="gen-run")
                classes = gr.Textbox("0 1 2 3", label="Classes (class-conditional runs)", elem_id="gen-classes")
                prompts = gr.Textbox("", label="Prompts, one per line (text-conditional runs)", lines=2)
                num = gr.Slider(1, 16, value=4, step=1, label="Samples per condition")
                steps = gr.Slider(1, 100, value=25, step=1, label="Sampler steps")
                guidance = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="Guidance scale")
                seed = gr.Number(0, precision=0, label="Seed")
                go = gr.Button("Generate", variant="primary", elem_id="gen-run-button")
                status = gr.Textbox(label="Messages", interactive=False, elem_id="gen-status")
            with gr.Column(scale=2):
                grid = gr.Image(label="Samples", type="filepath", interactive=False, elem_id="gen-grid")
                files = gr.File(label="Sample PNGs", file_count="multiple", interactive=False)

        def handler(r, c, p, n, st, g, sd, folder, progress=gr.Progress(track_tqdm=True)):
            try:
                folder, g_png, pngs = generate(sessions, r, folder, c, p, n, st, g, sd, progress=progress)
            except PPError as e:
                return folder, None, [], f"error: {e}"
            except Exception as e:  # keep serving; one line in the page
                return folder, None, [], f"failed: {type(e).__name__}: {e}"
            return folder, g_png, pngs, f"{len(pngs)} samples"

        go.click(handler, [run, classes, prompts, num, steps, guidance, seed, state], [state, grid, files, status])
