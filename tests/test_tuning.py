"""The IMGCLEAN_* switches: one table, parsed and checked once (imgclean/tuning.py)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from imgclean import tuning
from imgclean.cli import app
from imgclean.tuning import SWITCHES, Tuning, TuningError, from_env

PACKAGE = Path(__file__).resolve().parents[1] / "imgclean"


def test_defaults_and_every_switch_parsed():
    assert from_env({}) == Tuning()
    got = from_env({"IMGCLEAN_DECODE": "Processes", "IMGCLEAN_SCORE_IN_WORKERS": "no", "IMGCLEAN_TORCH_THREADS": "3",
                    "IMGCLEAN_SPLIT_STAT": "0", "IMGCLEAN_RAY_RETRIES": "0", "IMGCLEAN_RAY_START_TIMEOUT": "2.5",
                    "IMGCLEAN_RAY_TEST_KILL": "poison:x.png"})
    assert got == Tuning("processes", False, 3, False, 0, 2.5, "poison:x.png")
    assert from_env({"IMGCLEAN_TORCH_THREADS": "many", "IMGCLEAN_DECODE": ""}) == Tuning()


@pytest.mark.parametrize(("variable", "value"), [("IMGCLEAN_DECODE", "fibers"), ("IMGCLEAN_RAY_RETRIES", "-1"),
                                                 ("IMGCLEAN_RAY_RETRIES", "x"), ("IMGCLEAN_RAY_START_TIMEOUT", "inf"),
                                                 ("IMGCLEAN_RAY_START_TIMEOUT", "0")])
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(TuningError, match=re.escape(variable)):
        from_env({variable: value})


def test_the_cli_reads_the_environment_once_and_says_a_bad_value_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.setenv("IMGCLEAN_RAY_RETRIES", "lots")
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "IMGCLEAN_RAY_RETRIES must be a whole number" in result.output
    monkeypatch.delenv("IMGCLEAN_RAY_RETRIES")
    assert tuning.current() == Tuning()  # nothing left set after the command


def test_using_sets_current_for_the_block_only(monkeypatch):
    monkeypatch.setenv("IMGCLEAN_DECODE", "threads")
    with tuning.using(Tuning(decode="processes")):
        monkeypatch.setenv("IMGCLEAN_DECODE", "auto")
        assert tuning.current().decode == "processes"
    assert tuning.current().decode == "auto"


def test_no_module_reads_an_imgclean_variable_but_the_table():
    """Every IMGCLEAN_* switch is read through tuning.SWITCHES, nowhere else in the package."""
    variables = {variable for variable, _ in SWITCHES.values()}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "tuning.py":
            continue
        text = path.read_text()
        for match in re.finditer(r"environ(?:\.get)?\s*[\[(]\s*[\"'](IMGCLEAN_\w+)", text):
            pytest.fail(f"{path.relative_to(PACKAGE)} reads ${match.group(1)} itself")
    assert "IMGCLEAN_DECODE" in variables and os.sep not in "".join(variables)
