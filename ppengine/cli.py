"""Command-line front ends used by ``tools/train.py`` and ``tools/eval.py``."""
from __future__ import annotations

import argparse
import json
import sys

from .config import load_config
from .errors import PPError


def _parser(desc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=desc)
    p.add_argument("-c", "--config", required=True, help="YAML config (with _base_ inheritance)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. -o train.max_iters=200 (repeatable)")
    p.add_argument("--output", default=None, help="run folder (default: train.output)")
    return p


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def train_main(argv=None) -> int:
    p = _parser("Train a model from a config.")
    p.add_argument("--resume", nargs="?", const="__latest__", default=None,
                   help="resume from a checkpoint folder, or (no value) from the latest one in the run folder")
    a = p.parse_args(argv)
    try:
        from .trainer import Trainer

        cfg = load_config(a.config, a.override)
        t = Trainer(cfg, output=a.output)
        resume = t.output if a.resume == "__latest__" else a.resume
        t.train(resume=resume)
    except PPError as e:
        return _fail(e)
    except KeyboardInterrupt:
        print("interrupted: resume with --resume", file=sys.stderr)
        return 130
    return 0


def eval_main(argv=None) -> int:
    p = _parser("Evaluate a model (model.weights=...) on the config's test (or val) set.")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    a = p.parse_args(argv)
    try:
        from .io import atomic_write_json
        from .trainer import Trainer

        cfg = load_config(a.config, a.override)
        t = Trainer(cfg, output=a.output)
        metrics = t.evaluate()
    except PPError as e:
        return _fail(e)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    if a.json:
        atomic_write_json(a.json, metrics)
    return 0
