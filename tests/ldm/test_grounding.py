"""Token grounding loss (TokenCompose) for text-to-image: phrase tokens, the loss against a numpy
reference and finite differences, the shapes world's phrase masks, and the LatentDiffusion hook."""
import numpy as np
import paddle
import pytest

import ppldm  # noqa: F401
from ppengine.data import collate
from ppengine.errors import ConfigError, InputError
from ppldm.conditioners.text import WordPieceTokenizer
from ppldm.data.shapes import COLORS, ShapesWorld
from ppldm.metrics.shapes import parse_caption
from ppldm.models.grounding import (
    cross_attentions,
    grounding_loss,
    grounding_pixel_loss,
    keep_cross_attention,
    phrase_token_mask,
)
from ppldm.models.ldm import LatentDiffusion


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer(max_length=16)


def test_phrase_tokens_are_the_phrases_words(tok):
    caps = ["a magenta triangle left of a cyan circle", "a red square above a red circle", "", "a red square"]
    phrases = ["magenta triangle|cyan circle", "red square|red circle", "red circle", "red circle"]
    m = phrase_token_mask(tok, caps, phrases, 2)
    ids, _ = tok(caps)
    vocab = {v: k for k, v in tok.tok.vocab.token_to_idx.items()}

    def words(b, k):
        return tok.tok.convert_tokens_to_string([vocab[int(i)] for i in ids[b][m[b, k] > 0]])

    assert words(0, 0) == "magenta triangle" and words(0, 1) == "cyan circle"
    # "red" occurs in both phrases: the second phrase is found after the first one
    assert words(1, 0) == "red square" and words(1, 1) == "red circle"
    assert np.where(m[1, 1])[0].min() > np.where(m[1, 0])[0].max()
    assert m[2].sum() == 0            # empty (dropped) caption: no tokens
    assert m[3].sum() == 0            # a phrase the caption does not hold: skipped, not guessed


def _pooled(masks, s):
    side = int(round(s ** 0.5))
    f = masks.shape[-1] // side
    return masks.reshape(masks.shape[0], masks.shape[1], side, f, side, f).mean((3, 5)).reshape(*masks.shape[:2], s)


def _reference_loss(probs, tokens, masks):
    """Loop form of the token loss, with the masks box-averaged to each map's side in numpy."""
    total = 0.0
    for w in probs:
        a = w.mean(1)                                              # (B, S, M)
        b_, s, m_ = a.shape
        pooled = _pooled(masks, s)
        num = den = 0.0
        for b in range(b_):
            for k in range(tokens.shape[1]):
                mk = pooled[b, k] / max(pooled[b, k].max(), 1e-6)
                for i in range(m_):
                    if tokens[b, k, i]:
                        r = (a[b, :, i] * mk).sum() / a[b, :, i].sum()
                        num += (1 - r) ** 2
                        den += 1
        total += num / den
    return total / len(probs)


def _reference_pixel_loss(probs, tokens, masks):
    """Loop form of the per-phrase pixel BCE."""
    total = 0.0
    for w in probs:
        a = w.mean(1)
        b_, s, _ = a.shape
        pooled = _pooled(masks, s)
        terms = []
        for b in range(b_):
            for k in range(tokens.shape[1]):
                if tokens[b, k].sum() == 0:
                    continue
                share = np.clip(sum(a[b, :, i] for i in np.where(tokens[b, k])[0]), 1e-6, 1 - 1e-6)
                m = pooled[b, k]
                terms.append(-(m * np.log(share) + (1 - m) * np.log(1 - share)).mean())
        total += np.mean(terms)
    return total / len(probs)


