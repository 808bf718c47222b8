"""YAML configs with ``_base_`` inheritance and ``-o a.b.c=value`` overrides.

* ``_base_`` is a path or a list of paths, relative to the file that names it; bases are
  merged first (in order), then the file itself, deep-merged (mappings merge, anything
  else replaces). A mapping with ``_delete_: true`` replaces instead of merging.
* ``-o a.b.c=value`` parses ``value`` as YAML (``1e-3`` -> float, ``[1,2]`` -> list,
  ``null`` -> None); list items are addressed by index (``-o callbacks.0.every=5``).
* Every key remembers the file (or override) it came from, so errors name it.
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Dict, Iterable, List, Optional

import yaml

from .errors import ConfigError
from .registry import nearest


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``5E+4`` as floats (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text):
    return yaml.load(text, Loader=_Loader)

# Top-level sections the engine knows.
SECTIONS = {
    "_base_", "description", "model", "data", "optimizer", "lr_scheduler", "train", "metrics", "callbacks", "track",
}
# Keys of older configs and where their content lives now: a config that still has one is an
# error naming the new place.
RENAMED = {
    "infer": "model.sampler (sampler defaults are model arguments: {type: ddim, steps: 25, guidance_scale: 7.5})",
}


class Config(dict):
    """A plain dict (nested dicts/lists) that also remembers where each key came from."""

    def __init__(self, data=None, sources: Optional[Dict[str, str]] = None, path: str = None):
        super().__init__(data or {})
        self.sources = dict(sources or {})
        self.path = path

    def source_of(self, key_path: str) -> Optional[str]:
        """The file (or ``-o`` override) that set ``key_path`` or its nearest parent."""
        parts = key_path.split(".")
        while parts:
            p = ".".join(parts)
            if p in self.sources:
                return self.sources[p]
            parts.pop()
        return self.path

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self), sort_keys=False, allow_unicode=True)

    def save(self, path: str):
        """Write the resolved config (atomically)."""
        from .io import atomic_write_text

        atomic_write_text(path, self.to_yaml())


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _record(node, prefix: str, src: str, sources: Dict[str, str]):
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            sources[p] = src
            _record(v, p, src, sources)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            p = f"{prefix}.{i}"
            sources[p] = src
            _record(v, p, src, sources)


def _merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and v.get("_delete_"):
            out[k] = {kk: vv for kk, vv in v.items() if kk != "_delete_"}
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}. Give the path of a .yml file, e.g. -c configs/deca.yml")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping, got {type(data).__name__}")
    return data


def _load(path: str, sources: Dict[str, str], stack: List[str]) -> dict:
    path = os.path.abspath(path)
    if path in stack:
        raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(stack + [path])}")
    data = _read_yaml(path)
    bases = data.pop("_base_", None)
    merged: dict = {}
    if bases:
        for b in [bases] if isinstance(bases, str) else list(bases):
            if not isinstance(b, str):
                raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {b!r}")
            bpath = os.path.join(os.path.dirname(path), b)
            if not os.path.isfile(bpath):
                raise ConfigError(f"{path}: _base_ file not found: {b!r} (looked for {bpath})")
            merged = _merge(merged, _load(bpath, sources, stack + [path]))
    _record(data, "", os.path.relpath(path), sources)
    return _merge(merged, data)


def parse_override(text: str):
    """``"a.b.c=value"`` -> (``"a.b.c"``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"-o {text!r}: an override must look like key.path=value, e.g. -o train.max_iters=200")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"-o {text!r}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(cfg: Config, key: str, value, strict: bool = True):
    """Set ``cfg[a][b][c] = value``; a missing intermediate key is an error naming the nearest."""
    parts = key.split(".")
    node: Any = cfg
    walked = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not (-len(node) <= int(part) < len(node)):
                raise ConfigError(f"-o {key}: {'.'.join(walked) or 'config'} is a list of {len(node)}; "
                                  f"{part!r} is not a valid index")
            part_k: Any = int(part)
        elif isinstance(node, dict):
            part_k = part
            if part not in node and not last:
                if strict and node is cfg and part not in SECTIONS:
                    near = nearest(part, SECTIONS - {"_base_"})
                    hint = f" Did you mean {near!r}?" if near else ""
                    raise ConfigError(f"-o {key}: unknown top-level section {part!r}.{hint}")
                node[part] = {}
        else:
            raise ConfigError(f"-o {key}: {'.'.join(walked)} is a {type(node).__name__}, not a mapping")
        walked.append(part)
        if last:
            node[part_k] = value
        else:
            node = node[part_k]
    cfg.sources[key] = f"-o {key}"
    _record(value, key, f"-o {key}", cfg.sources)


