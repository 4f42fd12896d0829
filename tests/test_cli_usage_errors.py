"""Usage errors read as one line in a log (issue 25): when stderr is not a terminal, an unknown
option, a bad value, a missing argument or one of imgclean's own usage checks is
`imgclean CMD: error: MESSAGE` plus at most one hint line, no box, no escape codes, exit 2, at
any width; in process (CliRunner) and in a real process whose stderr is a pipe."""
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from imgclean.cli import EXIT_USAGE, app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
BOX = re.compile("[\u2500-\u257f]")

# args -> (the start of the error line after "imgclean CMD: error: ", the hint line)
CASES = {
    "unknown option": (["scan", "incoming", "--mvoe-to", "q"],
                       "No such option: --mvoe-to (Did you mean --move-to?)", "try 'imgclean scan -h'"),
    "bad value": (["scan", "incoming", "--batch-size", "many"],
                  "Invalid value for '--batch-size': 'many' is not an integer.", "try 'imgclean scan -h'"),
    "out of range": (["scan", "incoming", "--batch-size", "0"],
                     "Invalid value for '--batch-size': 0 is not in the range x>=1.", "try 'imgclean scan -h'"),
    "bad choice": (["scan", "incoming", "--device", "gpu"],
                   "Invalid value for '--device': 'gpu' is not one of", "try 'imgclean scan -h'"),
    "missing argument": (["fit"], "Missing argument 'TRAIN_DIR'.", "Usage: imgclean fit [OPTIONS] TRAIN_DIR"),
    "unknown command": (["scna"], "No such command 'scna'. Did you mean 'scan'?", "try 'imgclean -h'"),
    "own check": (["scan", "/nonexistent/incoming"],
                  "/nonexistent/incoming does not exist", "try 'imgclean scan -h'"),
}


def check_two_lines(text: str, command: str, message: str, hint: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 2, text
    prefix = f"imgclean {command}: error: ".replace("imgclean : ", "imgclean: ")
    assert lines[0].startswith(prefix + message), text
    assert lines[1] == hint, text
    assert "\x1b" not in text and not BOX.search(text), text


@pytest.mark.parametrize("columns", [60, 4000])
@pytest.mark.parametrize("case", sorted(CASES))
def test_usage_errors_are_one_line_and_a_hint_in_process(case, columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    args, message, hint = CASES[case]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stdout == ""
    command = args[0] if args[0] in ("scan", "fit") else ""
    check_two_lines(result.stderr, command, message, hint)


@pytest.mark.parametrize("columns", [60, 4000])
def test_usage_errors_are_one_line_and_a_hint_from_a_real_process(columns, tmp_path):
    """stderr a pipe, as in a cron job: the program name is the console script's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)}
    code = "import sys; sys.argv[0] = 'imgclean'; from imgclean.cli import main; main()"
    for case in ("unknown option", "bad value", "missing argument", "own check"):
        args, message, hint = CASES[case]
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)
        assert proc.returncode == EXIT_USAGE, (case, proc.stderr)
        assert proc.stdout == "", case
        check_two_lines(proc.stderr, args[0], message, hint)


def test_a_long_message_is_not_wrapped_and_control_characters_stay_escaped(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "60")
    folder = tmp_path / ("x" * 120) / "new\nline"
    result = runner.invoke(app, ["scan", str(folder)])
    assert result.exit_code == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "x" * 120 + "/new\\nline does not exist" in lines[0], result.stderr


def test_imgclean_alone_prints_the_help_and_exits_2():
    result = runner.invoke(app, [])
    assert result.exit_code == EXIT_USAGE
    assert "Commands:" in result.stdout and "error" not in result.output


def test_on_a_terminal_the_error_is_coloured_and_still_two_lines(monkeypatch):
    from imgclean.cli import usage

    buffer = io.StringIO()
    monkeypatch.setattr(usage, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(usage, "err", Console(file=buffer, force_terminal=True, color_system="standard", width=60))
    result = runner.invoke(app, ["scan", "incoming", "--mvoe-to", "q"])
    assert result.exit_code == EXIT_USAGE
    drawn = buffer.getvalue()
    assert "\x1b[" in drawn and not BOX.search(drawn)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", drawn)
    assert plain.splitlines() == ["imgclean scan: error: No such option: --mvoe-to (Did you mean --move-to?)",
                                  "try 'imgclean scan -h'"]


def test_settings_file_errors_are_usage_errors_naming_the_file(tmp_path):
    settings = tmp_path / "imgclean.yaml"
    settings.write_text("scan:\n  epoch: 3\n")
    result = runner.invoke(app, ["scan", str(tmp_path), "--config", str(settings)])
    assert result.exit_code == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"imgclean scan: error: {settings}: unknown key scan.epoch"), lines
    assert "--config" not in lines[0]  # said against the file, not the flag
