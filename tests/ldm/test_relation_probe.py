"""The relation probe: reversed captions invert the relation, and the loss it reports responds
to the caption (same noise for every variant, deterministic)."""
import numpy as np
import paddle
import pytest
from diagnostics_loader import load_tool

import ppldm  # noqa: F401
from ppldm.data.shapes import ShapesWorld
from ppldm.metrics.shapes import check_caption, parse_caption
from ppldm.models.ldm import LatentDiffusion

_probe = load_tool("relation_probe")  # tools/diagnostics/relation_probe.py
main, relation_losses, reversed_caption = _probe.main, _probe.relation_losses, _probe.reversed_caption


def test_reversed_caption_inverts_only_the_relation():
    ds = ShapesWorld("val", size=32, num_samples=60)
    n = 0
    for i in range(60):
        it = ds[i]
        objs, rel = parse_caption(it["caption"])
        if rel is None:
            with pytest.raises(ValueError, match="no relation"):
                reversed_caption(it["caption"])
            continue
        rev = reversed_caption(it["caption"])
        objs2, rel2 = parse_caption(rev)
        assert objs2 == objs and rel2 != rel and reversed_caption(rev) == it["caption"]
        img = (it["image"].transpose(1, 2, 0) + 1) / 2
        n += check_caption(img, it["caption"])["relation"] == 1.0 and check_caption(img, rev)["relation"] == 0.0
    assert n >= 15  # the checker reads the true relation and rejects the reversed one on real scenes


def test_relation_losses_share_noise_and_see_the_caption():
    paddle.seed(0)
    m = LatentDiffusion(autoencoder={"type": "identity", "in_channels": 3}, scale_factor=1.0,
                        unet={"block_channels": [16, 32], "layers_per_block": 1, "attention_resolutions": [1, 2],
                              "head_channels": 16, "norm_groups": 8},
                        conditioner={"type": "TextTransformer", "dim": 16, "depth": 1, "heads": 2, "max_length": 16})
    m.eval()
    ds = ShapesWorld("val", size=32, num_samples=40)
    items = [it for it in (ds[i] for i in range(40)) if parse_caption(it["caption"])[1]][:6]
    x = paddle.to_tensor(np.stack([it["image"] for it in items]))
    caps = [it["caption"] for it in items]
    a = relation_losses(m, x, caps, timesteps=(200, 600))
    b = relation_losses(m, x, caps, timesteps=(200, 600))
    assert a == b and [r["t"] for r in a] == [200, 600]
    # the captions reach the UNet: an untrained model's loss changes with the relation word
    assert all(abs(r["reversed"] - r["true"]) > 1e-7 and abs(r["empty"] - r["true"]) > 1e-7 for r in a)


def test_relation_probe_cli_needs_a_text_model(tmp_path):
    from ppengine.errors import ConfigError

    with pytest.raises(ConfigError, match="text-conditioned"):
        main(["-c", "configs/ldm/class2img_digits.yml", "--weights", str(tmp_path / "none.safetensors")])
