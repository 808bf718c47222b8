"""DataStream shards: per-epoch shares (paddle's DistributedBatchSampler) and fixed shares."""
import numpy as np
import pytest

from ppengine.data import DataStream


class _Items:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": np.int64(i)}


def _epochs(stream, epochs, per_epoch):
    seen = [int(i) for _ in range(epochs * per_epoch) for i in next(stream)["index"].numpy()]
    return [seen[e * per_epoch * 4:(e + 1) * per_epoch * 4] for e in range(epochs)]


@pytest.mark.parametrize("fixed", [False, True])
def test_two_rank_shards(fixed):
    n, bs = 42, 4  # 21 items per rank: 5 full batches each, the odd item of each share dropped
    ranks = [_epochs(DataStream(_Items(n), bs, seed=3, world_size=2, rank=r, fixed_shards=fixed), 3, 5)
             for r in range(2)]
    for e in range(3):
        a, b = set(ranks[0][e]), set(ranks[1][e])
        assert len(a) == len(b) == 20 and not a & b  # disjoint shares, no repeats within an epoch
    shares = [[frozenset(ep) for ep in r] for r in ranks]
    if fixed:
        # each rank keeps its share every epoch (what an in-memory cache of generated items needs)
        for r in range(2):
            assert all(ep <= set(range(r, n, 2)) for ep in shares[r])
        assert ranks[0][0] != ranks[0][1]  # reshuffled within the share
    else:
        assert len(set(shares[0])) > 1  # paddle's sampler deals new shares each epoch


def test_fixed_shards_resume_exactly():
    s = DataStream(_Items(40), 4, seed=1, world_size=2, rank=1, fixed_shards=True)
    for _ in range(7):
        next(s)
    state = s.state()
    rest = [next(s)["index"].numpy().tolist() for _ in range(6)]
    t = DataStream(_Items(40), 4, seed=1, world_size=2, rank=1, fixed_shards=True)
    t.load_state(state)
    assert [next(t)["index"].numpy().tolist() for _ in range(6)] == rest
