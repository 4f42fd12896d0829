"""What every request shares: the refusal error, the exit codes, and the checks on paths and
numbers that more than one job makes."""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import ImgcleanError

# Exit codes (documented in the README; each one is tested). A job's result maps itself to one
# (results.py); the CLI only exits with it.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3  # scan --fail-on-reject found something to reject; audit found an issue
EXIT_LOCKED = 4  # another imgclean run holds a lock on a folder this run needs
EXIT_SKIPPED = 5  # a folder in the scan could not be listed; with --fail-on-skip, any file skipped or changed
EXIT_HANGUP = 129  # SIGHUP (128 + 1): the terminal closed or the session ended
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_TERMINATED = 143  # SIGTERM


class RequestError(ImgcleanError, ValueError):
    """A request that cannot run as asked (a missing folder, an output in the wrong place, a
    value out of range): said before anything is read, written or moved. The CLI's exit 2."""


class MethodError(ImgcleanError, ValueError):
    """The model cannot serve the method asked for (it lacks the detector: exit 1)."""


def refusal_classes() -> tuple[type[ImgcleanError], ...]:
    """The errors that refuse a request as asked (the CLI says them as usage errors, exit 2):
    RequestError and the pipeline's own refusals of a path, raised only before a run starts (a
    quarantine placed over the folder, a folder a report cannot be applied to, a folder that is
    no training folder). Imported here, when an error is being said, not at start-up."""
    from ..pipeline.apply.applier import QuarantinePlacementError
    from ..pipeline.apply.sources import ApplyFolderError
    from ..pipeline.fit.trainset import TrainingFolderError

    return RequestError, QuarantinePlacementError, ApplyFolderError, TrainingFolderError


def need_folder(path, what: str) -> None:
    """`what PATH does not exist or is not a folder` unless `path` is one."""
    if not Path(path).is_dir():
        raise RequestError(f"{what} {os.fsdecode(path)} does not exist or is not a folder")


def need_move_to_for_dry_run(dry_run: bool, move_to) -> None:
    if dry_run and move_to is None:
        raise RequestError("--dry-run shows planned moves; give --move-to DIR too")


def check_range(option: str, value, low=None, high=None, *, integer: bool = False, above_low: bool = False) -> None:
    """`value` is a number (an integer when `integer`) within [low, high] (or (low, high] with
    `above_low`); a RequestError naming the option otherwise. None is for the caller to allow."""
    kind = "a whole number" if integer else "a number"
    is_number = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not is_number or (not integer and not math.isfinite(value)):
        raise RequestError(f"{option} takes {kind}; got {value!r}")
    too_low = low is not None and (value <= low if above_low else value < low)
    if too_low or (high is not None and value > high):
        bounds = [f"above {low}" if above_low else f"at least {low}"] if low is not None else []
        bounds += [f"at most {high}"] if high is not None else []
        raise RequestError(f"{option} must be {' and '.join(bounds)}; got {value!r}")


def check_ranges(values: dict, table: dict) -> None:
    """check_range for each (field: value) with a row (option, low, high, integer) in `table`; None passes."""
    for name, value in values.items():
        if value is not None and name in table:
            option, low, high, integer = table[name]
            check_range(option, value, low, high, integer=integer)


def quarantine_placement(folder: Path, move_to: Path) -> tuple[Path, ...]:
    """The quarantine's exclusion from a walk of `folder` (pipeline.apply.applier.quarantine_exclusion);
    QuarantinePlacementError (a refusal) when it is the folder or above it."""
    from ..pipeline.apply.applier import quarantine_exclusion

    return quarantine_exclusion(Path(folder), Path(move_to))


def refuse_quarantine_input(path: Path, shown, hint: str) -> None:
    """A folder to read that is a quarantine, or inside one, is refused (scans never read one)."""
    from ..fileops import MANIFEST_NAME, quarantine_holding

    holding = quarantine_holding(path)
    if holding is not None:
        what = "an imgclean quarantine" if holding == Path(os.path.realpath(path)) else \
            f"inside the imgclean quarantine {holding}"
        raise RequestError(f"{os.fsdecode(shown)} is {what} (it holds {MANIFEST_NAME}); {hint}")


