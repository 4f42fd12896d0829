"""Help survives rendering: bracketed defaults are not eaten as markup, usage lines name
arguments in capitals (typer 0.29 wrote `{train_dir}`); every command's -h reads at 80 columns
(issue 25): a wide description column, no line over the width, every option and its help, each
default once."""
import os
import re
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from conftest import flat
from imgclean.cli import app
from imgclean.cli.options import evaluate_method_help
from imgclean.cli.train import Interpolation
from imgclean.detectors import registry

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
            written = getattr(param, "help", None) or ""  # the text as declared
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
        "evaluate": [evaluate_method_help().rstrip(".")],
        "fit-head": ["[default: the one recorded in config.json]"],
    }
    for name, texts in expected.items():
        rendered = flat(runner.invoke(app, [name, "-h"]).output)
        for text in texts:
            assert flat(text) in rendered, (name, text)


def test_evaluate_method_help_names_every_registered_method():
    rendered = flat(runner.invoke(app, ["evaluate", "-h"]).output)
    for name in registry.method_names():  # from the registry: a new detector is named without editing the text
        assert re.search(rf"\b{name}\b", rendered.split("--method", 1)[1].split("--plots")[0]), name


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
    assert "Missing argument 'TRAIN_DIR'" in result.output
    assert "fit [OPTIONS] TRAIN_DIR" in result.output.splitlines()[1]  # the hint line


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


# ---- -h at 80 columns (issue 25) -------------------------------------------------------------
WIDTH = 80
MIN_DESCRIPTION = 44  # typer's boxes left fit 19 characters, scan 22, audit 24
SECTIONS = ("Arguments:", "Options:", "Commands:")


def help_at(monkeypatch, columns: int, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))  # the width the help reads, whatever runs the tests
    result = runner.invoke(app, [*args, "-h"])
    assert result.exit_code == 0, result.output
    return result.stdout


def section_rows(text: str) -> dict[str, list[str]]:
    """The lines of each section (Arguments:, Options:, Commands:) up to the blank line after it."""
    sections, current = {}, None
    for line in text.splitlines():
        if line in SECTIONS:
            current = sections.setdefault(line, [])
        elif not line.strip():
            current = None
        elif current is not None:
            current.append(line)
    return sections


def description_start(lines: list[str]) -> int:
    """Where a section's descriptions start: the indentation of continuation lines, and on a
    term's own line the text after the term and its gap of two or more spaces."""
    starts = []
    for line in lines:
        indent = len(line) - len(line.lstrip())
        gap = re.search(r"\S {2,}(?=\S)", line[indent:]) if indent <= 2 else None
        starts.append(indent + gap.end() if gap else indent)
    return max(starts)


def test_description_start_is_measured_as_printed():
    lines = ["  -o, --output PATH   Model directory to", "                      write.", "  --very-long-option-name [a|b]"]
    assert description_start(lines) == 22
    assert description_start(["  -h, --help  Show this message and exit."]) == 14


def every_help() -> list[tuple[str, ...]]:
    return [()] + [(name,) for name in commands()]


def test_every_help_reads_at_80_columns(monkeypatch):
    for args in every_help():
        text = help_at(monkeypatch, WIDTH, *args)
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= WIDTH, (args, max(lines, key=len))
        assert "\u2026" not in text and "\u2502" not in text, args  # nothing cropped, no box
        sections = section_rows(text)
        assert "Options:" in sections, args
        for name, rows in sections.items():
            assert WIDTH - description_start(rows) >= MIN_DESCRIPTION, (args, name, WIDTH - description_start(rows))


def test_fit_help_is_compact_at_80_columns(monkeypatch):
    text = help_at(monkeypatch, WIDTH, "fit")
    options = [p for p in commands()["fit"].params if p.param_type_name == "option"]
    # typer's boxes took 160 lines for fit's 29 parameters (over 5 a parameter)
    assert len(text.splitlines()) <= 3 * len(options) + 10, len(text.splitlines())


def test_every_option_and_its_help_and_default_are_in_the_help(monkeypatch):
    from imgclean.cli.help_text import option_names, shown_default

    shown = 0
    for name, cmd in commands().items():
        text = help_at(monkeypatch, WIDTH, name)
        rendered = flat(text)
        for param in cmd.params:
            assert flat(getattr(param, "help", None) or "") in rendered, (name, param.name)
            if param.param_type_name == "option":
                assert option_names(param) in text, (name, param.name)
                for opt in (*param.opts, *param.secondary_opts):  # --augment / --no-augment as --[no-]augment
                    paired = "--[no-]" + opt.removeprefix("--no-").removeprefix("--")
                    assert re.search(rf"(^|[ ,]){re.escape(opt)}\b", text, re.M) or paired in text, (name, opt)
            default = shown_default(param)
            if default is not None:
                assert flat(f"default: {default}") in rendered, (name, param.name, default)
                shown += param.param_type_name == "argument"
    assert shown >= 2  # info's MODEL, init-config's PATH


def option_blocks(text: str) -> dict[str, str]:
    """Each option's lines in -h (from its term to the next term), keyed by the term."""
    blocks, term = {}, None
    for line in section_rows(text).get("Options:", []):
        if line.startswith("  -"):
            term = line.split("  ")[1]
            blocks[term] = ""
        blocks[term] += " " + line.strip()
    return blocks


def test_no_default_is_shown_twice(monkeypatch):
    seen = 0
    for name in commands():
        for term, block in option_blocks(help_at(monkeypatch, WIDTH, name)).items():
            seen += 1
            assert flat(block).count("[default:") <= 1, (name, term, block)
    assert seen > 50
    workers = next(block for term, block in option_blocks(help_at(monkeypatch, WIDTH, "scan")).items()
                   if term.startswith("--workers"))
    assert flat("[default: 0 = one per CPU core]") in flat(workers) and "default: 0]" not in workers
    reference = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert all(line.count("[default:") <= 1 for line in reference.splitlines())


def test_flags_and_choices_read_as_typed(monkeypatch):
    fit = option_blocks(help_at(monkeypatch, WIDTH, "fit"))
    assert any(term.startswith("--[no-]pretrained") and "[default: --no-pretrained]" in block for term, block in fit.items())
    assert any(term.startswith("--device [auto|cpu|cuda|mps]") for term in fit)
    assert any(term.startswith("-o, --output PATH") for term in fit)
    scan = option_blocks(help_at(monkeypatch, WIDTH, "scan"))
    assert any(term.startswith("--batch-size INT") and "[default: 256; x>=1]" in block for term, block in scan.items())


def test_the_help_follows_the_width_within_bounds(monkeypatch):
    from imgclean.cli.help_text import MAX_WIDTH, MIN_WIDTH

    for columns, widest in ((60, 60), (MIN_WIDTH, MIN_WIDTH), (4000, MAX_WIDTH)):
        for args in every_help():
            text = help_at(monkeypatch, columns, *args)
            assert max(len(line) for line in text.splitlines()) <= widest, (columns, args)
            assert "mahalanobis" in text or args != ("scan",)  # a choice list too long for the line is kept


def test_help_imports_no_rich():
    code = ("import sys\nsys.argv = ['imgclean', 'fit', '-h']\nfrom imgclean.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('RICH', 'rich' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert "--epochs" in proc.stdout and proc.stdout.strip().endswith("RICH False"), proc.stdout[-300:] + proc.stderr
