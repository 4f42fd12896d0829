"""A bad value in a settings file names the file and the key (issue 25): each value is checked
with its option's type when the file is read, and a bad one is one usage-error line
`FILE: scan.KEY: PROBLEM`, exit 2, never `Invalid value for '--json'` or a traceback."""
import json

import pytest
from typer.testing import CliRunner

from imgclean.cli import EXIT_USAGE, app

runner = CliRunner()

# (section, key: value) -> what the line says after "FILE: section.key: "
BAD = {
    ("scan", "json: maybe"): ("json", "'maybe' is not a valid boolean (use true or false)"),
    ("scan", "json: 3"): ("json", "3 is not a valid boolean (use true or false)"),
    ("scan", "batch-size: many"): ("batch-size", "'many' is not an integer"),
    ("scan", "batch_size: 2.5"): ("batch-size", "2.5 is not an integer"),
    ("scan", "workers: true"): ("workers", "true is not an integer"),
    ("scan", "batch-size: 0"): ("batch-size", "0 is not in the range x>=1"),
    ("scan", "ray-gpus-per-worker: -0.5"): ("ray-gpus-per-worker", "-0.5 is not in the range x>=0.0"),
    ("scan", "method: mahalanobus"): ("method", "'mahalanobus' is not one of 'mahalanobis'"),
    ("scan", "device: GPU"): ("device", "'GPU' is not one of 'auto', 'cpu', 'cuda', 'mps'"),
    ("scan", "model: 3"): ("model", "3 is not a path"),
    ("fit", "percentile: 101"): ("percentile", "101.0 is not in the range 0.0<=x<=100.0"),
    ("fit", "covariance: full"): ("covariance", "'full' is not one of 'tied', 'class'"),
    ("fit", "epochs: -1"): ("epochs", "-1 is not in the range x>=0"),
}


@pytest.mark.parametrize("section, entry", sorted(BAD))
def test_a_bad_value_names_the_file_and_the_key(section, entry, tmp_path):
    settings = tmp_path / "imgclean.yaml"
    settings.write_text(f"{section}:\n  {entry}\n")
    key, problem = BAD[(section, entry)]
    result = runner.invoke(app, [section, str(tmp_path / "folder"), "--config", str(settings)])
    assert result.exit_code == EXIT_USAGE, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr  # the error and the hint
    assert lines[0].startswith(f"imgclean {section}: error: {settings}: {section}.{key}: {problem}"), lines[0]
    assert "Invalid value for" not in result.output and "Traceback" not in result.output


def test_the_first_bad_value_is_reported_before_anything_runs(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    settings = tmp_path / "s.yaml"
    settings.write_text("scan:\n  model: /nonexistent/model\n  json: perhaps\n")
    result = runner.invoke(app, ["scan", str(folder), "--config", str(settings)])
    assert result.exit_code == EXIT_USAGE
    assert "scan.json: 'perhaps'" in result.stderr and "no model" not in result.output


def test_good_values_of_every_kind_still_apply(model_dir, incoming, tmp_path):
    root, kinds = incoming
    settings = tmp_path / "s.yaml"
    settings.write_text(f"scan:\n  model: {model_dir}\n  json: 'yes'\n  batch-size: 4.0\n  workers: 1\n"
                        "  method: mahalanobis\n  device: cpu\n  ray-gpus-per-worker: 0\n")
    result = runner.invoke(app, ["scan", str(root), "--config", str(settings)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scanned"] == len(kinds)  # json: 'yes' was taken as true
