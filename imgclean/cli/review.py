"""restore and report: finish a review of a quarantine."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
from pathlib import Path
from typing import Optional

import typer

from .common import (
    EXIT_ERROR, command, err, fail, os_error, out, print_json, setup_logging, usage_error,
)
from .options import REPORT_EXTENSIONS

# How each restore status reads on the terminal (contract 1 in the brief of the moves helper).
STATUS_TEXT = {
    "discarded": "discarded by the user",
    "exists": "not restored, the original path is taken",
    "unaccounted": "not in the journal",
    "invalid": "invalid journal record, not acted on",
    "not_found": "no such file in the journal",
    "would_restore": "would restore",
}
WOULD_RESTORE = "would_restore"  # a dry run's "restored"
COUNT_TEXT = {"would_restore": "would restore"}  # the counts line: "4 record(s): would restore 4"


@command()
def restore(
    quarantine_dir: Path = typer.Argument(..., metavar="QUARANTINE", help="The --move-to folder of earlier scans."),
    paths: Optional[list[Path]] = typer.Argument(None, metavar="PATH", help="Restore only these: files inside the quarantine, or their original paths [default: everything]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be restored and change nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print every result as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only problems."),
) -> None:
    """Put quarantined files back where they came from, never overwriting anything.

    Files you deleted from the quarantine (confirmed junk) are reported as discarded by the user.
    The exit code is 1 only when a file could not be put back or a record is not sound.
    """
    from ..quarantine.moves import MANIFEST_NAME, restore as restore_files

    setup_logging(quiet, False)
    if not (quarantine_dir / MANIFEST_NAME).is_file():
        raise usage_error(f"{quarantine_dir} has no {MANIFEST_NAME}; give the folder that scan --move-to filled")
    # `only` goes to restore() only when PATHs are given, so a restore() without it still serves
    # the plain `imgclean restore QUARANTINE`.
    only = {"only": [os.fspath(p) for p in paths]} if paths else {}
    try:  # QuarantineError, LockError, LockHeld: imgclean's errors, said by the Command
        results = restore_files(quarantine_dir, dry_run=dry_run, **only)
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    # A dry run's "restored" is what a real run would do: said as would_restore everywhere, as
    # a dry scan's moves are would_move.
    statuses = [WOULD_RESTORE if dry_run and r.status == "restored" else r.status for r in results]
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    problems = [r for r in results if r.problem]
    if json_out:
        print_json({
            "dry_run": dry_run,
            "counts": counts,
            "problems": len(problems),
            "files": [
                {"source": os.fsdecode(r.source) if r.source is not None else None,
                 "destination": os.fsdecode(r.destination) if r.destination is not None else None,
                 "status": status, "problem": r.problem, "message": r.message}
                for r, status in zip(results, statuses)
            ],
        })
    else:
        _print_results(results, statuses, counts, dry_run, quiet)
    if problems:
        raise fail(f"{len(problems)} file(s) were not restored (see above)", EXIT_ERROR)


def _print_results(results, statuses, counts: dict, dry_run: bool, quiet: bool) -> None:
    """One line per file (problems only with -q), then the counts; a dry run says what it would do."""
    for r, status in zip(results, statuses):
        if quiet and not r.problem:
            continue
        held = os.fsdecode(r.destination) if r.destination is not None else "?"
        original = os.fsdecode(r.source) if r.source is not None else "?"
        message = f" ({r.message})" if r.message and status != WOULD_RESTORE else ""
        out.print(f"{STATUS_TEXT.get(status, status)}: {held!r} -> {original!r}{message}", highlight=False,
                  markup=False, soft_wrap=True)
    if not quiet:
        said = ", ".join(f"{COUNT_TEXT.get(k, k)} {v}" for k, v in sorted(counts.items()))
        tail = " (dry run: nothing changed)" if dry_run else ""
        out.print(f"{len(results)} record(s): {said}{tail}", highlight=False, markup=False)


@command()
def report(
    source: Path = typer.Argument(..., help=f"A `scan --report` file ({REPORT_EXTENSIONS}), a quarantine's imgclean-manifest.jsonl, or the quarantine folder."),
    output: Path = typer.Option(..., "-o", "--output", help="HTML file to write (not inside a quarantine)."),
    root: Optional[Path] = typer.Option(None, "--root", help="The folder that was scanned, to show thumbnails of files that were not moved (report paths are relative to it)."),
    max_thumbnails: int = typer.Option(500, min=0, help="Inline thumbnails for at most this many rejects (highest scores first)."),
    max_rows: int = typer.Option(5000, min=1, help="List at most this many files per rejection reason."),
) -> None:
    """Write a self-contained HTML review page for an earlier scan (from its report or quarantine manifest)."""
    from ..reports.review import load_input, render_html, write_html
    from .runs import check_html_output

    setup_logging(False, False)
    if not source.exists():
        raise usage_error(f"{source} does not exist; give a scan report ({REPORT_EXTENSIONS}) or an imgclean-manifest.jsonl")
    if not source.is_dir():  # a report (or a journal, JSON lines) of a format the table names
        from ..reports.formats import ReportError, format_for

        try:
            format_for(source)
        except ReportError as exc:
            raise usage_error(str(exc)) from None
    check_html_output(output, "-o")
    if os.path.realpath(output) == os.path.realpath(source):
        raise usage_error(f"-o {output} would overwrite the input; choose another file name")
    if root is not None and not root.is_dir():
        raise usage_error(f"--root {root} is not a folder")
    try:
        collector, info_ = load_input(source, root=root.absolute() if root else None, max_rows=max_rows)
        roots = info_["roots"]
        summary = {"root": ", ".join(roots)} if roots else {}
        page = render_html(collector, title=f"imgclean review: {source.name}", summary=summary,
                           source=f"{info_['kind']} {info_['path']}", max_thumbnails=max_thumbnails)
        write_html(output, page)
    except OSError as exc:  # a ReviewInputError (not a report...) is said by the Command
        raise os_error(exc) from None
    err.print(f"review page: {output} ({collector.total} record(s) from {info_['kind']})", highlight=False, markup=False)
