"""--config: a settings file's values become a command's defaults, so flags still win."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..reports.formats import extensions_text
from .common import EXIT_REJECTED, EXIT_SKIPPED
from .usage import UsageError, plain_type_message

# Options a settings file may not set: the file itself, and what only makes sense per run.
NOT_IN_SETTINGS_FILE = {"config_file", "help", "force", "dry_run", "files_from", "null"}


def settable_options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option" and p.name not in NOT_IN_SETTINGS_FILE]


def option_key(param) -> str:
    """The option's name as a user types it: `--batch-size` -> batch-size, `--json` -> json."""
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0][2:] if longs else param.name.replace("_", "-")


def settings_keys(command) -> dict[str, str]:
    """Accepted settings-file keys (dashes as underscores) -> parameter name.

    The option names as typed (`json`, `move-to`) and, silently, the parameter names older
    files used (`json_out`).
    """
    keys: dict[str, str] = {}
    for p in settable_options(command):
        keys[p.name] = p.name
        for opt in p.opts:
            if opt.startswith("--"):
                keys[opt[2:].replace("-", "_")] = p.name
    return keys


def load_settings_file(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    from ..settings import SettingsFileError, read_settings_file

    if value is None or ctx.resilient_parsing:
        return value
    try:
        settings = read_settings_file(value, ctx.info_name, settings_keys(ctx.command))
    except SettingsFileError as exc:
        raise UsageError(str(exc), ctx) from None
    check_settings_values(ctx, os.fsdecode(value), settings)
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def check_settings_values(ctx: typer.Context, path: str, settings: dict) -> None:
    """Each value from a settings file checked by its option's type, as the same value given as
    a flag is (booleans, numbers, choices, ranges, paths), so a bad one is a usage error naming
    the file and the key (`imgclean.yaml: scan.json: 'maybe' is not a valid boolean`), not one
    against the flag the user never typed."""
    params = {p.name: p for p in ctx.command.params}
    for name, value in settings.items():
        param = params.get(name)
        if param is None or value is None:  # None: the option's own default
            continue
        problem = value_problem(ctx, param, value)
        if problem:
            raise UsageError(f"{path}: {ctx.info_name}.{option_key(param)}: {problem}", ctx)


NUMBER_TYPES = {"int": "an integer", "integer": "an integer", "int range": "an integer", "integer range": "an integer",
                "float": "a number", "float range": "a number"}


def value_problem(ctx: typer.Context, param, value) -> str:
    """Why `value` (from YAML: a bool, int, float or str) is not a value of `param`, or ""."""
    from ..settings import preview

    type_name = getattr(param.type, "name", "")
    kind = NUMBER_TYPES.get(type_name)
    # click would take these silently: int(True) is 1, int(2.5) is 2, and a path 3 is file descriptor 3.
    if kind and isinstance(value, bool):
        return f"{str(value).lower()} is not {kind}"
    if kind == "an integer" and isinstance(value, float) and not value.is_integer():
        return f"{value} is not an integer"
    if type_name == "path" and not isinstance(value, str):
        return f"{preview(value)} is not a path"
    not_boolean = f"{preview(value)} is not a valid boolean (use true or false)"
    if type_name == "boolean" and not isinstance(value, (bool, str)):  # click's BOOL fails on 3 with AttributeError
        return not_boolean
    try:
        param.type_cast_value(ctx, value)
    except UsageError as exc:
        # click's boolean message lists every spelling it takes ("" first): ours says the two to use
        return not_boolean if type_name == "boolean" else plain_type_message(exc.message).rstrip(".")
    except (TypeError, ValueError, AttributeError) as exc:  # a type that did not expect a YAML value
        return f"{preview(value)} is not a valid value ({exc})"
    return ""


def config_option() -> Path:
    return typer.Option(
        None, "--config", is_eager=True, callback=load_settings_file, exists=False,
        help="YAML settings file (see `imgclean init-config`); flags given on the command line win.",
    )


def resolved_settings(ctx: typer.Context) -> dict:
    """Every option's final value, for the record (JSON-able)."""
    values = {}
    for key, value in ctx.params.items():
        if key in NOT_IN_SETTINGS_FILE:
            continue
        values[key] = value.value if isinstance(value, Enum) else os.fsdecode(value) if isinstance(value, Path) else value
    return values


# ---- options shared by the commands that move files (scan, apply), declared once -----------
# Each is a type for a parameter: `move_to: MoveTo = None`. Help texts name scan's terms; apply
# documents where it differs in its own docstring.

MoveTo = Annotated[Optional[Path], typer.Option("--move-to", help="Move rejected files here (keeping their relative paths); without it, only report.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print what would move and change nothing.")]
REPORT_EXTENSIONS = extensions_text()  # from the report format table (reports/formats.py)
ReportOut = Annotated[Optional[Path], typer.Option("--report", help=f"Write every record to this file: {REPORT_EXTENSIONS}.")]
OverwriteReport = Annotated[bool, typer.Option("--overwrite-report", help="Replace the --report file when it exists (without it an existing report is refused, exit 2).")]
HtmlOut = Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML review page (thumbnails, scores, histograms) to this file.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout (warnings still go to stderr).")]
FailOnReject = Annotated[bool, typer.Option("--fail-on-reject", help=f"Exit with code {EXIT_REJECTED} when anything was rejected (for cron alerts).")]
FailOnSkip = Annotated[bool, typer.Option("--fail-on-skip", help=f"Exit with code {EXIT_SKIPPED} when any file was skipped or changed during the scan (links, FIFOs, edited files).")]
KeepUnreadable = Annotated[bool, typer.Option("--keep-unreadable", help="Report unreadable, too large and unsupported files but leave them in place.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress output.")]
ReviewSample = Annotated[int, typer.Option("--review-sample", min=0, metavar="N", help="Choose N of the files the scan accepted for a person to review (nearest the threshold, spread over the kinds of picture, and a random spot check): marked in the --report `review` column and shown on the --html page; 0: none.")]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Print every rejected file on stderr.")]


def evaluate_method_help() -> str:
    """evaluate --method's help, its list of methods from the detector registry."""
    from ..detectors import registry

    return ("Evaluate only this method [default: every method the model has: "
            f"{registry.method_list(registry.detector_names(supervised=False))}, plus "
            f"{registry.method_list(registry.detector_names(supervised=True))} when it has them and "
            f"{registry.method_list(registry.COMBINED)} when it has their members].")


def scan_method_help() -> str:
    """scan --method's help, its detectors from the registry."""
    from ..detectors import registry

    return ("Who decides: a detector fitted with the model "
            f"({registry.method_list(registry.detector_names(supervised=False))}; docs/method.md says what each "
            "scores), the supervised head (head: needs `fit-head`), both (Mahalanobis or head rejects), or the rule "
            "learned from reviews (reviewed: needs `imgclean learn`) [default: the model's default method: "
            "mahalanobis, or what `imgclean learn` chose].")
