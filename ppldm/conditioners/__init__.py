"""Conditioners: class labels, text (from-scratch transformer or pretrained MiniLM) and layouts.

Each maps a raw batch entry to a cross-attention context [B, L, D]; see :mod:`.base`.
"""
from .base import CONDITIONERS, Conditioner
from .class_embedder import ClassEmbedder
from .layout import LayoutEmbedder, tokenize_boxes
from .minilm import MiniLMEncoder, load_bert_safetensors
from .text import TextTransformer, WordPieceTokenizer

__all__ = ["CONDITIONERS", "Conditioner", "ClassEmbedder", "LayoutEmbedder", "MiniLMEncoder", "TextTransformer",
           "WordPieceTokenizer", "load_bert_safetensors", "tokenize_boxes"]
