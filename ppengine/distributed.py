"""Data-parallel set-up for ``python -m paddle.distributed.launch --nproc_per_node N``.

Outside the launcher (world size 1) everything here is a no-op.
"""
from __future__ import annotations

import os

import paddle


def world_size_from_env() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", os.environ.get("WORLD_SIZE", "1")))


def init():
    """Initialise the process group when launched with several ranks. -> (world_size, rank)."""
    if world_size_from_env() > 1:
        import paddle.distributed as pdist

        if not pdist.is_initialized():
            pdist.init_parallel_env()
        return pdist.get_world_size(), pdist.get_rank()
    return 1, 0


def wrap(model: paddle.nn.Layer, world_size: int):
    """``paddle.DataParallel(model)`` when several ranks train, else the model itself.

    Gradients are all-reduced in ``backward`` of the wrapped forward; models with a custom
    ``train_step`` call their own sub-networks and are therefore trained per rank (their
    ``train_step`` must average gradients itself when run data parallel).
    """
    if world_size > 1:
        return paddle.DataParallel(model)
    return model
