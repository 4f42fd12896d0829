import torch

from imgclean.nn.losses import CenterLoss


def test_center_loss_pulls_features_toward_centres():
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(20)
    feats = torch.nn.Parameter(torch.randn(60, 4) * 3)
    loss_fn = CenterLoss(3, 4, alpha=0.5)
    opt = torch.optim.SGD([feats], lr=30.0)  # the loss averages over 60 samples
    first = None
    for _ in range(30):
        loss = loss_fn(feats, labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_fn.update_centers(feats, labels)
    assert loss.item() < 0.05 * first
    spread = torch.stack([feats[labels == j].std(0).mean() for j in range(3)])
    assert (spread < 0.5).all()


def test_centres_move_by_the_wen_update_rule():
    loss_fn = CenterLoss(2, 2, alpha=0.5)
    feats = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, -2.0]])
    labels = torch.tensor([0, 0, 1])
    loss_fn(feats, labels)  # initialises centres at the batch means: (3, 0) and (0, -2)
    assert torch.allclose(loss_fn.centers, torch.tensor([[3.0, 0.0], [0.0, -2.0]]))
    shifted = feats + torch.tensor([1.0, 1.0])
    loss_fn.update_centers(shifted, labels)
    # class 0: delta = (2*c - sum x) / (1 + 2) = (6-8, 0-2)/3 ; c -= 0.5 * delta
    expected0 = torch.tensor([3.0, 0.0]) - 0.5 * torch.tensor([-2.0, -2.0]) / 3
    expected1 = torch.tensor([0.0, -2.0]) - 0.5 * torch.tensor([-1.0, -1.0]) / 2
    assert torch.allclose(loss_fn.centers[0], expected0)
    assert torch.allclose(loss_fn.centers[1], expected1)


def test_gradient_flows_to_features_not_centres():
    loss_fn = CenterLoss(2, 3)
    feats = torch.randn(4, 3, requires_grad=True)
    loss_fn(feats, torch.tensor([0, 1, 0, 1])).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert not loss_fn.centers.requires_grad


def test_centre_update_from_summed_parts_equals_the_whole_batch():
    # The seam for many processes: each adds up its part's class sums and counts, the sums are
    # added together, and applying them moves the centres as one process seeing the batch would.
    torch.manual_seed(0)
    feats, labels = torch.randn(12, 4), torch.tensor([0, 1, 2, 0, 1, 0, 2, 2, 0, 1, 1, 0])
    whole, parts = CenterLoss(3, 4), CenterLoss(3, 4)
    whole(feats, labels)
    parts.load_state_dict(whole.state_dict())
    whole.update_centers(feats, labels)
    (s1, c1), (s2, c2) = parts.class_sums(feats[:5], labels[:5]), parts.class_sums(feats[5:], labels[5:])
    parts.apply_class_sums(s1 + s2, c1 + c2)
    assert torch.allclose(parts.centers, whole.centers, atol=1e-6)
