"""Conditioners: class embedder, WordPiece + from-scratch transformer, pretrained MiniLM, layout tokens."""
import json
import os

import numpy as np
import paddle
import pytest

from ppengine.errors import ConfigError, InputError
from ppldm.conditioners import (
    CONDITIONERS,
    ClassEmbedder,
    LayoutEmbedder,
    MiniLMEncoder,
    TextTransformer,
    tokenize_boxes,
)
from ppldm.conditioners.text import minilm_dir


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder()


def _numpy_bert(w, cfg, ids, keep):
    """An independent numpy BERT forward on the Hugging Face weights (post-LN, exact GELU)."""
    from scipy.special import erf

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg["layer_norm_eps"]) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    L = ids.shape[1]
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L] \
        + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    H = cfg["num_attention_heads"]
    B, _, D = x.shape
    bias = (1.0 - keep[:, None, None, :]) * -1e4
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").reshape(B, L, H, D // H).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D // H) + bias
        a = np.exp(a - a.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(B, L, D)
        x = ln(x + lin(o, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    return x


def test_minilm_matches_numpy_bert_reference(minilm):
    from safetensors.numpy import load_file

    folder = minilm_dir()
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    cfg = json.load(open(os.path.join(folder, "config.json")))
    caps = ["a red circle left of a blue square", "cat"]
    ids, keep = minilm.tokenizer(caps)
    ref = _numpy_bert(w, cfg, ids, keep.astype(np.float64))
    got = minilm.hidden_states(caps).numpy()
    assert np.abs(got - ref)[keep].max() < 2e-4
    assert minilm(caps).shape == [2, 24, 384]
    assert all(p.stop_gradient for p in minilm.bert.parameters())


def test_minilm_embeddings_are_semantic(minilm):
    e = minilm.sentence_embedding(["a red circle", "a crimson round disc", "the stock market fell sharply"]).numpy()
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_minilm_finetune_and_projection(tmp_path):
    m = MiniLMEncoder(frozen=False, dim=32, max_length=8)
    out = m(["a blue square"])
    assert out.shape == [1, 8, 32]
    out.mean().backward()
    assert m.bert.embeddings.word_embeddings.weight.grad is not None
    with pytest.raises(InputError, match="not found"):
        MiniLMEncoder(path=str(tmp_path))


def test_text_transformer_wordpiece_and_null_drop():
    paddle.seed(0)
    t = TextTransformer(dim=32, depth=1, heads=2, max_length=12)
    ids, keep = t.tokenizer(["a red circle left of a blue square", ""])
    assert ids[0, 0] == 101 and keep[0].sum() == 10 and keep[1].sum() == 2  # [CLS] ... [SEP]
    a = t(["a red circle", "a red circle"], drop=np.array([False, True])).numpy()
    b = t(["", "a red circle"]).numpy()
    np.testing.assert_allclose(a[1], b[0], atol=1e-5)
    np.testing.assert_allclose(a[0], b[1], atol=1e-5)
    assert not np.allclose(a[0], a[1])
    # padding is masked: changing the ids at padded positions leaves the real tokens' outputs unchanged
    ids2 = ids.copy()
    ids2[~keep] = 1000
    o1 = t.transformer(paddle.to_tensor(ids), paddle.to_tensor(keep)).numpy()
    o2 = t.transformer(paddle.to_tensor(ids2), paddle.to_tensor(keep)).numpy()
    np.testing.assert_allclose(o1[keep], o2[keep], atol=1e-5)
    assert not np.allclose(o1[~keep], o2[~keep])
    with pytest.raises(InputError):
        t(np.zeros(3))


def test_class_embedder_null_and_range():
    c = ClassEmbedder(10, 16)
    out = c(np.array([3, -1, 3]), drop=np.array([False, False, True])).numpy()
    assert out.shape == (3, 1, 16)
    np.testing.assert_allclose(out[1], out[2])
    np.testing.assert_allclose(out[0, 0], c.embedding.weight.numpy()[3])
    with pytest.raises(InputError, match="out of range"):
        c(np.array([10]))


def test_layout_tokens_follow_the_grid():
    b = np.array([[[4, 0.0, 0.0, 1.0, 1.0], [2, 0.5, 0.25, 0.75, 1.0], [-1, 0, 0, 0, 0]]], np.float32)
    tok = tokenize_boxes(b, n_classes=18, grid=5)
    # cell(x, y) = round(4y)*5 + round(4x); class token = 25 + class; pad = 25 + 18
    assert tok.tolist() == [[29, 0, 24, 27, 1 * 5 + 2, 4 * 5 + 3, 43, 43, 43]]
    with pytest.raises(InputError):
        tokenize_boxes(np.array([[[18, 0, 0, 1, 1]]], np.float32), 18, 5)
    with pytest.raises(InputError):
        tokenize_boxes(np.array([[[1, 0, 0, 1.5, 1]]], np.float32), 18, 5)
    le = LayoutEmbedder(18, max_objects=3, grid=5, dim=16, depth=1, heads=2)
    ctx = le(b[:, :2])  # fewer boxes than max_objects are padded
    assert ctx.shape == [1, 9, 16]
    np.testing.assert_allclose(ctx.numpy(), le(b).numpy(), atol=1e-6)
    null = le(b, drop=np.array([True])).numpy()
    np.testing.assert_allclose(null, le(le.null(1)).numpy(), atol=1e-6)


def test_layout_coord_encoding_option():
    from ppldm.conditioners.layout import cell_sincos

    table = cell_sincos(9, 16)
    # cell r*9+c sits at (c, r)/8: channel 0 is sin(pi x), channel 8 sin(pi y)
    np.testing.assert_allclose(table[1 * 9 + 4, 0], np.sin(np.pi * 0.5), atol=1e-6)
    np.testing.assert_allclose(table[6 * 9 + 0, 8], np.sin(np.pi * 0.75), atol=1e-6)
    d = lambda i, j: float(((table[i] - table[j]) ** 2).sum())  # noqa: E731
    # along a row and a column from cell (0, 0): farther cells have farther codes (up to 4 cells)
    assert all(d(0, k) < d(0, k + 1) for k in range(4)) and all(d(0, 9 * k) < d(0, 9 * k + 9) for k in range(4))
    paddle.seed(0)
    off = LayoutEmbedder(18, max_objects=2, grid=5, dim=16, depth=1, heads=2)
    on = LayoutEmbedder(18, max_objects=2, grid=5, dim=16, depth=1, heads=2, coord_encoding="sincos")
    assert sorted(on.state_dict()) == sorted(off.state_dict())   # the fixed table is not saved
    on.set_state_dict(off.state_dict())
    b = np.array([[[4, 0.0, 0.0, 0.5, 0.5], [2, 0.5, 0.25, 0.75, 1.0]]], np.float32)
    assert float((on(b) - off(b)).abs().max()) > 1e-2
    # the null layout (pad tokens only) is unchanged by the option
    np.testing.assert_allclose(on(on.null(1)).numpy(), off(off.null(1)).numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="coord_encoding"):
        LayoutEmbedder(18, coord_encoding="learned")


def test_registry_builds_conditioners():
    c = CONDITIONERS.build({"type": "ClassEmbedder", "n_classes": 4, "embed_dim": 8})
    assert c.out_dim == 8 and c.key == "label"


def test_token_transformer_survives_paddlenlp_imported_after_it():
    """paddlenlp patches paddle.nn.TransformerEncoder on import; an encoder built before that
    import (the layout-to-image path through tools/train.py) must still run forward/backward."""
    import subprocess
    import sys

    code = ("import paddle\n"
            "from ppldm.conditioners.transformer import TokenTransformer\n"
            "m = TokenTransformer(vocab_size=50, max_len=8)\n"
            "import paddlenlp.transformers\n"
            "out = m(paddle.randint(0, 50, [2, 8]))\n"
            "out.sum().backward()\n"
            "print('shape', list(out.shape))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-1500:]
    assert "shape [2, 8, 128]" in r.stdout
