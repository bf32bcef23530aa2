"""The method registry: name -> `Method`. One door in (`get`), one list (`names`).

Methods are the modules of this package that define ``METHOD`` (found on first use, so
importing the registry imports no method and no torch), plus plugin modules named in the
config's ``plugins`` list (any importable module defining ``METHOD``): a third-party method
needs no edit here. The config's ``methods`` mapping says which methods run, in which
variants, with which settings (``methods.<name>.<field>``); `check` validates it through each
method's own config class.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from typing import Any

from scenesearch.errors import ConfigError
from scenesearch.methods.base import CONSUMABLE, Entry, FitContext, Fitted, Inputs, Method, MethodConfig, Retriever

__all__ = ["CONSUMABLE", "Entry", "FitContext", "Fitted", "Inputs", "Method", "MethodConfig", "Retriever",
           "check", "entries", "entry", "get", "load_plugins", "names", "shape"]

_REGISTRY: dict[str, Method] = {}
_MODULES: dict[str, str] = {}  # method name -> the module that defines it
_SKIP = {"base"}
_discovered = False


def _add(module_name: str) -> None:
    module = importlib.import_module(module_name)
    method = getattr(module, "METHOD", None)
    if not isinstance(method, Method):
        raise ConfigError(f"plugin module {module_name} defines no METHOD = scenesearch.methods.Method(...)")
    other = _REGISTRY.get(method.name)
    if other is not None and other is not method:
        raise ConfigError(f"two modules define the method '{method.name}' ({_MODULES[method.name]} and {module_name}); rename one")
    _REGISTRY[method.name], _MODULES[method.name] = method, module_name


def _discover() -> None:
    global _discovered
    if not _discovered:
        for info in pkgutil.iter_modules(__path__):
            if info.name not in _SKIP and not info.name.startswith("_"):
                _add(f"{__name__}.{info.name}")
        _discovered = True


def load_plugins(modules: tuple[str, ...] | list[str]) -> None:
    """Import plugin modules (the config's ``plugins``) and register their METHOD.

    Raises:
        ConfigError: a module cannot be imported or defines no METHOD.
    """
    _discover()
    for m in modules:
        try:
            _add(m)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a plugin raises on import is one sentence here
            raise ConfigError(f"plugins: cannot import the method module '{m}' ({type(e).__name__}: {e})") from None


def names() -> list[str]:
    """Every registered method, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    """The method called `name`.

    Raises:
        ConfigError: unknown name; the message lists the known ones.
    """
    _discover()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _section(cfg, method: Method) -> MethodConfig:
    """The validated config section ``methods.<name>`` of a RunConfig, as the method's dataclass.

    Raises:
        ConfigError: unknown field or bad value, naming the field.
    """
    from scenesearch.config import build_section

    name = method.name
    prefix = f"methods.{name}"
    parsed = build_section(method.config, cfg.methods.get(name) or {}, f"{prefix}.")
    parsed.validate(prefix)
    return parsed


def entries(cfg) -> list[Entry]:
    """Every configured (method, variant), each with its parsed section: methods sorted by name,
    variants in their configured order.

    Raises:
        ConfigError: no method configured, a bad section, or two entries with one key.
    """
    load_plugins(cfg.plugins)
    if not cfg.methods:
        raise ConfigError(f"methods must configure at least one method; known methods: {', '.join(names())}")
    out: list[Entry] = []
    for name in sorted(cfg.methods):
        method = get(name)
        sec = _section(cfg, method)
        for variant in method.variants(sec):
            out.append(Entry(name, variant, variant or name, method.trains, method.serves, bool(sec.gpu), tuple(method.consumes), sec))
    keys = [e.key for e in out]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ConfigError(f"two configured methods or variants are both named '{dup}'; every key must be unique")
    return out


def entry(cfg, key: str) -> Entry:
    """The configured entry called `key` (a variant's or a method's name).

    Raises:
        ConfigError: no such entry; the message lists the configured ones.
    """
    found = {e.key: e for e in entries(cfg)}
    if key not in found:
        raise ConfigError(f"'{key}' is not a configured method or variant; configured: {', '.join(found)}")
    return found[key]


def check(cfg) -> list[Entry]:
    """Validate every method section of `cfg` at the start of a run; returns the entries."""
    return entries(cfg)


def shape(cfg) -> str:
    """The DAG shape a config asks for: its method branches (key, GPU request, inputs), the shard
    fan-out, whether the descriptors run on a GPU and whether a pretrain task trains their backbone
    (features.weights selfsup). A run compares it with the compiled one."""
    branches = [[e.key, e.gpu, list(e.consumes)] for e in entries(cfg)]
    return json.dumps({"methods": branches, "shards": cfg.cluster.shards, "features_gpu": cfg.features.device == "cuda",
                       "pretrain": cfg.features.weights == "selfsup"}, separators=(",", ":"))


def describe() -> list[dict[str, Any]]:
    """One row per registered method (for `scenesearch methods`)."""
    rows = []
    for n in names():
        m = get(n)
        rows.append({"method": n, "summary": m.summary, "trains": m.trains, "serves": m.serves, "consumes": list(m.consumes)})
    return rows
