"""Registries: every object in a config is built from one by its ``type:`` entry.

    from ppengine.registry import MODELS

    @MODELS.register()
    class MyModel(paddle.nn.Layer): ...

    model = MODELS.build({"type": "MyModel", "width": 32})

An unknown ``type`` or an argument the class does not take is a :class:`ConfigError`
naming the config file, the key path and the nearest valid name.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Optional

from .errors import ConfigError


def nearest(name: str, choices) -> Optional[str]:
    """The closest valid name to ``name`` among ``choices`` (None when nothing is close)."""
    choices = list(choices)
    hit = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    if hit:
        return hit[0]
    low = {c.lower(): c for c in choices}
    return low.get(str(name).lower())


def _where(cfg, key_path: str) -> str:
    src = None
    getter = getattr(cfg, "source_of", None)
    if getter is not None:
        src = getter(key_path)
    return f"{src}: " if src else ""


class Registry:
    """A name -> class/function table for one kind of object (models, datasets, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: Dict[str, Callable] = {}

    def register(self, obj: Callable = None, name: str = None):
        """Register ``obj`` under ``name`` (default: its ``__name__``). Usable as a decorator."""

        def deco(o):
            key = name or o.__name__
            if key in self._table and self._table[key] is not o:
                raise KeyError(f"{self.kind} registry already has {key!r} ({self._table[key]!r})")
            self._table[key] = o
            return o

        return deco(obj) if obj is not None else deco

    def __contains__(self, name) -> bool:
        return name in self._table

    def names(self):
        return sorted(self._table)

    def get(self, name: str, key_path: str = "type", cfg=None) -> Callable:
        if name in self._table:
            return self._table[name]
        near = nearest(name, self._table)
        hint = f" Did you mean {near!r}?" if near else ""
        raise ConfigError(
            f"{_where(cfg, key_path)}{key_path}: unknown {self.kind} type {name!r}.{hint} "
            f"Registered {self.kind}: {', '.join(self.names()) or '(none)'}"
        )

    def build(self, cfg: Dict[str, Any], key_path: str = "", root=None, **extra) -> Any:
        """Build ``cfg['type'](**rest, **extra)``; arguments are checked against the signature."""
        if cfg is None:
            return None
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise ConfigError(
                f"{_where(root, key_path)}{key_path or self.kind}: expected a mapping with a 'type:' "
                f"entry naming a registered {self.kind}, got {cfg!r}"
            )
        prefix = f"{key_path}." if key_path else ""
        cls = self.get(cfg["type"], prefix + "type", root)
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        kwargs.update(extra)
        check_kwargs(cls, kwargs, key_path, root, what=f"{self.kind} {cfg['type']!r}")
        try:
            return cls(**kwargs)
        except (TypeError, AssertionError) as e:
            # A wrongly typed value reaching the constructor: say which config entry it came from.
            given = {k: v for k, v in cfg.items() if k != "type"}
            srcs = sorted({s for s in (_where(root, f"{prefix}{k}").rstrip(": ") for k in given) if s})
            raise ConfigError(
                f"{', '.join(srcs) + ': ' if srcs else ''}{key_path or self.kind}: could not build {self.kind} "
                f"{cfg['type']!r} from {given!r}: {type(e).__name__}: {e}. Check the types of these values."
            ) from e


def accepted_args(fn: Callable):
    """Names ``fn`` accepts, or None when it takes ``**kwargs``."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind == p.VAR_KEYWORD:
            return None
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
    return names


def check_kwargs(fn: Callable, kwargs: Dict[str, Any], key_path: str = "", root=None, what: str = ""):
    """Raise ConfigError for an argument ``fn`` does not take, naming the nearest valid one."""
    valid = accepted_args(fn)
    if valid is None:
        return
    prefix = f"{key_path}." if key_path else ""
    for k in kwargs:
        if k not in valid:
            near = nearest(k, valid)
            hint = f" Did you mean {near!r}?" if near else ""
            raise ConfigError(
                f"{_where(root, prefix + k)}{prefix}{k}: unknown key for {what}.{hint} "
                f"Valid keys: {', '.join(valid)}"
            )


MODELS = Registry("model")
DATASETS = Registry("dataset")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
LR_SCHEDULERS = Registry("lr_scheduler")
METRICS = Registry("metric")
CALLBACKS = Registry("callback")
