"""nn.runtime: the device, precision and layout decisions (testable without a GPU), and training
and embedding through it."""
from __future__ import annotations

import contextlib
import typing

import numpy as np
import pytest
import torch

from imgclean.config import LENET, TrainSettings
from imgclean.nn import losses, models, runtime as rt, training
from imgclean.nn.models import build_model

CUDA, CPU, MPS = torch.device("cuda"), torch.device("cpu"), torch.device("mps")


# ---- decisions ----------------------------------------------------------------------------------
def test_pick_device_lives_in_the_runtime():
    assert rt.pick_device("cpu") == CPU
    assert not hasattr(models, "pick_device")  # device policy lives in the runtime only
    with pytest.raises(ValueError, match="unknown device"):
        rt.pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            rt.pick_device("cuda")
        assert rt.pick_device("auto").type in ("cpu", "mps")


@pytest.mark.parametrize("device", [CPU, "cpu", MPS])
def test_no_mixed_precision_off_cuda(device):
    assert rt.amp_dtype(device) is None
    assert rt.amp_dtype(device, training=True) is None
    assert rt.amp_dtype(device, training=True, bf16_supported=True) is None
    assert rt.grad_scaler(device, None) is None
    assert isinstance(rt.autocast(device, None), contextlib.nullcontext)


def test_cuda_training_precision_bf16_where_supported_else_fp16_with_a_scaler():
    assert rt.amp_dtype(CUDA, training=True, bf16_supported=True) is torch.bfloat16
    assert rt.amp_dtype("cuda:1", training=True, bf16_supported=False) is torch.float16
    assert rt.needs_grad_scaler(torch.float16)
    assert not rt.needs_grad_scaler(torch.bfloat16) and not rt.needs_grad_scaler(None)


def test_cuda_inference_runs_in_float16():
    assert rt.amp_dtype(CUDA) is torch.float16
    assert rt.amp_dtype("cuda:0", bf16_supported=True) is torch.float16


@pytest.mark.parametrize(
    "arch, device, size, training, expected",
    [
        (LENET, CUDA, 224, False, False),
        (LENET, CPU, 224, False, False),
        ("resnet18", CUDA, 32, False, True),
        ("resnet18", CUDA, 32, True, True),
        ("resnet18", "cuda:1", 224, True, True),
        ("resnet18", CPU, 63, False, False),
        ("resnet18", CPU, 64, False, True),
        ("efficientnet_b0", CPU, 224, True, False),  # CPU training: unchanged, contiguous
        ("resnet18", MPS, 224, True, False),
    ],
)
def test_the_channels_last_rule(arch, device, size, training, expected):
    assert rt.use_channels_last(arch, device, size, training) is expected


def test_inference_batch_size_is_the_runtimes_choice():
    assert rt.default_batch_size(CPU) == rt.CPU_BATCH == 256
    assert rt.default_batch_size("cuda:0") == rt.CUDA_BATCH > rt.CPU_BATCH


def test_unused_code_is_gone():
    from imgclean.pipeline.fit import headfit, trainset

    assert not hasattr(models.Classifier, "embed")
    assert not hasattr(headfit, "ProgressCallback")
    assert trainset.ProgressCallback is not None
    # BatchCallback declares what train_classifier passes: epoch, epochs, batch, batches, loss, accuracy
    assert len(typing.get_args(training.BatchCallback)[0]) == 6