def _random_case(seed=0):
    rng = np.random.default_rng(seed)
    probs = []
    for side in (4, 2):
        logits = rng.normal(size=(2, 3, side * side, 6))
        probs.append(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    tokens = np.zeros((2, 2, 6), np.float32)
    tokens[0, 0, 1:3] = 1
    tokens[0, 1, 4] = 1
    tokens[1, 0, 2] = 1
    masks = rng.uniform(size=(2, 2, 8, 8)).astype(np.float32) * (rng.uniform(size=(2, 2, 8, 8)) > 0.6)
    return probs, tokens, masks


@pytest.mark.parametrize("fn,ref_fn", [(grounding_loss, _reference_loss), (grounding_pixel_loss, _reference_pixel_loss)])
def test_grounding_losses_match_reference_and_finite_differences(fn, ref_fn):
    probs, tokens, masks = _random_case()
    pt = [paddle.to_tensor(p, dtype="float64") for p in probs]
    for p in pt:
        p.stop_gradient = False
    loss = fn(pt, paddle.to_tensor(tokens), paddle.to_tensor(masks))
    ref = ref_fn(probs, tokens, masks)
    assert abs(float(loss) - ref) < 1e-5 * max(1.0, abs(ref))
    loss.backward()
    g = pt[1].grad.numpy()
    eps = 1e-6
    for idx in [(0, 0, 1, 1), (0, 2, 3, 4), (1, 1, 0, 2), (1, 0, 2, 5)]:
        hi = [p.copy() for p in probs]
        lo = [p.copy() for p in probs]
        hi[1][idx] += eps
        lo[1][idx] -= eps
        fd = (ref_fn(hi, tokens, masks) - ref_fn(lo, tokens, masks)) / (2 * eps)
        assert abs(fd - g[idx]) < 1e-4 * max(1.0, abs(fd)), (idx, fd, g[idx])


def test_grounding_loss_is_zero_when_attention_sits_on_the_object():
    masks = np.zeros((1, 1, 4, 4), np.float32)
    masks[0, 0, :2, :2] = 1.0
    w = np.full((1, 1, 16, 3), 1.0 / 3, np.float32)
    on = w.copy()
    on[0, 0, :, 1] = 0.0
    on[0, 0, [0, 1, 4, 5], 1] = 0.5             # token 1 attended only from the object's cells
    tokens = np.zeros((1, 1, 3), np.float32)
    tokens[0, 0, 1] = 1
    t, m = paddle.to_tensor(tokens), paddle.to_tensor(masks)
    assert float(grounding_loss([paddle.to_tensor(on)], t, m)) < 1e-10
    assert abs(float(grounding_loss([paddle.to_tensor(w)], t, m)) - 0.75 ** 2) < 1e-6   # uniform: 4 of 16 cells
    assert float(grounding_loss([paddle.to_tensor(w)], paddle.zeros([1, 1, 3]), m)) == 0.0
    # pixel loss: a phrase holding all the attention inside its object and none outside is best
    full = np.zeros((1, 1, 16, 3), np.float32)
    full[0, 0, :, 0] = 1.0
    full[0, 0, [0, 1, 4, 5], 0] = 0.0
    full[0, 0, [0, 1, 4, 5], 1] = 1.0
    best = float(grounding_pixel_loss([paddle.to_tensor(full)], t, m))
    assert best < 1e-4 and best < float(grounding_pixel_loss([paddle.to_tensor(w)], t, m)) - 0.5


def test_shapes_phrase_masks_follow_the_caption_order():
    ds = ShapesWorld("train", size=32, num_samples=40, grounding=True, swap_captions=True)
    swapped = 0
    for i in range(40):
        it = ds[i]
        objs, rel = parse_caption(it["caption"])
        phrases = it["phrases"].split("|")
        assert phrases == [f"{c} {s}" for c, s in objs]
        assert it["phrase_masks"].shape == (2, 32, 32)
        img = (it["image"].transpose(1, 2, 0) + 1) / 2
        for k, (color, _) in enumerate(objs):
            inside = it["phrase_masks"][k] > 0.99
            assert inside.sum() > 10
            assert np.abs(img[inside].mean(0) - np.asarray(COLORS[color])).max() < 0.05
        if len(objs) == 1:
            assert it["phrase_masks"][1].sum() == 0
        first = ds.scene(i).objects[0]
        swapped += rel is not None and objs[0] != (first.color, first.shape)
    assert swapped > 0          # some captions were read from the second object, masks reordered with them


def _tiny(**kw):
    return LatentDiffusion(autoencoder={"type": "identity", "in_channels": 3}, scale_factor=1.0,
                           unet={"block_channels": [16, 32], "layers_per_block": 1, "attention_resolutions": [1, 2],
                                 "head_channels": 16, "norm_groups": 8, "position_encoding": "sincos"},
                           conditioner={"type": "TextTransformer", "dim": 16, "depth": 1, "heads": 2,
                                        "max_length": 16}, cond_drop_prob=0.0, **kw)


def test_ldm_grounding_loss_trains_the_phrase_tokens():
    paddle.seed(0)
    m = _tiny(grounding={"token": 1.0, "pixel": 0.5})
    m.train()
    ds = ShapesWorld("train", size=16, num_samples=8, grounding=True)
    batch = collate([ds[i] for i in range(8)])
    out = m(batch)
    parts = m.losses(batch, out)
    total = float(parts["diffusion_loss"]) + float(parts["grounding_token"]) + 0.5 * float(parts["grounding_pixel"])
    assert abs(float(parts["loss"]) - total) < 1e-5
    assert 0.0 < float(parts["grounding_token"]) < 1.0 and float(parts["grounding_pixel"]) > 0.0
    assert all(layer.probs is None and not layer.keep_probs for layer in cross_attentions(m.unet))  # released
    # the grounding loss alone reaches the text encoder's embeddings of the phrase words
    m.clear_gradients()
    parts["grounding_token"].backward()
    emb = m.conditioner.transformer.token_emb.weight.grad.numpy()
    used = {t for it in (ds[i] for i in range(8)) for t in m.conditioner.tokenizer.piece_ids(it["phrases"].replace("|", " "))}
    assert all(np.abs(emb[t]).sum() > 0 for t in used)
    # training with it raises the share of the phrases' attention on their objects
    opt = paddle.optimizer.Adam(3e-3, parameters=m.parameters())
    first = float(parts["grounding_token"])
    for _ in range(30):
        out = m(batch)
        out["grounding_token"].backward()
        opt.step()
        opt.clear_grad()
    assert float(m(batch)["grounding_token"]) < 0.7 * first


def test_ldm_grounding_needs_text_and_phrases():
    with pytest.raises(ConfigError, match="text conditioner"):
        LatentDiffusion(autoencoder={"type": "identity", "in_channels": 3}, grounding={"token": 1.0},
                        unet={"block_channels": [16, 32], "layers_per_block": 1, "attention_resolutions": [2],
                              "head_channels": 16, "norm_groups": 8},
                        conditioner={"type": "ClassEmbedder", "n_classes": 10, "embed_dim": 16})
    with pytest.raises(ConfigError, match="unknown key"):
        _tiny(grounding={"tokens": 1.0})
    m = _tiny(grounding={"token": 1.0})
    m.train()
    batch = collate([ShapesWorld("train", size=16, num_samples=2)[i] for i in range(2)])
    with pytest.raises(InputError, match="grounding: true"):
        m(batch)
    m.eval()                      # sampling and eval do not need phrases
    assert "grounding_token" not in m(batch)
    with keep_cross_attention(m.unet) as layers:
        assert layers and all(layer.keep_probs for layer in layers)


def test_ldm_grounding_needs_the_standard_attention():
    m = _tiny(grounding={"pixel": 1.0})
    from ppldm.models.attention import set_attention_type

    set_attention_type(m.unet, "split_einsum")
    m.train()
    batch = collate([ShapesWorld("train", size=16, num_samples=2, grounding=True)[i] for i in range(2)])
    with pytest.raises(ConfigError, match="attention_type: standard"):
        m(batch)
