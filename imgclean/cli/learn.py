"""learn: turn a quarantine's review into a new version of the model (and --rollback to undo it)."""
# No `from __future__ import annotations` here: see imgclean/cli/__init__.py.

import os
from pathlib import Path
from typing import Optional

import typer

from ..config import DEFAULT_MODEL_DIR
from .common import Device, command, fail, os_error, out, print_json, resolve_device, setup_logging
from .options import JsonOut


@command()
def learn(
    quarantine: Optional[Path] = typer.Argument(None, help="The quarantine that was reviewed (the folder scan --move-to moved files into)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, "-m", "--model", help="Model directory made by `imgclean fit`."),
    rollback: bool = typer.Option(False, "--rollback", help="Put the previous version of the model back, byte for byte, and learn nothing."),
    train_dir: Optional[Path] = typer.Option(None, "--train-dir", help="The model's training folder [default: the one config.json records]."),
    device: Device = typer.Option(Device.auto, help="Where to run the model (auto: a GPU when there is one)."),
    json_out: JsonOut = False,
) -> None:
    """Learn from the review of QUARANTINE: restored and accepted files belong; rejected,
    deleted and left files do not.

    Fits the learned rule (--method reviewed) on the decided files still there with their
    decided content and on the training folder, and makes it the model's default method only
    when held-out decisions show it is better. Saves a new version of MODEL (the previous one
    is kept in MODEL/versions/<n>/; `learn --rollback` puts it back). With too few decisions
    it says why and changes nothing (exit 0).
    """
    from ..jobs.learn import LearnRequest

    setup_logging(json_out, False)
    request = LearnRequest(quarantine, model, rollback=rollback, train_dir=train_dir)
    request.check()
    if rollback:
        return _rollback(model, json_out)
    from ..pipeline.learn.step import run_learn

    try:
        outcome = run_learn(quarantine, model, train_dir=train_dir, device=resolve_device(device.value))
    except OSError as exc:
        raise os_error(exc) from None
    if json_out:
        print_json(outcome.to_dict())
    else:
        _say(outcome)


def _say(outcome) -> None:
    for line in outcome.problems:
        out.print(f"warning: {line}; not used", highlight=False, markup=False, soft_wrap=True)
    used = ", ".join(f"{k} {v}" for k, v in outcome.usable.items() if v) or "none"
    out.print(f"files that teach: {used}", highlight=False, markup=False)
    logged = {k: v for k, v in getattr(outcome, "from_log", {}).items() if v}
    if logged:
        out.print("of them, taught by the features kept at move time (imgclean-features.bin): "
                  + ", ".join(f"{k} {v}" for k, v in logged.items()), highlight=False, markup=False)
    gone = {k: v for k, v in outcome.unusable.items() if v}
    if gone:
        out.print("gone or changed (not used): " + ", ".join(f"{k} {v}" for k, v in gone.items()),
                  highlight=False, markup=False)
    out.print(outcome.reason, highlight=False, markup=False, soft_wrap=True)
    if outcome.changed:
        r = outcome.result
        out.print(f"saved a new version of {os.fsdecode(outcome.model)}; default method: {r.default_method} "
                  f"(was {r.previous_default}); the previous version is kept as version {outcome.version_kept} "
                  "(`imgclean learn --rollback` puts it back)", highlight=False, markup=False, soft_wrap=True)
    else:
        out.print("nothing changed", highlight=False, markup=False)


def _rollback(model: Path, json_out: bool) -> None:
    from ..store import model_history
    from ..store.artifact import read_config

    try:
        read_config(model)  # a model directory (ModelError: one line), before anything is created in it
        with model_history.locked(model):
            version = model_history.rollback(model)
    except FileNotFoundError:
        raise fail(f"no model at {model}") from None
    except OSError as exc:
        raise os_error(exc) from None
    summary = version.summary()
    if json_out:
        print_json({"model": os.fsdecode(model), "rolled_back_to": summary})
    else:
        out.print(f"{os.fsdecode(model)} is version {version.number} again (saved {summary['created_at']}, default "
                  f"method {summary['default_method']})", highlight=False, markup=False, soft_wrap=True)
