"""Non-trivial random weights for parity tests (fresh LayerNorm/GroupNorm defaults can hide
export and conversion bugs, so every parity test fills every tensor with noise), and the tiny
real CLIP tokenizer the Stable Diffusion tests share."""
import json
import os

import numpy as np
import paddle


def randomize(model, seed=0, scale=0.1, eval=True):
    """Fill every tensor of ``model``'s state with N(0, scale^2) noise from ``seed``."""
    rng = np.random.RandomState(seed)
    model.set_state_dict({k: paddle.to_tensor(rng.standard_normal(v.shape).astype("float32") * scale)
                          for k, v in model.state_dict().items()})
    if eval:
        model.eval()
    return model


def write_byte_level_tokenizer(folder):
    """A CLIP BPE vocabulary of the 256 byte symbols (no merges): a real, tiny tokenizer.
    Returns its vocabulary size."""
    from paddlenlp.transformers.clip.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return len(vocab)
