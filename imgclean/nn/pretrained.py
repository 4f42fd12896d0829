"""Pretrained timm weights without a storm of retries when the machine is offline.

timm fetches weights through huggingface_hub, which retries every failed request five times with
back-off and logs two warnings per try through a handler of its own (so even `-q` showed them):
44 lines and about a minute before its error on a machine without network. Here the local cache
is tried first with the hub switched to offline mode (no request at all); only on a miss is the
network tried, after a quick check that the hub can be reached, and with the hub's loggers and
warnings silenced. Every failure is one PretrainedError line, and an offline one says where
the weights would be looked for (the hub cache folder, and the variables that move it) and how to
put them there, or to pass a file with --weights instead (nn/weights.py reads timm's,
torchvision's and EfficientNet-PyTorch's layouts).
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlsplit
from ..errors import ImgcleanError

T = TypeVar("T")

# Loggers that speak while weights are fetched: the hub's retries, HTTP clients, file locks.
NOISY_LOGGERS = ("huggingface_hub", "httpx", "httpx2", "httpcore", "urllib3", "filelock")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
CONNECT_TIMEOUT_S = 3.0


class PretrainedError(ImgcleanError, ValueError):
    """Pretrained weights cannot be had; the message is one line and names the model."""


@contextmanager
def quiet_hub() -> Iterator[None]:
    """Silence the hub's and the HTTP clients' loggers and any warnings, then restore them."""
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub answers from its cache only (as with HF_HUB_OFFLINE=1) inside the block."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def offline_by_choice() -> bool:
    """The user asked for no network (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` seconds.

    Behind a proxy a direct connection says nothing, so the answer is then yes (let the
    download try).
    """
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("huggingface_hub")


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def offline_advice(arch: str) -> str:
    """Where timm (through huggingface_hub, or torch's hub for plain URLs) looks for the weights
    of `arch`, and how to put them there or use --weights instead: one clause for an error line."""
    hub_id = url = None
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        hub_id, url = (getattr(cfg, "hf_hub_id", None) or None), (getattr(cfg, "url", None) or None)
    except Exception:  # an hf-hub:/local-dir: name or a timm without this model: say it generally
        pass
    if hub_id or not url:
        from huggingface_hub import constants

        repo = hub_id or "the model's repository"
        return (f"timm looks for {repo} in the huggingface_hub cache {constants.HF_HUB_CACHE} (moved by HF_HUB_CACHE "
                f"or HF_HOME): on a machine with network run `hf download {repo} --cache-dir DIR`, copy DIR here and "
                "set HF_HUB_CACHE=DIR; or pass a backbone weights file (such as that repository's model.safetensors) "
                "with --weights FILE")
    import torch

    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    return (f"timm looks for {os.path.basename(url)} in {folder} (moved by TORCH_HOME): copy it there from {url}; "
            "or pass it with --weights FILE")


def load_pretrained(arch: str, create: Callable[[], T]) -> T:
    """Run `create` (a timm.create_model call with pretrained=True): cache first, then network.

    Errors that are not about fetching weights (a bad model argument) propagate unchanged.
    """
    advice = offline_advice(arch)
    try:
        with quiet_hub(), hub_offline():
            return create()
    except Exception as exc:
        if not _from_hub(exc):
            if isinstance(exc, OSError):  # weights from a plain URL (torch hub cache) that failed
                raise PretrainedError(f"cannot load pretrained weights for {arch}: {_reason(exc)}; {advice}") from None
            raise  # not about the weights: the caller reports the model that cannot be built
    if offline_by_choice():
        raise PretrainedError(
            f"cannot load pretrained weights for {arch}: not in the cache and HF_HUB_OFFLINE is set; {advice}"
        )
    if not hub_reachable():
        raise PretrainedError(f"cannot load pretrained weights for {arch}: no network and not in the cache; {advice}")
    try:
        with quiet_hub():
            return create()
    except Exception as exc:
        raise PretrainedError(f"cannot download pretrained weights for {arch}: {_reason(exc)[:300]}; {advice}") from None
