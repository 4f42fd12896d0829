"""fit --interpolation/--crop-pct/--mean/--std reach FitConfig by name (contract 6)."""
import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

import imgclean.cli.train as train_cli
from imgclean.cli import EXIT_USAGE, app
from imgclean.config import FitConfig

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def captured(monkeypatch):
    """FitConfig with the four fields (as on the fitting branch), and a fit_model that records it."""
    import imgclean.pipeline.fit.fit_model as fit

    if {f.name for f in dataclasses.fields(FitConfig)} >= {"interpolation", "crop_pct", "mean", "std"}:
        config_class = FitConfig
    else:
        config_class = dataclasses.make_dataclass(
            "FitConfigWithDataConfig",
            [("interpolation", "str | None", None), ("crop_pct", "float | None", None),
             ("mean", "list | None", None), ("std", "list | None", None)],
            bases=(FitConfig,),
        )
    seen = []

    def fit_model(train_dir, config, *args, **kwargs):
        seen.append(config)
        raise fit.FitError("stopped by the test")

    monkeypatch.setattr(train_cli, "FitConfig", config_class)
    monkeypatch.setattr(fit, "fit_model", fit_model)
    return seen


def test_data_config_flags_reach_fitconfig(captured, train_dir, tmp_path):
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--interpolation", "bicubic", "--crop-pct", "0.875",
                    "--mean", "0.485,0.456,0.406", "--std", "0.229, 0.224, 0.225")
    assert result.exit_code == 1 and "stopped by the test" in result.output
    config = captured[0]
    assert config.interpolation == "bicubic" and config.crop_pct == 0.875
    assert config.mean == [0.485, 0.456, 0.406] and config.std == [0.229, 0.224, 0.225]


def test_without_the_flags_fitconfig_keeps_its_defaults(captured, train_dir, tmp_path):
    invoke("fit", train_dir, "-o", tmp_path / "m")
    config = captured[0]
    assert (config.interpolation, config.crop_pct, config.mean, config.std) == (None, None, None, None)


@pytest.mark.parametrize("args", [("--mean", "a,b,c"), ("--mean", "0.5,0.5"), ("--std", "0.2,0,0.2"),
                                  ("--crop-pct", "0"), ("--crop-pct", "1.5"), ("--interpolation", "cubic")])
def test_bad_values_are_usage_errors(captured, train_dir, tmp_path, args):
    result = invoke("fit", train_dir, "-o", tmp_path / "m", *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Traceback" not in result.output and captured == []


def test_fit_suggests_audit_when_held_out_accuracy_is_low(tmp_path):
    """Two classes of pure noise: nothing generalises, so fit points at `imgclean audit`."""
    from typer.testing import CliRunner

    from conftest import write_png
    from imgclean.cli import app

    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        for i in range(20):
            write_png(tmp_path / "noise" / name / f"{i}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    result = CliRunner().invoke(app, ["fit", str(tmp_path / "noise"), "-o", str(tmp_path / "m"), "--epochs", "1",
                                      "--min-steps", "0", "--val-fraction", "0.5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "held-out accuracy is low" in text and "imgclean audit" in text
