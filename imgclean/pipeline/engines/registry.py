"""The scan engines by name: what `scan --engine NAME` and `api.scan(engine=NAME)` may choose.

An entry names a factory `(scorer, options, device) -> Engine` (engines/base.py) and the type of
its options (None: it takes none). Factories import their engine when called, so choosing the
local engine never imports Ray. Adding an engine: one module in engines/ and one entry here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ...errors import ImgcleanError


class EngineError(ImgcleanError, ValueError):
    """An unknown engine, or options that are not that engine's."""


@dataclass(frozen=True, slots=True)
class EngineEntry:
    module: str  # a module of imgclean.pipeline.engines, or a dotted path to one elsewhere
    factory: str  # name of `(scorer, options, device) -> Engine` in that module
    options: str | None = None  # name of its options class there (None: it takes none)


ENGINES: dict[str, EngineEntry] = {
    "local": EngineEntry("local", "make_engine"),  # this machine's decode pool and network
    "ray": EngineEntry("ray_engine", "make_engine", "RayOptions"),  # Ray workers, here or on a cluster
}


def names() -> tuple[str, ...]:
    return tuple(ENGINES)


def entry(name: str) -> EngineEntry:
    try:
        return ENGINES[name]
    except (KeyError, TypeError):
        raise EngineError(f"unknown engine {name!r}; use {' or '.join(ENGINES)}") from None


def _module(name: str):
    module = entry(name).module
    return importlib.import_module(module if "." in module else f"{__package__}.{module}")


def options_class(name: str):
    """The options type of engine `name` (None when it takes none)."""
    found = entry(name).options
    return None if found is None else getattr(_module(name), found)


def create(name: str, scorer, options=None, device: str = "cpu"):
    """The engine `name` for one scan by `scorer` (a pipeline.scan.scanner.Scorer); `options`
    its options object (None: its defaults). EngineError when `options` is not its type."""
    kind = options_class(name)
    if options is not None and (kind is None or not isinstance(options, kind)):
        raise EngineError(f"engine {name!r} takes {'no options' if kind is None else kind.__name__}, "
                          f"not {type(options).__name__}")
    return getattr(_module(name), entry(name).factory)(scorer, options, device)
