"""accept, reject, withdraw and decisions: a person's decisions about files, kept for every
later scan (see imgclean/quarantine/decisions.py for where they live and who may change them)."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import EXIT_ERROR, command, err, fail, os_error, out, print_json, setup_logging, usage_error
from .options import JsonOut

Root = Annotated[Optional[Path], typer.Option(
    "--root", help="The folder your scans run on; its decisions file records these [default: the nearest folder "
    "above each PATH that holds decisions or was scanned with --move-to].")]
DecideDryRun = Annotated[bool, typer.Option("--dry-run", help="Print what would be recorded and change nothing.")]
FromReview = Annotated[bool, typer.Option(
    "--from-review", help="Record the decision as made on a review page (the page's script passes this).")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print only problems.")]
Paths = Annotated[list[Path], typer.Argument(metavar="PATH", help="Files in the scanned folder.")]

VERB = {
    "accepted": "accepted", "rejected": "rejected", "withdrawn": "withdrawn", "already": "already decided",
    "would_accept": "would accept", "would_reject": "would reject", "would_withdraw": "would withdraw",
    "nothing": "no decision to withdraw", "changed": "changed while reading, not recorded",
    "missing": "gone, not recorded", "error": "error",
}  # fmt: skip


def _run(action, *args, **kwargs):
    """Call a decision operation; a PATH it cannot decide is a usage error (exit 2)."""
    from ..quarantine.decision_ops import DecisionPathError

    try:
        return action(*args, **kwargs)
    except DecisionPathError as exc:
        raise usage_error(str(exc)) from None
    except OSError as exc:
        raise os_error(exc) from None


def _report(outcomes, dry_run: bool, json_out: bool, quiet: bool) -> None:
    """Print one line per PATH (or the JSON document), then exit 1 when any PATH had a problem."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    problems = [o for o in outcomes if o.problem]
    if json_out:
        print_json({"dry_run": dry_run, "counts": counts, "problems": len(problems), "files": [_as_json(o) for o in outcomes]})
    else:
        for o in outcomes:
            if quiet and not o.problem:
                continue
            where = f" -> {os.fsdecode(o.destination)!r}" if o.destination is not None else ""
            message = f" ({o.message})" if o.message and o.message != "dry run" else ""
            out.print(f"{VERB.get(o.status, o.status)}: {os.fsdecode(o.path)!r}{where}{message}",
                      highlight=False, markup=False, soft_wrap=True)
        if not quiet:
            out.print(f"{len(outcomes)} file(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                      highlight=False, markup=False)
    if problems:
        raise fail(f"{len(problems)} file(s) had a problem (see above); nothing was recorded for them", EXIT_ERROR)


def _as_json(o) -> dict:
    return {
        "path": os.fsdecode(o.path), "status": o.status, "problem": o.problem, "message": o.message,
        "folder": None if o.folder is None else os.fsdecode(o.folder),
        "destination": None if o.destination is None else os.fsdecode(o.destination),
        "decisions": [{"id": d.id, "kind": d.kind, "path": d.path, "size": d.size, "sha256": d.sha256,
                       "withdraws": d.withdraws} for d in o.decisions],
    }  # fmt: skip


@command()
def accept(
    paths: Paths,
    root: Root = None,
    from_review: FromReview = False,
    dry_run: DecideDryRun = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Record that these files belong: no later scan moves them while their content is unchanged.

    The decision is about each file's content (sha256), kept in the folder's
    .imgclean-decisions.jsonl; a file edited afterwards is scored afresh. `imgclean restore`
    records the same for the files it puts back. Refuses files inside a quarantine or outside
    --root. Waits a few seconds for another run on the folder to end, then exits 4.
    """
    from ..quarantine.decision_ops import accept as accept_files

    setup_logging(quiet, False)
    source = "review" if from_review else "accept"
    outcomes = _run(accept_files, paths, root, source=source, dry_run=dry_run)
    _report(outcomes, dry_run, json_out, quiet)


@command()
def reject(
    paths: Paths,
    move_to: Path = typer.Option(..., "--move-to", help="The quarantine to move them into (as scan --move-to)."),
    root: Root = None,
    from_review: FromReview = False,
    dry_run: DecideDryRun = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="Keep each moved file's deep features (made by this model) in the quarantine, so that `imgclean learn` with the same model still learns from it once deleted [default: keep none]."),
) -> None:
    """Record that these files do not belong and move them into the quarantine.

    For pictures a scan missed: each is moved exactly as scan --move-to moves (journaled,
    never overwriting; `imgclean restore` puts it back) with the reason "rejected", and the
    decision is kept for learning. A file that cannot be moved gets no decision.
    """
    from ..quarantine.decision_reject import reject as reject_files

    setup_logging(quiet, False)
    source = "review" if from_review else "reject"
    bundle = _features_model(model) if model is not None and not dry_run else None
    before = _moves_before(move_to) if bundle is not None else frozenset()
    outcomes = _run(reject_files, paths, move_to, root, source=source, dry_run=dry_run)
    if bundle is not None and any(o.status == "rejected" for o in outcomes):
        from ..pipeline.scan.move_features import record_after_run

        for line in record_after_run(move_to, bundle, before).warnings:
            err.print(f"warning: {line}", highlight=False, markup=False, soft_wrap=True)
    _report(outcomes, dry_run, json_out, quiet)


def _features_model(model: Path):
    """The model reject --model embeds the moved files with (one line when it is not one)."""
    from ..store.artifact import load_model

    try:
        return load_model(model, device="cpu", lazy=True)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _moves_before(move_to: Path) -> frozenset:
    from ..pipeline.scan.move_features import journal_moves

    try:
        return journal_moves(move_to)
    except OSError as exc:
        raise os_error(exc) from None


@command()
def withdraw(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Files (or the paths they had) whose decisions to withdraw.")],
    dry_run: DecideDryRun = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Withdraw the decisions about these files: later scans score them afresh.

    Withdraws every decision in force recorded for the path, or about the file's current
    content. Nothing is deleted: the decisions file keeps the history. The files are not touched.
    """
    from ..quarantine.decision_ops import withdraw as withdraw_files

    setup_logging(quiet, False)
    outcomes = _run(withdraw_files, paths, dry_run=dry_run)
    _report(outcomes, dry_run, json_out, quiet)


@command()
def decisions(
    folder: Path = typer.Argument(Path("."), help="A scanned folder, or a quarantine (the decisions of the folders it took files from)."),
    json_out: JsonOut = False,
) -> None:
    """List the decisions in force: files accepted (kept in place) and rejected by a person.

    Reads the decisions files of FOLDER, of the folders inside it and of those above it. Files
    refused as untrusted and records that are not sound are reported (exit 1), never used.
    """
    from ..quarantine.decision_views import decisions_of

    setup_logging(False, False)
    if not folder.is_dir():
        raise usage_error(f"{folder} is not a folder")
    try:
        listed = decisions_of(folder)
    except OSError as exc:
        raise os_error(exc) from None
    if json_out:
        print_json({"folder": os.fsdecode(listed.folder), "counts": listed.counts(), "problems": listed.problems,
                    "decisions": [item.to_dict() for item in listed]})
    else:
        for item in listed:
            shown = item.path.relative_to(listed.folder) if item.path.is_relative_to(listed.folder) else item.path
            d = item.decision
            notes = "" if item.present else " [no file there now]"
            if item.quarantined is not None:
                notes += f" [in the quarantine: {os.fsdecode(item.quarantined)!r}]"
            out.print(f"{item.label}: {os.fsdecode(shown)!r} ({d.source}, {d.user}, {d.time[:19]}){notes}",
                      highlight=False, markup=False, soft_wrap=True)
        counts = listed.counts()
        out.print(f"{len(listed.items)} decision(s): accepted {counts['accepted']}, rejected {counts['rejected']}",
                  highlight=False, markup=False)
    for line in listed.problems:
        err.print(f"warning: {line}", highlight=False, markup=False, soft_wrap=True)
    if listed.problems:
        raise typer.Exit(EXIT_ERROR)
