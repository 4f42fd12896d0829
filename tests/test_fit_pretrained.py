"""--pretrained without network: one clear line at once, no hub retry noise (issue 9 item 7).

No test here reaches the network: the hub cache is a temporary folder, the reachability check
is replaced, and the hub runs in offline mode while the cache is tried.
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgclean.nn import pretrained
from imgclean.nn.models import build_model
from imgclean.nn.pretrained import PretrainedError

ARCH = "test_resnet"  # timm's tiny test model; its weights live at timm/test_resnet.r160_in1k


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


def no_network_expected(*args, **kwargs):
    raise AssertionError("the network must not be tried")


def test_offline_without_cache_is_one_line_at_once(empty_hub_cache, monkeypatch, capfd, caplog):
    checks = []
    monkeypatch.setattr(pretrained, "hub_reachable", lambda *a, **k: checks.append(1) or False)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PretrainedError) as err:
        build_model(ARCH, 2, 3, 32, pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    assert f"pretrained weights for {ARCH}" in message and "no network" in message and "--weights FILE" in message
    # where timm looks, what moves it, and how to put the file there (issue 25)
    assert str(empty_hub_cache) in message and "HF_HUB_CACHE" in message and "HF_HOME" in message
    assert "hf download timm/test_resnet.r160_in1k --cache-dir DIR" in message
    assert checks == [1]  # asked once, then stopped: no download attempts, no retries
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    noisy = [r for r in caplog.records if r.name.startswith(pretrained.NOISY_LOGGERS) and r.levelno >= logging.WARNING]
    assert noisy == [] and not any("Retry" in r.getMessage() for r in caplog.records)


def test_user_offline_mode_is_respected_without_any_check(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pretrained, "hub_reachable", no_network_expected)
    with pytest.raises(PretrainedError, match="not in the cache and HF_HUB_OFFLINE is set"):
        build_model(ARCH, 2, 3, 32, pretrained=True)
    assert constants.HF_HUB_OFFLINE is True  # restored as it was


def test_cached_weights_load_without_network(empty_hub_cache, monkeypatch):
    """Weights already in the hub cache are used offline, before any network check."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    source = timm.create_model(ARCH, num_classes=1000)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hub_cache / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(pretrained, "hub_reachable", no_network_expected)

    model = build_model(ARCH, 2, 3, 32, pretrained=True)
    first = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    assert (model.backbone.state_dict()[first] == state[first]).all()
    assert constants.HF_HUB_OFFLINE is False  # the offline switch was only for the cache try
    assert logging.getLogger("huggingface_hub").level != logging.CRITICAL + 1  # loggers restored


def test_cli_offline_pretrained_prints_one_line_even_with_quiet(tmp_path):
    """End to end, as the user saw it: HF_HUB_OFFLINE forces offline; one error line on stderr."""
    folder = tmp_path / "data"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 90 * i, dtype=np.uint8)).save(folder / name / f"{i}.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "COLUMNS": "60"}
    proc = subprocess.run(
        [sys.executable, "-m", "imgclean", "fit", str(folder), "-o", str(tmp_path / "m"), "--arch", ARCH,
         "--pretrained", "-q"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and ARCH in lines[0] and "--weights" in lines[0], proc.stderr
    assert str(tmp_path / "hf" / "hub") in lines[0], lines[0]  # the cache folder HF_HOME resolves to
    assert "Retry" not in proc.stderr and "Traceback" not in proc.stderr
