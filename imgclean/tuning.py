"""Tuning switches: how a run uses this machine, never what it decides about a file.

Every IMGCLEAN_* environment variable imgclean reads is one row of SWITCHES, parsed and checked
here into one frozen Tuning. The CLI reads the environment once, at its start (`using`), and
every module asks `current()`; a program using the API without `using` gets the environment as
it is at each call.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Mapping

from .errors import ImgcleanError

DECODE_MODES = ("auto", "threads", "processes")


class TuningError(ImgcleanError, ValueError):
    """An IMGCLEAN_* variable with a value imgclean cannot use."""


@dataclass(frozen=True, slots=True)
class Tuning:
    decode: str = "auto"  # where files decode: auto, threads or processes
    score_in_workers: bool = True  # a CPU scan decoding in processes scores in them too
    torch_threads: int | None = None  # torch's intra-op threads for inference (None: about half the cores)
    split_stat: bool = True  # a large folder is stat'ed half in a forked child (listing.py)
    ray_retries: int = 3  # tries of a Ray batch beyond the first when its worker dies
    ray_start_timeout_s: float = 300.0  # how long Ray workers may take to start and load the model
    ray_test_kill: str = ""  # tests only: "N:MARKER" or "poison:NAME" kills Ray workers (ray_worker.py)


def _choice(name: str, what: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower() or choices[0]
        if value not in choices:
            raise TuningError(f"{what} must be one of {', '.join(choices)}, got {raw!r} (${name})")
        return value
    return parse


def _off_unless(*off: str) -> Callable[[str], bool]:
    return lambda raw: raw.strip().lower() not in off


def _whole(name: str, low: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not raw.strip().isdigit() or int(raw) < low:
            raise TuningError(f"${name} must be a whole number of at least {low}, not {raw!r}")
        return int(raw)
    return parse


def _seconds(name: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise TuningError(f"${name} must be a positive number of seconds, not {raw!r}")
        return value
    return parse


# field -> (environment variable, parser of its non-empty value). An unset or empty variable
# leaves the field's default.
SWITCHES: dict[str, tuple[str, Callable[[str], object]]] = {
    "decode": ("IMGCLEAN_DECODE", _choice("IMGCLEAN_DECODE", "decode mode", DECODE_MODES)),
    "score_in_workers": ("IMGCLEAN_SCORE_IN_WORKERS", _off_unless("0", "false", "no")),
    "torch_threads": ("IMGCLEAN_TORCH_THREADS", lambda raw: max(1, int(raw)) if raw.strip().isdigit() else None),
    "split_stat": ("IMGCLEAN_SPLIT_STAT", _off_unless("0")),
    "ray_retries": ("IMGCLEAN_RAY_RETRIES", _whole("IMGCLEAN_RAY_RETRIES", 0)),
    "ray_start_timeout_s": ("IMGCLEAN_RAY_START_TIMEOUT", _seconds("IMGCLEAN_RAY_START_TIMEOUT")),
    "ray_test_kill": ("IMGCLEAN_RAY_TEST_KILL", str),
}
assert set(SWITCHES) == {f.name for f in fields(Tuning)}


def from_env(environ: Mapping[str, str] | None = None) -> Tuning:
    """The Tuning the environment sets; TuningError naming the first bad variable."""
    environ = os.environ if environ is None else environ
    values = {}
    for field, (variable, parse) in SWITCHES.items():
        raw = environ.get(variable)
        if raw:
            values[field] = parse(raw)
    return Tuning(**values)


_in_use: Tuning | None = None


def current() -> Tuning:
    """The Tuning of this run: the one `using` set, else the environment's now."""
    return _in_use if _in_use is not None else from_env()


@contextlib.contextmanager
def using(tuning: Tuning) -> Iterator[Tuning]:
    """Run the block with `tuning` as current() (the CLI: the environment read once at its start)."""
    global _in_use
    before, _in_use = _in_use, tuning
    try:
        yield tuning
    finally:
        _in_use = before


def set_for_process(tuning: Tuning) -> None:
    """current() for the rest of this process (a worker process set up by its parent)."""
    global _in_use
    _in_use = tuning
