"""lenet's inference path (strided maxima instead of max_pool2d) gives exactly the training path's numbers."""
from __future__ import annotations

import pytest
import torch

from imgclean.nn.models import LeNet, _pool2_relu


@pytest.mark.parametrize("size", [28, 29, 31, 16])
@pytest.mark.parametrize("channels", [1, 3])
def test_inference_equals_training_path(size, channels):
    torch.manual_seed(size + channels)
    net = LeNet(channels, size).eval()
    x = torch.randn(7, channels, size, size)
    with torch.no_grad():
        fast = net(x)
        reference = net.fc1(net.features(x))  # the Sequential: conv, relu, max_pool2d, ...
    assert torch.equal(fast, reference)
    with torch.inference_mode():
        assert torch.equal(net(x), reference)


def test_pool_matches_max_pool2d_with_nan_and_ties():
    x = torch.randn(3, 4, 9, 11)
    x[0, 0, 0, 0] = float("nan")
    x[1, 1, 2:4, 2:4] = 0.5  # a tie
    x[2, 2, 4, 4] = -0.0
    expected = torch.nn.functional.max_pool2d(torch.relu(x), 2)
    got = _pool2_relu(x.clone())
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(expected))


def test_training_path_unchanged():
    net = LeNet(1, 28).train()
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    net(x).sum().backward()  # max_pool2d's gradient (the Sequential), as before
    assert x.grad is not None