# ---- embedding ----------------------------------------------------------------------------------
def small_images(n=37, size=16, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_predict_arrays_batches_are_the_runtimes_and_outputs_float32():
    torch.manual_seed(0)
    model = build_model(LENET, 4, 3, 16)
    images, mean, std = small_images(), [0.5] * 3, [0.25] * 3
    logits, feats = rt.predict_arrays(model, images, mean, std, "cpu")
    assert logits.shape == (37, 4) and feats.shape == (37, model.feature_dim)
    assert logits.dtype == feats.dtype == np.float32
    same = rt.predict_arrays(model, images, mean, std, "cpu", batch_size=rt.CPU_BATCH)
    assert np.array_equal(logits, same[0]) and np.array_equal(feats, same[1])
    small = rt.predict_arrays(model, images, mean, std, "cpu", batch_size=5)
    np.testing.assert_allclose(small[1], feats, atol=1e-6)
    empty = rt.predict_arrays(model, images[:0], mean, std, "cpu")
    assert empty[0].shape == (0, 4) and empty[1].shape == (0, model.feature_dim)
    assert empty[0].dtype == empty[1].dtype == np.float32


def test_inputs_follow_a_channels_last_model():
    torch.manual_seed(0)
    model = build_model(LENET, 3, 3, 16)
    images, mean, std = small_images(), [0.5] * 3, [0.25] * 3
    plain = rt.predict_arrays(model, images, mean, std, "cpu")
    assert not rt.is_channels_last(model)
    model.to(memory_format=torch.channels_last)
    assert rt.is_channels_last(model)
    np.testing.assert_allclose(rt.predict_arrays(model, images, mean, std, "cpu")[1], plain[1], atol=1e-5)


def test_prepare_for_inference_applies_the_rule(monkeypatch):
    monkeypatch.setenv("IMGCLEAN_TORCH_THREADS", str(torch.get_num_threads()))
    model = build_model(LENET, 3, 3, 16).train()
    assert rt.prepare_for_inference(model, "cpu", LENET, 16) is model
    assert not model.training and not rt.is_channels_last(model)
    model = build_model(LENET, 3, 3, 16)
    rt.prepare_for_inference(model, "cpu", "some_timm_cnn", 64)  # what the rule says for a timm CNN
    assert rt.is_channels_last(model)


def test_headfit_embeds_through_the_runtime(monkeypatch):
    from types import SimpleNamespace

    from imgclean.pipeline.fit import headfit

    seen = []
    monkeypatch.setattr(rt, "predict_arrays", lambda *a, **k: seen.append((a, k)) or (None, "feats"))
    bundle = SimpleNamespace(model="net", config={"mean": [0.5], "std": [0.2]})
    assert headfit.embed(bundle, "images", "cpu") == "feats"
    assert seen == [(("net", "images", [0.5], [0.2], "cpu"), {})]  # batch size: the runtime's


# ---- training -----------------------------------------------------------------------------------
def tiny_run(on_batch=None, seed=0):
    images = small_images(48, 16, 1, seed=1)
    labels = np.arange(48) % 3
    images[labels == 1] //= 3
    training.seed_everything(seed)
    model = build_model(LENET, 3, 1, 16)
    settings = TrainSettings(epochs=2, min_steps=0, batch_size=16, seed=seed)
    result = training.train_classifier(model, images, labels, [0.5], [0.25], settings, CPU, on_batch)
    return model, result


def test_cpu_training_is_deterministic_and_calls_back_with_six_values(one_torch_thread):
    calls = []
    model_a, a = tiny_run(lambda *args: calls.append(args))
    model_b, b = tiny_run()
    assert [vars(e) for e in a.history] == [vars(e) for e in b.history]
    for (k, va), vb in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert len(calls) == 2 * 3 and all(len(c) == 6 for c in calls)
    assert calls[-1][:4] == (2, 2, 3, 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_training_keeps_the_centres_float32(monkeypatch, one_torch_thread, dtype):
    """The CUDA branch's logic, run on the CPU: autocast (CPU autocast takes both dtypes), a
    GradScaler for float16, and the centre update in float32 whatever the forward pass ran in."""
    monkeypatch.setattr(rt, "amp_dtype", lambda device, training=False, bf16_supported=None: dtype)
    scalers = []
    real_scaler = rt.grad_scaler
    monkeypatch.setattr(rt, "grad_scaler", lambda d, t: scalers.append(real_scaler(d, t)) or scalers[-1])
    updates = []
    real_apply = losses.CenterLoss.apply_class_sums

    def apply(self, sums, counts):
        updates.append((self.centers.dtype, sums.dtype, counts.dtype))
        real_apply(self, sums, counts)

    monkeypatch.setattr(losses.CenterLoss, "apply_class_sums", apply)
    forward_dtypes = []
    real_forward = models.Classifier.forward

    def forward(self, x):
        logits, feats = real_forward(self, x)
        forward_dtypes.append(logits.dtype)
        return logits, feats

    monkeypatch.setattr(models.Classifier, "forward", forward)
    _, result = tiny_run()
    assert (scalers[0] is not None) is (dtype == torch.float16)
    assert updates and set(updates) == {(torch.float32, torch.float32, torch.float32)}
    assert dtype in forward_dtypes  # the training forward pass ran under autocast
    assert all(np.isfinite(e.loss) for e in result.history)


def test_center_loss_casts_half_features_up():
    loss_fn = losses.CenterLoss(2, 3)
    feats = torch.randn(6, 3).to(torch.bfloat16)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    assert loss_fn(feats, labels).dtype == torch.float32
    loss_fn.update_centers(feats, labels)
    assert loss_fn.centers.dtype == torch.float32
    sums, counts = loss_fn.class_sums(feats, labels)
    assert sums.dtype == counts.dtype == torch.float32 and counts.tolist() == [3.0, 3.0]
