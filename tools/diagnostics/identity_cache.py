"""Compute (and cache) the identity features of a config's IdentitySyntheticFaces split ahead of
training, optionally one shard of its chunks, so two processes can share the work.

    python tools/diagnostics/identity_cache.py -c configs/mica.yml --split train --shard 0/2 &
    python tools/diagnostics/identity_cache.py -c configs/mica.yml --split train --shard 1/2

Each chunk of subjects is written atomically to the same cache the training run reads
(docs/mica.md), so a run started afterwards (or an interrupted warm-up run again) computes only
what is missing. Prints one JSON line: chunks done here, chunks in the split, seconds.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from ppengine.quiet import quiet  # noqa: E402

quiet()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default=os.path.join(ROOT, "configs", "mica.yml"))
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument("--split", default="train")
    p.add_argument("--shard", default="0/1", help="I/N: chunks c with c %% N == I")
    a = p.parse_args(argv)

    import ppface3d  # noqa: F401
    from ppengine.config import load_config
    from ppengine.trainer import build_dataset

    i, n = (int(v) for v in a.shard.split("/"))
    ds = build_dataset(load_config(a.config, a.override), a.split)
    chunks = -(-len(ds) // ds.chunk)
    mine = [c for c in range(chunks) if c % n == i]
    t = time.time()
    for c in mine:
        ds.chunk_features(c)
    print(json.dumps({"split": a.split, "folder": ds.folder, "chunks_here": len(mine), "chunks": chunks,
                      "seconds": round(time.time() - t, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
