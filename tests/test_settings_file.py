"""--config YAML files: defaults < file < flags; unknown keys are errors; init-config."""
import json

import yaml
from typer.testing import CliRunner

from imgclean.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_init_config_writes_every_option_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "imgclean.yaml"
    result = invoke("init-config", path)
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(path.read_text())
    assert data["fit"]["epochs"] == 15 and data["fit"]["center_weight"] == 0.1
    assert data["scan"]["model"] == "imgclean-model" and data["scan"]["batch_size"] == 256
    assert "config_file" not in data["fit"] and "force" not in data["fit"]
    assert invoke("init-config", path).exit_code == 2


def test_file_values_apply_and_flags_win(train_dir, tmp_path):
    settings = tmp_path / "s.yaml"
    settings.write_text("fit:\n  epochs: 1\n  center-weight: 0.5\n  seed: 7\n")
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


def test_scan_reads_its_section(model_dir, incoming, tmp_path):
    root, kinds = incoming
    settings = tmp_path / "s.yaml"
    settings.write_text(f"scan:\n  model: {model_dir}\n  fail_on_reject: true\n")
    result = invoke("scan", root, "--config", settings, "--json")
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["scanned"] == len(kinds)


def test_unknown_keys_and_bad_files_are_usage_errors_naming_the_problem(train_dir, tmp_path):
    cases = {
        "epoch: 3\n": "unknown section 'epoch'",
        "fit:\n  epoch: 3\n": "fit.epoch",
        "fit: [1, 2]\n": "must be a mapping",
        "fit:\n  epochs: [\n": "not valid YAML",
        "fit:\n  epochs: many\n": "epochs",
    }
    for text, expected in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        result = invoke("fit", train_dir, "-o", tmp_path / "m", "--config", path)
        assert result.exit_code == 2, (text, result.output)
        assert expected in result.output, (text, result.output)
        assert "Traceback" not in result.output
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--config", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "does not exist" in result.output
