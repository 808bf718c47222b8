"""Non-trivial random weights for parity tests (fresh LayerNorm/GroupNorm defaults can hide
export and conversion bugs, so every parity test fills every tensor with noise)."""
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
