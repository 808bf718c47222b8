"""Token and pixel grounding losses for text-to-image (TokenCompose, Wang et al., CVPR 2024).

A text-to-image model trained only on the denoising loss can learn *what* a caption names and
still ignore *where* ("left of" vs "right of": docs/ldm_tasks.md, the relation probe). Here the
cross-attention maps of a caption's object phrases are supervised with the objects' masks: for
every token ``i`` of phrase ``k`` and every cross-attention layer (heads averaged),

    ratio = sum_u A(u, i) m_k(u) / sum_u A(u, i),     loss = mean (1 - ratio)^2

where ``A(u, i)`` is the attention of pixel ``u`` to token ``i`` and ``m_k`` the object's coverage
pooled to the layer's resolution (scaled to a maximum of 1). A token's attention can only land on
its object if the token's key says where the object is, and that is decided by the rest of the
caption (the relation word and the order of the names), so the text encoder has to read it.

The pixel loss (TokenCompose's second term, here per phrase) is the binary cross-entropy between
a pixel's total attention to phrase ``k``'s tokens, ``sum_{i in k} A(u, i)``, and the object's
pooled coverage ``m_k(u)``: inside an object the pixels attend to its phrase, elsewhere not, so
no other token (which a contextual encoder may also fill with the colour) paints the object.

Batches carry ``phrases`` (per sample one string, the object phrases in caption order joined by
``|``: ``"red circle|blue square"``) and ``phrase_masks`` ([B, K, H, W] coverage in [0, 1], row
``k`` for phrase ``k``; rows past the phrases are ignored). ``ShapesWorld(grounding=True)`` and
``ImageFolderJSONL(grounding=True)`` (phrase boxes from the JSONL) make both.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import List, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .attention import BasicTransformerBlock

log = logging.getLogger(__name__)
PHRASE_SEP = "|"


def phrase_token_mask(tokenizer, captions: Sequence[str], phrases: Sequence[str], n_phrases: int) -> np.ndarray:
    """[B, n_phrases, max_length] float32: 1 where token ``j`` of caption ``b`` belongs to phrase ``k``.

    ``tokenizer`` is a :class:`ppldm.conditioners.text.WordPieceTokenizer`; ``phrases[b]`` holds
    caption ``b``'s phrases in order, ``|``-separated. Each phrase's word pieces are looked up in
    the tokenized caption after the previous phrase's match; a phrase that is not there (an empty,
    dropped or truncated caption) gets no tokens, and is logged once if the caption is not empty.
    """
    ids, _ = tokenizer(list(captions))
    out = np.zeros((len(captions), n_phrases, ids.shape[1]), np.float32)
    for b, (cap, ph) in enumerate(zip(captions, phrases)):
        start = 0
        for k, phrase in enumerate(p for p in ph.split(PHRASE_SEP) if p.strip()):
            if k >= n_phrases:
                break
            piece = tokenizer.piece_ids(phrase)
            at = _find(ids[b], piece, start)
            if at < 0:
                at = _find(ids[b], piece, 0)
            if at < 0:
                if cap.strip():
                    _warn_once(f"grounding: phrase {phrase!r} is not in the (tokenized) caption {cap!r}; skipped")
                continue
            out[b, k, at:at + len(piece)] = 1.0
            start = at + len(piece)
    return out


_warned = set()


def _warn_once(msg: str):
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)


def _find(seq: np.ndarray, sub: List[int], start: int) -> int:
    n = len(sub)
    if n == 0:
        return -1
    for i in range(start, len(seq) - n + 1):
        if list(seq[i:i + n]) == list(sub):
            return i
    return -1


def _heads_and_masks(w: paddle.Tensor, masks: paddle.Tensor):
    """Attention (B, heads, S, M) of a square map -> heads-averaged (B, S, M), and ``masks``
    (B, K, H, W) area-pooled to the map: (B, K, S)."""
    a = w.astype("float32").mean(axis=1)
    side = int(round(a.shape[1] ** 0.5))
    return a, F.adaptive_avg_pool2d(masks.astype("float32"), [side, side]).flatten(2)


def grounding_loss(probs: Sequence[paddle.Tensor], tokens: paddle.Tensor, masks: paddle.Tensor) -> paddle.Tensor:
    """TokenCompose's token loss (module docstring).

    Args:
        probs: cross-attention probabilities of square maps, each (B, heads, S, M), S = side^2.
        tokens: (B, K, M) 0/1, the tokens of phrase k.
        masks: (B, K, H, W) the phrases' coverage in [0, 1].
    Returns a scalar; 0 when no phrase has tokens.
    """
    tokens = tokens.astype("float32")

    def term(a, m):
        m = m / m.max(axis=2, keepdim=True).clip(min=1e-6)
        inside = paddle.einsum("bsm,bks->bkm", a, m)                           # (B, K, M)
        ratio = inside / a.sum(axis=1).unsqueeze(1).clip(min=1e-8)
        return (tokens * (1.0 - ratio) ** 2).sum()

    return _layer_mean(probs, masks, tokens.sum(), term)


def grounding_pixel_loss(probs: Sequence[paddle.Tensor], tokens: paddle.Tensor, masks: paddle.Tensor,
                         eps: float = 1e-6) -> paddle.Tensor:
    """TokenCompose's pixel loss per phrase (module docstring); arguments as :func:`grounding_loss`."""
    tokens = tokens.astype("float32")
    valid = (tokens.sum(axis=2) > 0).astype("float32")                         # (B, K)

    def term(a, m):
        share = paddle.einsum("bsm,bkm->bks", a, tokens).clip(eps, 1.0 - eps)
        bce = -(m * paddle.log(share) + (1.0 - m) * paddle.log(1.0 - share)).mean(axis=2)   # (B, K)
        return (bce * valid).sum()

    return _layer_mean(probs, masks, valid.sum(), term)


def _layer_mean(probs, masks, n, term) -> paddle.Tensor:
    """Mean over the layers of ``term(a, m) / n`` (:func:`_heads_and_masks`); 0 when ``n`` is 0."""
    if float(n) == 0.0:
        return paddle.zeros([], "float32")
    total = paddle.zeros([], "float32")
    for w in probs:
        total = total + term(*_heads_and_masks(w, masks)) / n
    return total / max(len(probs), 1)


def cross_attentions(unet: nn.Layer) -> List[nn.Layer]:
    """The cross-attention layers (``attn2``) of every transformer block of ``unet``."""
    return [blk.attn2 for blk in unet.sublayers() if isinstance(blk, BasicTransformerBlock)]


@contextmanager
def keep_cross_attention(unet: nn.Layer):
    """Within the block the cross-attention layers of ``unet`` keep their probabilities; yields
    the layer list (read ``layer.probs`` after the forward pass). Released on exit."""
    layers = cross_attentions(unet)
    for layer in layers:
        layer.keep_probs, layer.probs = True, None
    try:
        yield layers
    finally:
        for layer in layers:
            layer.keep_probs, layer.probs = False, None
