"""Data streams with a resumable position: (epoch, batch index within the epoch).

The order of each epoch comes from paddle's DistributedBatchSampler seeded by epoch, so a
resumed run skips exactly the batches it had already consumed (their indices only; no
sample is loaded twice), and under ``paddle.distributed.launch`` each rank reads its own
share of every epoch.
"""
from __future__ import annotations

import numbers

import numpy as np
import paddle


def collate(samples):
    """Stack a list of dict samples: arrays/numbers -> Tensors, anything else -> lists."""
    first = samples[0]
    if isinstance(first, dict):
        return {k: collate([s[k] for s in samples]) for k in first}
    if isinstance(first, (np.ndarray, numbers.Number, np.generic)) and not isinstance(first, bool):
        arr = np.stack([np.asarray(s) for s in samples])
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        return paddle.to_tensor(arr)
    if isinstance(first, paddle.Tensor):
        return paddle.stack(samples)
    return list(samples)


class _FixedBatches(paddle.io.BatchSampler):
    def __init__(self, batches):  # a fixed list of index batches; BatchSampler.__init__ not needed
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class _FixedShardSampler:
    """Rank ``r`` of ``w`` always reads items r, r + w, r + 2w, ... (the same share every epoch),
    shuffled within the share per epoch; every rank gets the same number of batches."""

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int, shuffle: bool, drop_last: bool):
        self.share = np.arange(rank, (n // world_size) * world_size, world_size)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __iter__(self):
        idx = np.random.default_rng([self.epoch, 7]).permutation(self.share) if self.shuffle else self.share
        bs = self.batch_size
        stop = len(idx) - len(idx) % bs if self.drop_last else len(idx)
        return iter([idx[i:i + bs].tolist() for i in range(0, stop, bs)])


class DataStream:
    """An endless iterator of batches with ``state()`` / ``load_state()`` for exact resume.

    ``fixed_shards``: with several ranks, each keeps the same share of the dataset every epoch
    (instead of a new share per epoch), so a dataset that generates and caches its items in
    memory (e.g. ``SyntheticFaces``) makes each item once, on one rank. A dataset with a
    ``prepare(indices)`` method is told, at the start of every epoch, the order in which its items
    will be read.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, drop_last: bool = True,
                 num_workers: int = 0, seed: int = 0, world_size: int = 1, rank: int = 0,
                 fixed_shards: bool = False):
        if len(dataset) < batch_size * world_size and drop_last:
            drop_last = False
        self.dataset = dataset
        if fixed_shards and world_size > 1:
            self.sampler = _FixedShardSampler(len(dataset), batch_size, world_size, rank, shuffle, drop_last)
        else:
            self.sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=batch_size,
                                                             num_replicas=world_size, rank=rank, shuffle=shuffle,
                                                             drop_last=drop_last)
        self.num_workers = num_workers
        self.seed = int(seed)
        self.epoch = 0
        self.pos = 0
        self._it = None

    def _start(self):
        self.sampler.set_epoch(self.seed * 100003 + self.epoch)
        batches = list(iter(self.sampler))[self.pos:]
        prepare = getattr(self.dataset, "prepare", None)
        if callable(prepare):  # a dataset that generates items may make the coming ones together
            prepare([i for b in batches for i in b])
        loader = paddle.io.DataLoader(self.dataset, batch_sampler=_FixedBatches(batches),
                                      num_workers=self.num_workers, collate_fn=collate)
        self._it = iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        for _ in range(2):
            if self._it is None:
                self._start()
            try:
                batch = next(self._it)
                self.pos += 1
                return batch
            except StopIteration:
                self.epoch += 1
                self.pos = 0
                self._it = None
        raise RuntimeError("the training dataset produced no batch: is it empty?")

    def state(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state):
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._it = None


def eval_loader(dataset, batch_size: int, num_workers: int = 0):
    """A plain in-order loader over the whole dataset (evaluation)."""
    sampler = paddle.io.BatchSampler(dataset, batch_size=batch_size, shuffle=False, drop_last=False)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate)
