"""The SimpleCNN: shapes for every input kind, the cascade, and the exact ReLU/max-pool reordering."""
import pytest
import torch
from torch import nn

from sidlib.models import build_model
from sidlib.models.simplecnn import SimpleCNN


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 40), (1, 3, 3), (2, 1, 1)])
def test_any_input_shape(shape):
    model = build_model("simplecnn", shape, 7, 3)
    assert model(torch.randn(5, *shape)).shape == (5, 7)


def test_parameter_shapes_follow_the_paper():
    model = SimpleCNN((3, 32, 32), 100, 10)
    convs = [m for m in model.extractor if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1)), (128, 128, (3, 3), (1, 1))]
    assert model.extractor[-1].in_features == 128 and model.extractor[-1].out_features == 128
    assert len(model.blocks) == 10
    block = model.blocks[0]
    assert (block.hidden.in_features, block.hidden.out_features, block.out.out_features) == (228, 256, 100)


def test_forward_is_the_belief_cascade_from_uniform():
    torch.manual_seed(0)
    model = SimpleCNN((1, 12, 12), 10, 4)
    x = torch.randn(3, 1, 12, 12)
    h = model.extractor(x)
    belief = torch.full((3, 10), 0.1)
    for block in model.blocks:
        logits = block.out(torch.relu(block.hidden(torch.cat([belief, h], 1))))
        belief = torch.softmax(logits, 1)
    assert torch.allclose(model(x), logits)


def test_pool_then_relu_equals_relu_then_pool_in_values_and_gradients():
    """The extractor pools before its ReLU for speed; the paper's order must give identical results."""
    torch.manual_seed(0)
    model = SimpleCNN((1, 28, 28), 10, 1)
    ours = model.extractor
    paper_order = nn.Sequential(ours[0], ours[1], ours[2], nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                                ours[5], ours[6], ours[7], nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                                *ours[10:])
    assert isinstance(ours[3], nn.MaxPool2d) and isinstance(ours[4], nn.ReLU)
    x = torch.randn(8, 1, 28, 28)
    a, b = ours(x), paper_order(x)
    assert torch.equal(a, b)
    ga = torch.autograd.grad(a.square().sum(), list(ours.parameters()))
    gb = torch.autograd.grad(b.square().sum(), list(ours.parameters()))
    assert all(torch.equal(u, v) for u, v in zip(ga, gb))


def test_bad_model_arguments():
    with pytest.raises(ValueError):
        build_model("resnet", (1, 28, 28), 10, 2)
    with pytest.raises(ValueError):
        SimpleCNN((1, 28, 28), 10, 0)
    with pytest.raises(ValueError):
        SimpleCNN((28,), 10, 2)
