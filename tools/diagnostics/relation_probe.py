"""Does a text-to-image LatentDiffusion use the relation words of its captions? (docs/ldm_tasks.md)

    python tools/diagnostics/relation_probe.py --weights output/ldm/txt2img_shapes [--split val] [-n 96]

For ``n`` two-object scenes of the shapes world it computes the model's denoising loss on the
true latents at several timesteps (the same noise for every caption) with three captions per
image: the true one ("a red circle left of a blue square"), the same caption with the relation
reversed ("... right of ..."), and the empty caption. A model that follows relations has a
clearly lower loss with the true caption than with the reversed one; equal losses mean the
relation word is ignored, whatever the sampled images seem to show (fixed sampling noise can
make an ignoring model look systematically right or wrong on a small set).
"""
from __future__ import annotations

import itertools
import os
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diag_common import load, parser  # noqa: E402

INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def reversed_caption(caption: str) -> str:
    """"a red circle left of a blue square" -> "a red circle right of a blue square"."""
    from ppldm.data.shapes import caption_text
    from ppldm.metrics.shapes import parse_caption

    objs, rel = parse_caption(caption)
    if rel is None:
        raise ValueError(f"{caption!r} names no relation")
    return caption_text(objs, INVERSE[rel])


def relation_losses(model, images, captions: List[str], timesteps: Sequence[int] = (100, 300, 500, 700, 900),
                    seed: int = 0) -> List[Dict[str, float]]:
    """Per timestep: mean denoising loss of ``model`` on ``images`` (B, 3, H, W) in [-1, 1] with
    the true, the relation-reversed and the empty captions (one noise draw shared by all three)."""
    import paddle

    variants = {"true": list(captions), "reversed": [reversed_caption(c) for c in captions],
                "empty": [""] * len(captions)}
    rows = []
    with paddle.no_grad():
        z = model.scale.scale(model.encode(images))
        for t in timesteps:
            paddle.seed(seed + int(t))
            noise = paddle.randn(z.shape, dtype=z.dtype)
            tt = paddle.full([z.shape[0]], int(t), dtype="int64")
            row = {"t": int(t)}
            for name, caps in variants.items():
                out = model.diffusion.training_losses(model.unet, z, t=tt, noise=noise, context=model.conditioner(caps))
                row[name] = float(out["loss"])
            rows.append(row)
    return rows


def main(argv=None) -> int:
    import numpy as np
    import paddle

    from ppengine.errors import ConfigError
    from ppengine.io import atomic_write_json
    from ppldm.data.shapes import ShapesWorld
    from ppldm.metrics.shapes import parse_caption

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--split", default="val", choices=sorted(ShapesWorld.SPLIT_OFFSET))
    p.add_argument("-n", type=int, default=96, help="two-object scenes to score")
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    a = p.parse_args(argv)

    def text_model(m, cfg):
        if getattr(m, "conditioner", None) is None or m.conditioner.key != "caption":
            raise ConfigError(f"{cfg.path}: relation_probe needs a text-conditioned model (model.conditioner on "
                              "captions)")

    m, cfg = load(a, text_model)
    val = (cfg.get("data") or {}).get("val") or {}
    ds = ShapesWorld(a.split, size=int(val.get("size", m.sample_size)), num_samples=20 * a.n)
    two = (it for it in map(ds.__getitem__, range(len(ds))) if parse_caption(it["caption"])[1] is not None)
    items = list(itertools.islice(two, a.n))
    images = paddle.to_tensor(np.stack([it["image"] for it in items]))
    rows = relation_losses(m, images, [it["caption"] for it in items])
    print(f"{len(items)} two-object {a.split} scenes; mean denoising loss per timestep")
    print(f"{'t':>5} {'true':>9} {'reversed':>9} {'empty':>9}  reversed - true")
    for r in rows:
        print(f"{r['t']:>5} {r['true']:9.5f} {r['reversed']:9.5f} {r['empty']:9.5f}  {r['reversed'] - r['true']:+.5f}")
    if a.json:
        atomic_write_json(a.json, {"config": cfg.path, "weights": cfg["model"].get("weights", a.weights),
                                   "n": len(items), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
