"""A small token transformer trained from scratch (the encoder LDM used for text and layouts)."""
from __future__ import annotations

import paddle
import paddle.nn as nn


class TokenTransformer(nn.Layer):
    """Token ids [B, L] (+ optional key padding mask [B, L], True = real token) -> [B, L, dim].

    Learned token and position embeddings, ``depth`` pre-norm transformer encoder layers
    (``heads`` heads, GELU MLP of width ``4 * dim``) and a final LayerNorm.
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int = 128, depth: int = 2, heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.vocab_size, self.max_len, self.dim = int(vocab_size), int(max_len), int(dim)
        init = nn.initializer.Normal(std=0.02)
        self.token_emb = nn.Embedding(self.vocab_size, self.dim, weight_attr=paddle.ParamAttr(initializer=init))
        self.pos_emb = self.create_parameter([1, self.max_len, self.dim], default_initializer=init)
        layer = nn.TransformerEncoderLayer(self.dim, heads, 4 * self.dim, dropout=dropout, activation="gelu",
                                           normalize_before=True)
        self.encoder = nn.TransformerEncoder(layer, depth)
        # paddlenlp, once imported (in any order), replaces TransformerEncoder.forward with one that
        # reads `enable_recompute`; an encoder built before that import lacks it. Set it here.
        self.encoder.enable_recompute = False
        self.norm = nn.LayerNorm(self.dim)

    def forward(self, ids: paddle.Tensor, keep: paddle.Tensor = None, extra: paddle.Tensor = None) -> paddle.Tensor:
        """``extra`` [B, L, dim]: added to the token + position embeddings (fixed codes of a token's meaning)."""
        L = ids.shape[1]
        x = self.token_emb(ids) + self.pos_emb[:, :L]
        if extra is not None:
            x = x + extra.astype(x.dtype)
        mask = None
        if keep is not None:
            # additive attention mask [B, 1, 1, L]: 0 for real tokens, -1e4 for padding
            mask = ((1.0 - keep.astype(x.dtype)) * -1e4).unsqueeze([1, 2])
        return self.norm(self.encoder(x, src_mask=mask))
