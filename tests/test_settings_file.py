"""--config YAML files: defaults < file < flags; option names as keys; unknown keys, bad files
and alias bombs are usage errors; init-config."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import flat
from imgclean.cli import app
from imgclean.settings import SettingsFileError, preview, read_settings_file

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_init_config_writes_the_option_names_as_typed_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "imgclean.yaml"
    result = invoke("init-config", path)
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(path.read_text())
    assert data["fit"]["epochs"] == 15 and data["fit"]["center-weight"] == 0.1
    assert data["scan"]["model"] == "imgclean-model" and data["scan"]["batch-size"] == 256
    assert data["scan"]["json"] is False and "move-to" in data["scan"] and "fail-on-reject" in data["scan"]
    assert not [k for section in data.values() for k in section if "_" in k]  # no parameter names
    assert "json_out" not in path.read_text() and "config_file" not in data["fit"] and "force" not in data["fit"]
    assert "\\[" not in path.read_text()  # help comments as the terminal shows them
    assert invoke("init-config", path).exit_code == 2


def test_the_written_template_is_read_back_unchanged(tmp_path):
    path = tmp_path / "imgclean.yaml"
    assert invoke("init-config", path).exit_code == 0
    import typer

    from imgclean.cli.options import settings_keys

    commands = typer.main.get_command(app).commands
    for name in ("fit", "scan"):
        settings = read_settings_file(path, name, settings_keys(commands[name]))
        assert settings["batch_size"] in (64, 256) and settings["json_out"] is False


def test_file_values_apply_and_flags_win(train_dir, tmp_path):
    settings = tmp_path / "s.yaml"
    settings.write_text("fit:\n  epochs: 1\n  center-weight: 0.5\n  seed: 7\n  min_steps: 0\n")
    out = tmp_path / "m"
    result = invoke("fit", train_dir, "-o", out, "--config", settings, "--seed", "3", "--json")
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["training"]["epochs"] == 1  # from the file
    assert recorded["training"]["center_weight"] == 0.5  # dashes work too
    assert recorded["training"]["seed"] == 3  # the flag wins over the file
    assert recorded["settings"]["epochs"] == 1
    info = invoke("info", out)
    assert "settings.epochs" in info.output


def test_scan_reads_option_names_with_dashes_or_underscores(model_dir, incoming, tmp_path):
    root, kinds = incoming
    quarantine = tmp_path / "q"
    settings = tmp_path / "s.yaml"
    settings.write_text(f"scan:\n  model: {model_dir}\n  json: true\n  dry-run-is-not-here: 1\n")
    assert invoke("scan", root, "--config", settings).exit_code == 2  # unknown keys still refused
    moved = []
    for move_key, batch_key in (("move-to", "batch-size"), ("move_to", "batch_size")):
        settings.write_text(f"scan:\n  model: {model_dir}\n  json: true\n  {move_key}: {quarantine}\n  {batch_key}: 4\n")
        result = invoke("scan", root, "--config", settings)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)  # json: true gave JSON on stdout
        assert summary["scanned"] == len(kinds) - sum(moved)
        moved.append(summary["moved"])
    assert moved[0] >= 5 and moved[1] == 0  # move-to applied: the rejects went, the rerun finds none
    assert len(list(quarantine.glob("*.png"))) == moved[0]


def test_old_parameter_names_are_still_accepted(model_dir, incoming, tmp_path):
    root, kinds = incoming
    settings = tmp_path / "s.yaml"
    settings.write_text(f"scan:\n  model: {model_dir}\n  json_out: true\n  fail_on_reject: true\n")
    result = invoke("scan", root, "--config", settings)
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["scanned"] == len(kinds)


def test_unknown_keys_and_bad_files_are_usage_errors_naming_the_problem(train_dir, tmp_path):
    cases = {
        "epoch: 3\n": "unknown section 'epoch'",
        "fit:\n  epoch: 3\n": "fit.epoch",
        "fit: [1, 2]\n": "must be a mapping",
        "fit:\n  epochs: [\n": "not valid YAML",
        "fit:\n  epochs: many\n": "epochs",
        "fit:\n  batch-size: 4\n  batch_size: 8\n": "set the same option",
        "fit:\n  seed: {a: 1}\n": "must be a single value",
    }
    for text, expected in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        result = invoke("fit", train_dir, "-o", tmp_path / "m", "--config", path)
        assert result.exit_code == 2, (text, result.output)
        # whitespace and box characters removed: the error box wraps at the terminal's width
        assert flat(expected) in flat(result.output), (text, result.output)
        assert "Traceback" not in result.output
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--config", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and flat("does not exist") in flat(result.output)


def test_a_yaml_alias_bomb_is_refused_at_once_without_printing_it(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    # The anchors must come before their use: put the tree in a section of its own first.
    anchors = ["_: &a0 [xxxxxxxxxx,xxxxxxxxxx,xxxxxxxxxx,xxxxxxxxxx,xxxxxxxxxx,xxxxxxxxxx,xxxxxxxxxx,xxxxxxxxxx,xxxxxxxxxx,xxxxxxxxxx]"]
    for i in range(1, 7):
        anchors.append(f"_{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    text = "scan:\n" + "".join(f"  {a}\n" for a in anchors) + "  method: [" + ",".join(["*a6"] * 10) + "]\n"
    bomb.write_text(text)
    assert len(text) < 1000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "imgclean", "scan", str(tmp_path), "--config", str(bomb)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "aliases" in proc.stderr and "Traceback" not in proc.stderr
    assert len(flat(proc.stdout + proc.stderr)) < 2000  # the expanded value is never printed


def test_settings_values_are_bounded_and_errors_never_print_a_huge_value(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("scan:\n  model: " + "x" * 100_000 + "\n")
    try:
        read_settings_file(big, "scan", {"model"})
    except SettingsFileError as exc:
        assert "larger than" in str(exc) and len(str(exc).replace(str(big), "")) < 200
    else:
        raise AssertionError("a 100 kB settings file was accepted")
    long_value = tmp_path / "long.yaml"
    long_value.write_text("scan:\n  model: " + "y" * 10_000 + "\n")
    try:
        read_settings_file(long_value, "scan", {"model"})
    except SettingsFileError as exc:
        assert "10000 characters" in str(exc) and len(str(exc).replace(str(long_value), "")) < 200
    else:
        raise AssertionError("a 10,000-character value was accepted")
    assert len(preview(list(range(10**6)))) <= 60
    nested = [[["z" * 100] * 100] * 100] * 100  # shared rows: 10**8 leaves, a few objects
    assert len(preview(nested)) <= 60


def test_lists_of_numbers_become_comma_separated_values(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("fit:\n  mean: [0.5, 0.25, 0.125]\n")
    assert read_settings_file(path, "fit", {"mean"}) == {"mean": "0.5,0.25,0.125"}


def test_a_mistyped_key_or_section_gets_a_suggestion(train_dir, tmp_path):
    path = tmp_path / "s.yaml"
    for text, expected in {"fit:\n  epoch: 3\n": "did you mean epochs?", "fit:\n  center-wieght: 1\n": "did you mean center-weight?",
                           "fti:\n  epochs: 3\n": "did you mean fit?"}.items():
        path.write_text(text)
        result = invoke("fit", train_dir, "-o", tmp_path / "m", "--config", path)
        assert result.exit_code == 2 and flat(expected) in flat(result.output), (text, result.output)
    path.write_text("fit:\n  zzzzzz: 3\n")  # nothing close: no suggestion
    assert "did you mean" not in invoke("fit", train_dir, "-o", tmp_path / "m", "--config", path).output


@pytest.mark.parametrize("text, expected", [
    ("fit:\n  epochs: " + "9" * 5000 + "\n", "not valid YAML"),  # int() refuses: a ValueError, once a traceback
    ("fit:\n  epochs: 2001-13-45\n", "not valid YAML"),
    ("fit:\n  mean: " + "[" * 3000 + "]" * 3000 + "\n", "deeper than"),
    ("fit:\n  epochs: 3\x00\n", "NUL"),
])
def test_values_yaml_cannot_build_are_usage_errors(train_dir, tmp_path, text, expected):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--config", path)
    assert result.exit_code == 2 and flat(expected) in flat(result.output), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