def load_config(path: str, overrides: Iterable[str] = ()) -> Config:
    """Load ``path`` with its ``_base_`` chain, apply ``-o`` overrides, check top-level keys."""
    sources: Dict[str, str] = {}
    data = _load(path, sources, [])
    cfg = Config(data, sources, os.path.relpath(os.path.abspath(path)))
    for ov in overrides or ():
        k, v = parse_override(ov)
        apply_override(cfg, k, v)
    check_sections(cfg)
    resolve_references(cfg)
    return cfg


_REF = re.compile(r"^\$\{\s*([A-Za-z0-9_.\-]+)\s*\}$")


def resolve_references(cfg: Config) -> None:
    """Replace every value that is exactly ``${a.b.c}`` by the value at ``a.b.c`` (after the
    ``-o`` overrides, so overriding the referenced key moves every reference with it):
    one setting written once, e.g. ``data.train.image_size: ${model.image_size}``."""

    def lookup(path: str, where: str, chain):
        if path in chain:
            raise ConfigError(f"{cfg.source_of(where)}: {where}: circular reference "
                              f"{' -> '.join(list(chain) + [path])}")
        node: Any = cfg
        for part in path.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                node = node[int(part)]
            else:
                raise ConfigError(f"{cfg.source_of(where)}: {where}: ${{{path}}} refers to a key that does not "
                                  f"exist ({part!r} is missing)")
        return resolve(node, path, chain + [path])

    def resolve(node, where: str, chain):
        if isinstance(node, str):
            m = _REF.match(node)
            return lookup(m.group(1), where, chain) if m else node
        if isinstance(node, dict):
            for k in list(node):
                node[k] = resolve(node[k], f"{where}.{k}" if where else str(k), chain)
        elif isinstance(node, list):
            for i in range(len(node)):
                node[i] = resolve(node[i], f"{where}.{i}", chain)
        return node

    resolve(cfg, "", [])


def check_sections(cfg: Config):
    for k in cfg:
        if k in RENAMED:
            raise ConfigError(f"{cfg.source_of(k)}: {k}: this section was renamed: use {RENAMED[k]}")
        if k not in SECTIONS:
            near = nearest(k, SECTIONS - {"_base_"})
            hint = f" Did you mean {near!r}?" if near else ""
            raise ConfigError(f"{cfg.source_of(k)}: {k}: unknown top-level key.{hint} "
                              f"Valid sections: {', '.join(sorted(SECTIONS - {'_base_'}))}")


def check_keys(section: dict, valid: Iterable[str], key_path: str, cfg: Optional[Config] = None):
    """Raise ConfigError for a key of ``section`` not in ``valid``."""
    valid = list(valid)
    for k in section or {}:
        if k not in valid:
            near = nearest(k, valid)
            hint = f" Did you mean {near!r}?" if near else ""
            src = cfg.source_of(f"{key_path}.{k}") if cfg is not None else None
            raise ConfigError(f"{src + ': ' if src else ''}{key_path}.{k}: unknown key.{hint} "
                              f"Valid keys: {', '.join(valid)}")
