"""BP on a network with a linear head: its loss and gradients against the chain rule written out by
hand (the cascade's stage-by-stage step is checked against one backward in tests/test_profiling.py)."""
import pytest
import torch

from helpers import config, grads, no_autocast
from sidlib.methods import bp
from sidlib.models.mlp import mlp


def test_bp_step_is_the_smoothed_cross_entropys_chain_rule_by_hand():
    torch.manual_seed(0)
    model = mlp((1, 5), 3, [4, 6])  # Linear(5, 4)-ReLU, Linear(4, 6)-ReLU, Linear(6, 3)
    x, labels = torch.randn(7, 1, 5), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    smoothing, n, classes = 0.2, 7, 3
    loss = bp.step(model, x, labels, config(method="bp", model="mlp-2x800", label_smoothing=smoothing), no_autocast)
    (l1, l2), head = (block[-2] for block in model.blocks), model.head[0]
    w1, b1, w2, b2, w3, b3 = (t.detach().double() for t in (l1.weight, l1.bias, l2.weight, l2.bias,
                                                            head.weight, head.bias))
    h0 = x.flatten(1).double()
    a1 = h0 @ w1.T + b1
    h1 = a1.clamp(min=0)
    a2 = h1 @ w2.T + b2
    h2 = a2.clamp(min=0)
    z = h2 @ w3.T + b3
    # the smoothed target (1 - eps) onehot + eps / C, and the mean cross-entropy against it
    target = torch.full((n, classes), smoothing / classes, dtype=torch.float64)
    target[torch.arange(n), labels] += 1 - smoothing
    log_softmax = z - z.exp().sum(1, keepdim=True).log()
    assert loss.item() == pytest.approx(-(target * log_softmax).sum(1).mean().item(), rel=1e-6)
    e = (log_softmax.exp() - target) / n  # dL/dz
    delta2 = (e @ w3) * (a2 > 0)  # back through W_3^T, then the ReLU
    delta1 = (delta2 @ w2) * (a1 > 0)
    expected = {"blocks.0.1.weight": delta1.T @ h0, "blocks.0.1.bias": delta1.sum(0),
                "blocks.1.0.weight": delta2.T @ h1, "blocks.1.0.bias": delta2.sum(0),
                "head.0.weight": e.T @ h2, "head.0.bias": e.sum(0)}
    got = grads(model)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert value.abs().max() > 1e-3, name  # a real gradient, not zeros matching zeros
        torch.testing.assert_close(got[name].double(), value, rtol=1e-5, atol=1e-7, msg=name)