def check_output_path(option: str, path: Path, move_to: Path | None = None, is_dir: bool = False) -> None:
    """Refuse an output that would overwrite a quarantine's journal or land in a quarantine.

    A quarantine is any folder holding an imgclean manifest (fileops.is_quarantine), checked for
    every folder above the output up to the filesystem root, both as written and resolved
    (so a link does not hide one); and the run's own --move-to folder, which may not exist yet.
    """
    from ..fileops import MANIFEST_NAME, is_quarantine

    path = Path(path)
    if path.name == MANIFEST_NAME:
        raise RequestError(f"{option} {path} would overwrite a quarantine's journal ({MANIFEST_NAME}); choose another name")
    target = path.absolute()
    folders = [target] if is_dir else []
    for start in (target.parent, Path(os.path.realpath(target.parent))):
        folders += [start, *start.parents]
    if is_dir:
        folders.append(Path(os.path.realpath(target)))
    for folder in dict.fromkeys(folders):
        try:
            quarantine = is_quarantine(folder)
        except OSError:
            quarantine = False
        if quarantine:
            raise RequestError(f"{option} {path} is inside the quarantine {folder}; write it outside any --move-to folder")
    if move_to is not None:
        real, q = Path(os.path.realpath(target)), Path(os.path.realpath(Path(move_to).absolute()))
        if real == q or real.is_relative_to(q):
            raise RequestError(f"{option} {path} is inside --move-to {move_to}; write it outside the quarantine")


def check_html_output(path: Path, option: str = "--html", move_to: Path | None = None) -> None:
    """A review page goes to a file in an existing folder, outside any quarantine."""
    path = Path(path)
    if path.is_dir():
        raise RequestError(f"{option} {path} is a folder; give a file name such as review.html")
    if not path.absolute().parent.is_dir():
        raise RequestError(f"{option} {path}: folder {path.absolute().parent} does not exist")
    check_output_path(option, path, move_to)


def check_report_output(report: Path, move_to: Path | None, overwrite: bool = False) -> None:
    """A report goes to a new file (or, with --overwrite-report, an existing regular one) in an
    existing folder, outside any quarantine, in a format imgclean writes."""
    from ..reports.records import report_format
    from ..reports.report_files import existing_report_problem

    report = Path(report)
    try:
        report_format(report, write=True)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    check_output_path("--report", report, move_to)
    problem = existing_report_problem(report, overwrite)
    if problem is not None:
        raise RequestError(f"--report {report}: {problem}")


def check_outputs(report, html, move_to, overwrite_report: bool) -> None:
    """The --report and --html files of a run (either may be None)."""
    if report is not None:
        check_report_output(report, move_to, overwrite_report)
    if html is not None:
        check_html_output(html, "--html", move_to)


def optional_path(value) -> Path | None:
    return None if value is None else Path(value)


def check_method_name(method: str | None) -> None:
    """A method imgclean knows (detectors/registry.py), or None (the model's default)."""
    from ..detectors.registry import method_names

    if method is not None and method not in method_names():
        raise RequestError(f"unknown method {method!r}; choose one of {', '.join(method_names())}")


def check_served(bundle, method: str) -> None:
    """MethodError when the model lacks a detector `method` needs (pipeline.engines.scoring.check_method)."""
    from ..pipeline.engines.scoring import check_method

    try:
        check_method(bundle, method)
    except ImgcleanError:
        raise
    except ValueError as exc:
        raise MethodError(str(exc)) from None


def model_of(model, device: str, lazy: bool = False):
    """A loaded model: `model` itself, or the model directory it names loaded (None: the default one)."""
    if model is None or isinstance(model, (str, bytes, os.PathLike)):
        from ..config import DEFAULT_MODEL_DIR
        from ..store.artifact import load_model

        return load_model(Path(os.fsdecode(model)) if model is not None else DEFAULT_MODEL_DIR, device=device, lazy=lazy)
    return model
