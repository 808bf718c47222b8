"""`make demo`: the library's showcase on its embedded defaults (no downloads, CPU).

1. the engine trains its toy model (config + checkpoints + VisualDL logs),
2. ppface3d fits FLAME to a real photo (skimage's astronaut) through the differentiable renderer,
3. ppldm runs its latent-diffusion demo.

Outputs go under ``output/demo/`` (override with --output).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ppengine.quiet import quiet  # noqa: E402

quiet()  # third-party chatter off (unless --verbose), before the heavy imports


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/demo")
    p.add_argument("--only", choices=["engine", "face3d", "ldm"], default=None)
    a = p.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    steps = []
    if a.only in (None, "engine"):
        def engine():
            import ppengine.toy  # noqa: F401
            from ppengine import Trainer, load_config

            cfg = load_config(os.path.join(root, "configs", "toy.yml"), [f"train.output={a.output}/engine"])
            Trainer(cfg).train()
            return f"{a.output}/engine (config.yml, train.log, vdl/, ckpt_*/, best.safetensors)"
        steps.append(("engine: toy training run", engine))
    if a.only in (None, "face3d"):
        def face3d():
            from ppface3d.apps.demo import demo

            return demo(os.path.join(a.output, "face3d"))
        steps.append(("ppface3d: FLAME fit to a photo", face3d))
    if a.only in (None, "ldm"):
        def ldm():
            from ppldm.pipelines.demo import demo

            # Without a trained model (configs/ldm/class2img_digits.yml) the demo trains a short one:
            # the pipeline end to end in a few CPU minutes; its samples are blurry by design.
            return demo(os.path.join(a.output, "ldm"), quick_ae_iters=60, quick_ldm_iters=150)
        steps.append(("ppldm: latent diffusion", ldm))
    for title, fn in steps:
        t0 = time.time()
        print(f"\n=== {title} ===", flush=True)
        where = fn()
        print(f"=== {title}: done in {time.time() - t0:.1f} s -> {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
