"""evaluate through the CLI: JSON keys and ranges, plots, errors."""
import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import CLASSES, class_image, ood_image, write_png
from imgclean.cli import app
from imgclean.detectors import registry

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(7)
    for name in CLASSES:
        for i in range(8):
            write_png(root / "in" / name / f"{i}.png", class_image(name, rng))
    for i in range(12):
        write_png(root / "ood" / "x" / f"{i}.png", ood_image(rng))
    (root / "ood" / "broken.png").write_bytes(b"not a png")
    return root / "in", root / "ood"


def check_method_results(r):
    for key in ("precision", "recall", "f1", "auroc", "aupr", "fpr_at_95_tpr"):
        assert 0.0 <= r[key] <= 1.0, (key, r)


def test_evaluate_json_without_head(model_dir, folders, tmp_path):
    in_dir, ood_dir = folders
    result = invoke("evaluate", "--in", in_dir, "--ood", ood_dir, "-m", model_dir, "--json", "--plots", tmp_path / "p")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    fitted = [c.name for c in registry.unsupervised()]
    assert set(out) >= {"classification", *fitted} and "head" not in out and "both" not in out
    for method in fitted[1:]:  # one column per detector the model has, from the registry
        check_method_results(out[method])
        assert 0.0 <= out[method]["false_reject_rate"] <= 1.0
        rows = list(csv.DictReader(open(tmp_path / "p" / f"roc_{method}.csv")))
        assert set(rows[0]) == {"score_threshold", "fpr", "tpr"}
        assert (rows[0]["fpr"], rows[0]["tpr"], rows[-1]["fpr"], rows[-1]["tpr"]) == ("1.000000",) * 2 + ("0.000000",) * 2
    assert out["knn"]["auroc"] > 0.7
    assert (tmp_path / "p" / "roc.png").is_file()  # every curve in one figure
    assert 0.0 <= out["classification"]["accuracy"] <= 1.0 and 0.0 <= out["classification"]["macro_f1"] <= 1.0
    assert out["classification"]["accuracy"] > 0.5  # the tiny model learned its three patterns
    check_method_results(out["mahalanobis"])
    assert out["mahalanobis"]["auroc"] > 0.7  # bright blobs are far from the stripes
    assert out["counts"] == {"in_distribution": 24, "out_of_distribution": 12, "unreadable": 1}
    assert any(p.endswith("broken.png") for p in out["unreadable"])
    png = tmp_path / "p" / "roc_mahalanobis.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 100
    rows = list(csv.DictReader(open(tmp_path / "p" / "roc_mahalanobis.csv")))
    assert rows[0]["fpr"] == "1.000000" and rows[0]["tpr"] == "1.000000"
    assert rows[-1]["fpr"] == "0.000000" and rows[-1]["tpr"] == "0.000000"
    fpr = [float(r["fpr"]) for r in rows]
    assert fpr == sorted(fpr, reverse=True)  # thresholds only grow along the sweep


def test_evaluate_with_head_reports_every_method(model_with_head, folders, tmp_path):
    in_dir, ood_dir = folders
    model_copy = model_with_head
    result = invoke("evaluate", "--in", in_dir, "--ood", ood_dir, "-m", model_copy, "--json", "--plots", tmp_path / "p")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    for method in registry.available_methods([*(c.name for c in registry.unsupervised()), "head"]):
        check_method_results(out[method])
    assert out["head"]["auroc"] > 0.9  # it was trained on this very kind of reject
    assert out["both"]["recall"] >= max(out["mahalanobis"]["recall"], out["head"]["recall"])
    for name in ("roc_head.png", "roc_head.csv", "roc.png", "roc_mahalanobis.png"):
        assert (tmp_path / "p" / name).is_file()
    with Image.open(tmp_path / "p" / "roc.png") as img:
        img.verify()
    rows = list(csv.DictReader(open(tmp_path / "p" / "roc_head.csv")))
    assert (rows[0]["fpr"], rows[-1]["tpr"]) == ("1.000000", "0.000000")
    # the table output works too
    result = invoke("evaluate", "--in", in_dir, "--ood", ood_dir, "-m", model_copy, "--method", "head")
    assert result.exit_code == 0, result.output
    assert "head" in result.stdout and "mahalanobis" not in result.stdout


def test_evaluate_errors(model_dir, folders, tmp_path):
    in_dir, ood_dir = folders
    result = invoke("evaluate", "--in", in_dir, "--ood", ood_dir, "-m", model_dir, "--method", "head")
    assert result.exit_code == 1 and "fit-head" in result.output
    bad = tmp_path / "bad"
    write_png(bad / "giraffe" / "0.png", np.zeros((16, 16), dtype=np.uint8))
    result = invoke("evaluate", "--in", bad, "--ood", ood_dir, "-m", model_dir)
    assert result.exit_code == 1 and "'giraffe'" in result.output and "does not know" in result.output
    result = invoke("evaluate", "--in", tmp_path / "nope", "--ood", ood_dir, "-m", model_dir)
    assert result.exit_code == 2 and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_evaluate_table_reads_well_at_80_columns(model_dir, folders, monkeypatch):
    """Issue 25: at 80 columns the headers were cut (`precisi…`); now every header and number is
    whole, no line is wider than 80, and a legend names the short headers."""
    import io

    from rich.console import Console

    from imgclean.cli import model as model_cli

    buffer = io.StringIO()
    monkeypatch.setattr(model_cli, "out", Console(file=buffer, width=80, color_system=None, soft_wrap=True))
    result = invoke("evaluate", "--in", folders[0], "--ood", folders[1], "-m", model_dir, "-q")
    assert result.exit_code == 0, result.output
    text = buffer.getvalue()
    assert "…" not in text
    table = [line for line in text.splitlines() if "mahalanobis" in line or "AUROC" in line]
    assert all(len(line) <= 80 for line in table), table
    header = next(line for line in table if "AUROC" in line).split()
    assert header == ["method"] + [h for _, h in model_cli.EVALUATE_COLUMNS]
    row = next(line for line in table if line.split()[0] == "mahalanobis").split()
    assert len(row) == 8 and all(len(v) == 6 and 0 <= float(v) <= 1 for v in row[1:])
    assert "FRR: share of in-distribution images rejected" in text
