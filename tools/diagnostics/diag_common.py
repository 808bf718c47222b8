"""Shared by the diagnostics scripts: the ``--weights RUN [-c CONFIG] [-o KEY=VALUE]`` command
shape of the other tools, and loading the model the way ``tools/infer.py`` does."""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--weights", required=True, help="a training run folder (with config.yml) or a weights file in one")
    p.add_argument("-c", "--config", default=None, help="the model's config (default: the run's config.yml)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. -o data.val.num_samples=64 (repeatable)")
    return p


def load(a, check=None):
    """(model, cfg) for ``--weights`` / ``-c`` / ``-o``, in eval mode. ``check(model, cfg)`` runs on
    the built model before any weights are read (so a wrong kind of model is reported first)."""
    import ppldm  # noqa: F401  (registers the models)
    from ppengine import load_config, load_for_inference
    from ppengine.checkpoint import load_weights
    from ppengine.inference import find_run_files
    from ppengine.trainer import build_model

    if a.config is None:
        model, cfg = load_for_inference(a.weights, a.override)
        if check is not None:
            check(model, cfg)
        return model, cfg
    cfg = load_config(a.config, a.override)
    model = build_model(cfg, load=False)
    if check is not None:
        check(model, cfg)
    load_weights(model, find_run_files(a.weights)[0])
    model.eval()
    return model, cfg


def keyword_values(pairs):
    """``--set KEY=VALUE`` pairs -> a dict of numbers (int, or float when written with '.' or 'e')."""
    kw = {}
    for s in pairs:
        k, v = s.split("=", 1)
        kw[k] = float(v) if "." in v or "e" in v.lower() else int(v)
    return kw
