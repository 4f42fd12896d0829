"""Help survives rendering: bracketed defaults are not eaten as markup, usage lines name
arguments in capitals (typer 0.29 wrote `{train_dir}`)."""
import re

import typer
from rich.text import Text
from typer.testing import CliRunner

from conftest import flat
from imgclean.cli import app
from imgclean.cli.train import Interpolation

runner = CliRunner()
DEFAULT_NOTE = re.compile(r"\[default: [^\]]*\]")


def commands():
    return typer.main.get_command(app).commands


def test_every_default_note_in_an_option_help_survives_rendering():
    checked = 0
    for name, cmd in commands().items():
        result = runner.invoke(app, [name, "-h"])
        assert result.exit_code == 0, result.output
        rendered = flat(result.output)
        for param in cmd.params:
            written = Text.from_markup(getattr(param, "help", None) or "").plain  # the text as declared
            for note in DEFAULT_NOTE.findall(written):
                checked += 1
                assert flat(note) in rendered, (name, param.name, note)
    # --input-size, --channels, --interpolation, --crop-pct, --mean, --std, --cache-dir, --workers,
    # evaluate --method, fit-head --train-dir, restore PATH
    assert checked >= 11


def test_the_damaged_helps_of_the_issue_read_in_full():
    expected = {
        "fit": ["Square input size in pixels [default: from the data", "1 (grayscale) or 3 (colour) [default: from the data]"],
        "scan": ["[default: $XDG_CACHE_HOME/imgclean or ~/.cache/imgclean]", "[default: 0 = one per CPU core]"],
        "evaluate": ["Evaluate only this method [default: every method the model has: mahalanobis, energy and knn, plus head and both when it has a head]"],
        "fit-head": ["[default: the one recorded in config.json]"],
    }
    for name, texts in expected.items():
        rendered = flat(runner.invoke(app, [name, "-h"]).output)
        for text in texts:
            assert flat(text) in rendered, (name, text)


def test_usage_lines_name_arguments_in_capitals():
    for name, cmd in commands().items():
        output = runner.invoke(app, [name, "-h"]).output
        usage = next(line for line in output.splitlines() if "Usage:" in line)
        assert "{" not in usage, usage
        for param in cmd.params:
            if param.param_type_name == "argument":
                assert (param.metavar or param.name).upper() in usage, (name, usage)
    fit_usage = next(line for line in runner.invoke(app, ["fit", "-h"]).output.splitlines() if "Usage:" in line)
    assert fit_usage.split() [-2:] == ["[OPTIONS]", "TRAIN_DIR"]
    restore_usage = next(line for line in runner.invoke(app, ["restore", "-h"]).output.splitlines() if "Usage:" in line)
    assert restore_usage.split()[-2:] == ["QUARANTINE", "[PATH]..."]


def test_usage_errors_show_the_capitalised_usage_too(tmp_path):
    result = runner.invoke(app, ["fit"])
    assert result.exit_code == 2
    assert "fit [OPTIONS] TRAIN_DIR" in result.output


def test_interpolation_choices_are_the_decoder_filters():
    from imgclean.data import INTERPOLATIONS

    assert {i.value for i in Interpolation} == set(INTERPOLATIONS)


def declared_texts():
    """Every help text as declared (before the Command escapes it), of the app, its commands and their parameters."""
    import inspect

    texts = [app.info.help or ""]
    for info in app.registered_commands:
        texts.append(inspect.getdoc(info.callback) or "")
        for value in inspect.signature(info.callback).parameters.values():
            for source in (value.default, *getattr(value.annotation, "__metadata__", ())):
                texts.append(getattr(source, "help", None) or "")
    return [t for t in texts if t]


def test_the_cli_escape_is_rich_markup_escape():
    """common.escape stands in for rich.markup.escape (so building the commands does not import
    rich): the same text for every help text the CLI declares and for the odd cases."""
    from rich.markup import escape as rich_escape

    from imgclean.cli.common import escape

    odd = ["", "[", "]", "[]", "[b]", "[bold red]x[/]", "\\[b]", "\\\\[b]", "a\\", "a\\\\", "[1]", "[default: x]",
           "[@click=x]", "[#ff0000]", "[/]", "[[b]]", "x [a] [B] [ok] \\", "[default: $XDG_CACHE_HOME/imgclean or ~/.cache/imgclean]"]
    texts = declared_texts() + odd
    assert sum("[default:" in t for t in texts) >= 12  # the declared texts were found
    for text in texts:
        assert escape(text) == rich_escape(text), text


def test_command_annotations_are_objects_not_strings():
    """Typer evaluates string annotations three times per command at every start (~4 ms in all):
    the command modules do without `from __future__ import annotations` (cli/__init__.py)."""
    import inspect

    from imgclean.cli import common

    callbacks = [info.callback for info in app.registered_commands] + [common.main_options, common.version_callback]
    for command in typer.main.get_command(app).commands.values():
        callbacks += [p.callback for p in command.params if getattr(p, "callback", None) is not None]
    for callback in callbacks:
        callback = inspect.unwrap(callback)
        strings = {k: v for k, v in inspect.get_annotations(callback).items() if isinstance(v, str)}
        assert not strings, (callback.__module__, callback.__qualname__, strings)
