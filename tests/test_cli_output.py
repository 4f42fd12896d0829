"""Output and logging (issue 9 item 7) and the device default (item 10): -v raises imgclean's
loggers only, --json changes stdout only, progress shows rate, ETA and exact counts, fit says
when it raised the epochs, reports are never JSON lines in a .json file."""
import io
import json
import logging
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from imgclean.cli import EXIT_TERMINATED, EXIT_USAGE, app, common

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_verbose_raises_imgclean_loggers_but_not_pillows(model_dir, incoming, tmp_path):
    root, _ = incoming
    result = invoke("scan", root, "-m", model_dir, "--move-to", tmp_path / "q", "-v", "--no-cache")
    assert result.exit_code == 0, result.output
    assert logging.getLogger("imgclean.quarantine.moves").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.DEBUG)
    assert "STREAM" not in result.stderr and "DEBUG: locked" in result.stderr


def test_json_keeps_warnings_on_stderr(model_dir, incoming, monkeypatch):
    import imgclean.store.artifact as artifact

    root, kinds = incoming
    real = artifact.load_model

    def load_model(*args, **kwargs):
        logging.getLogger("imgclean.store.artifact").warning("model was made by imgclean 0.0.1; this is newer")
        return real(*args, **kwargs)

    monkeypatch.setattr(artifact, "load_model", load_model)
    result = invoke("scan", root, "-m", model_dir, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scanned"] == len(kinds)  # stdout is only the JSON
    assert "WARNING: model was made by imgclean 0.0.1" in result.stderr
    quiet = invoke("scan", root, "-m", model_dir, "--json", "-q")
    assert "WARNING" not in quiet.stderr  # -q still silences warnings


def test_report_with_a_json_extension_is_refused_naming_jsonl(model_dir, incoming, tmp_path):
    root, _ = incoming
    result = invoke("scan", root, "-m", model_dir, "--report", tmp_path / "r.json")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "r.jsonl" in result.output
    assert not (tmp_path / "r.json").exists()


def test_report_module_still_reads_old_json_files_and_never_writes_them(tmp_path):
    from imgclean.reports.records import RecordWriter, report_format

    assert report_format(tmp_path / "old.json") == "jsonl"
    with pytest.raises(ValueError, match=r"\.jsonl"):
        report_format(tmp_path / "new.json", write=True)
    with pytest.raises(ValueError, match=r"\.jsonl"):
        RecordWriter(tmp_path / "new.json")


@pytest.fixture
def terminal(monkeypatch):
    """Progress drawn as on a terminal, into a buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=buffer, force_terminal=True, width=200, color_system=None))
    return buffer


def test_progress_shows_rate_eta_and_the_exact_final_counts(model_dir, incoming, terminal):
    root, kinds = incoming
    summary = json.loads(invoke("scan", root, "-m", model_dir, "--json", "--no-cache").stdout)
    # Scored files come a batch at a time: small batches, so the bar is updated more than once
    result = invoke("scan", root, "-m", model_dir, "--no-cache", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    drawn = terminal.getvalue()
    final = f"{len(kinds)}/{len(kinds)} ok {summary['ok']} rejected {summary['rejected']}"
    assert final in drawn, drawn[-500:]
    assert re.search(r"\d[\d,]*\.\d/s", drawn) and "eta" in drawn


def test_interrupt_says_how_far_the_scan_got(model_dir, incoming, terminal, monkeypatch):
    from imgclean import cli

    root, kinds = incoming
    monkeypatch.setattr(cli.StopFlag, "__call__", lambda self: True)  # as if SIGTERM came at once
    result = invoke("scan", root, "-m", model_dir, "--no-cache")
    assert result.exit_code == EXIT_TERMINATED, result.output
    assert re.search(rf"interrupted after \d+ of {len(kinds)} files", result.stderr), result.stderr


def test_the_model_loading_step_is_shown_while_the_network_loads():
    from imgclean.store.artifact import ModelBundle
    from imgclean.cli.scan import show_model_loading

    class Progress:
        descriptions = []

        def update(self, task, description):
            self.descriptions.append(description)

    bundle, progress = ModelBundle(config={}, loader=lambda: "network"), Progress()
    show_model_loading(bundle, progress, task=1)
    assert progress.descriptions == []
    assert bundle.model == "network"  # the lazy network loads on first use
    assert progress.descriptions == ["loading model", "scanning"]


def test_fit_says_when_it_raised_the_epochs(train_dir, tmp_path):
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--epochs", "1", "--min-steps", "12", "--batch-size", "16", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_requested"] == 1 and summary["epochs_trained"] > 1
    assert f"trained {summary['epochs_trained']} epochs instead of the 1 asked for" in result.stderr
    plain = invoke("fit", train_dir, "-o", tmp_path / "m2", "--epochs", "2", "--min-steps", "0", "--batch-size", "16")
    assert plain.exit_code == 0, plain.output
    assert "instead of" not in plain.output  # nothing raised, nothing said


def test_info_shows_the_epochs_trained(model_copy):
    config_path = model_copy / "config.json"
    config = json.loads(config_path.read_text())
    before = invoke("info", model_copy)
    # training.epochs_trained, or for models from before it existed metrics.epochs
    recorded = (config.get("training") or {}).get("epochs_trained", (config.get("metrics") or {}).get("epochs"))
    assert recorded is not None
    assert re.search(rf"training\.epochs_trained[\s│]+{recorded}\b", before.stdout), before.stdout
    config.setdefault("training", {})["epochs_trained"] = 17
    config_path.write_text(json.dumps(config))
    after = invoke("info", model_copy)
    assert after.exit_code == 0, after.output
    assert re.search(r"training\.epochs_trained[\s│]+17\b", after.stdout), after.stdout


def test_device_auto_answers_cpu_without_torch_when_no_gpu_can_exist(monkeypatch, tmp_path):
    import imgclean.nn.runtime as runtime

    def pick_device(requested):
        raise AssertionError("torch was asked although no GPU device node exists")

    monkeypatch.setattr(runtime, "pick_device", pick_device)
    monkeypatch.setattr(common, "GPU_DEVICE_PATHS", (str(tmp_path / "no-nvidia*"),))
    monkeypatch.setattr(common.sys, "platform", "linux")
    assert common.resolve_device("auto") == "cpu"
    assert common.resolve_device("cpu") == "cpu"
    (tmp_path / "no-nvidia0").write_text("")  # now a GPU may exist: torch decides
    monkeypatch.setattr(runtime, "pick_device", lambda requested: "cuda")
    assert common.resolve_device("auto") == "cuda"


def test_scan_and_evaluate_default_to_auto():
    import typer

    commands = typer.main.get_command(app).commands
    for name in ("scan", "evaluate", "fit"):
        device = next(p for p in commands[name].params if p.name == "device")
        assert getattr(device.default, "value", device.default) == "auto", name
