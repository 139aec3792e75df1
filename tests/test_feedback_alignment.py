"""FA, DFA and DKP: FA is BP when B = W and differs otherwise; DFA's gradients against a hand
computation, its locality and fixed feedback; DKP's Kolen-Pollack gradient and its optimiser step."""
import copy

import pytest
import torch
from torch import nn

from helpers import config, grads, no_autocast, tiny_problem
from sidlib.methods import METHODS, bp, dfa, dkp, fa
from sidlib.models import build_model
from sidlib.models.mlp import mlp
from sidlib.train import make_optimizer

SHAPE = (1, 12, 12)


def batch(shape=SHAPE, n=8, classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def bp_and_fa_twins(name, shape, width=None, depth=2):
    """The same network twice (same seed): one for BP, one turned into FA."""
    torch.manual_seed(0)
    net = build_model(name, shape, 10, depth, width=width)
    twin = copy.deepcopy(net)
    fa.prepare(twin, config(method="fa"))
    return net, twin


def set_feedback_to_weights(model):
    for layer in fa.feedback_layers(model):
        layer.feedback.copy_(layer.weight.detach())


# ---- FA ----

@pytest.mark.parametrize("name, shape, width", [
    ("mlp-2x800", SHAPE, 16),
    ("sll-cnn-fmnist", (1, 28, 28), None),
    ("simplecnn", SHAPE, None),
])
def test_fa_with_feedback_equal_to_weights_is_bp(name, shape, width):
    net, twin = bp_and_fa_twins(name, shape, width)
    assert len(fa.feedback_layers(twin)) == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net.modules())
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.05)
    bp_optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for seed in (1, 2):  # "at every step": B follows W after each update
        set_feedback_to_weights(twin)
        images, labels = batch(shape, n=4, seed=seed)
        bp.step(net, images, labels, config(), no_autocast)
        fa.step(twin, images, labels, config(), no_autocast)
        expected, got = grads(net), grads(twin)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
        for opt in (optimizer, bp_optimizer):
            opt.step()
            opt.zero_grad(set_to_none=True)


def test_fa_with_random_feedback_differs_below_the_last_layer_only():
    for name, last, below in [("mlp-2x800", "head.0.weight", "blocks.1.0.weight"),
                              ("simplecnn", "blocks.2.out.weight", "blocks.2.hidden.weight")]:
        net, twin = bp_and_fa_twins(name, SHAPE, 16 if name == "mlp-2x800" else None, depth=3)
        images, labels = batch()
        bp.step(net, images, labels, config(), no_autocast)
        fa.step(twin, images, labels, config(), no_autocast)
        expected, got = grads(net), grads(twin)
        torch.testing.assert_close(got[last], expected[last], rtol=1e-6, atol=1e-7)
        assert not torch.allclose(got[below], expected[below], rtol=1e-2, atol=1e-5), name


@pytest.mark.parametrize("layer, shape", [
    (nn.Linear(6, 4, bias=False), (3, 6)),
    (nn.Linear(6, 4), (2, 3, 6)),  # tokens: every leading dimension is a sample
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, bias=False), (2, 4, 9, 9)),
    (nn.Conv1d(4, 6, 3, stride=2, padding=2), (2, 4, 11)),
    (nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect"), (2, 4, 7, 7)),
])
def test_fa_layer_gradients_against_the_rule(layer, shape):
    """dL/dx is BP's with B in place of W (autograd on a copy whose weight is B); dW and db are BP's."""
    torch.manual_seed(0)
    reference = copy.deepcopy(layer)
    fa.prepare(nn.Sequential(layer), None)
    assert "feedback" in dict(layer.named_buffers()) and "feedback" not in dict(layer.named_parameters())
    x = torch.randn(*shape, requires_grad=True)
    grad_out = torch.randn_like(reference(x))
    layer(x).backward(grad_out)
    wanted = (x, reference.weight) + ((reference.bias,) if reference.bias is not None else ())
    dx, dw, *db = torch.autograd.grad(reference(x), wanted, grad_out)
    torch.testing.assert_close(layer.weight.grad, dw, rtol=1e-6, atol=1e-6)
    if db:
        torch.testing.assert_close(layer.bias.grad, db[0], rtol=1e-6, atol=1e-6)
    with_feedback = copy.deepcopy(reference)
    with torch.no_grad():
        with_feedback.weight.copy_(layer.feedback)
    x_fb = x.detach().requires_grad_()
    with_feedback(x_fb).backward(grad_out)
    torch.testing.assert_close(x.grad, x_fb.grad, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(x.grad, dx, atol=1e-3)


def test_fa_feedback_is_fixed_saved_and_drawn_as_the_default_init():
    torch.manual_seed(0)
    model = build_model("mlp-2x800", SHAPE, 10, width=16)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    fa.prepare(model, config(method="fa"))
    layers = fa.feedback_layers(model)
    assert [m.weight for m in layers] == weights  # the same Parameter objects
    assert not {n for n, _ in model.named_parameters()} & {n for n, _ in model.named_buffers()}
    assert "blocks.0.1.feedback" in model.state_dict()
    bound = 1 / 144 ** 0.5  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), independent of W
    b = layers[0].feedback
    assert b.abs().max() <= bound and b.abs().max() > 0.9 * bound and not torch.equal(b, layers[0].weight)
    before = [m.feedback.clone() for m in layers]
    weight_before = layers[0].weight.detach().clone()
    optimizer = make_optimizer(model, 0.1, "adam", weight_decay=0.1)
    for seed in (1, 2):
        fa.step(model, *batch(seed=seed), config(), no_autocast)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert not torch.equal(weight_before, layers[0].weight)
    for m, b in zip(layers, before):
        assert torch.equal(m.feedback, b)


def test_fa_leaves_attention_projections_alone_and_trains_a_vit():
    torch.manual_seed(0)
    model = build_model("deep-vit", (1, 8, 8), 10, depth=1)
    fa.prepare(model, config(method="fa"))
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)][0]
    assert not hasattr(attention.out_proj, "feedback")  # MHA uses its projections functionally
    images, labels = batch((1, 8, 8), n=2)
    loss = fa.step(model, images, labels, config(), no_autocast)
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


def test_fa_bf16_step_matches_fp32_loosely():
    net, twin = bp_and_fa_twins("simplecnn", SHAPE)
    images, labels = batch(n=4)
    fp32 = fa.step(twin, images, labels, config(), no_autocast)
    fp32_grad = twin.extractor[0].weight.grad.clone()
    twin.zero_grad()
    bf16 = fa.step(twin, images, labels, config(), lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)
    assert twin.extractor[0].weight.grad.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(twin.extractor[0].weight.grad.flatten(), fp32_grad.flatten(), 0)
    assert cosine > 0.95


# ---- DFA ----

def tiny_mlp_with_dfa(method=dfa, seed=0):
    torch.manual_seed(seed)
    model = mlp((1, 5), 3, [4, 6])  # Linear(5, 4)-ReLU, Linear(4, 6)-ReLU, Linear(6, 3)
    method.prepare(model, config(method=method.__name__.rsplit(".", 1)[-1]))
    return model


def hand_dfa(model, feedback, x, labels, smoothing=0.0):
    """Nøkland's rule by hand: e = (softmax(z) - y_smooth) / N, delta_l = (e B_l) ⊙ 1[a_l > 0],
    dW_l = delta_l^T h_{l-1}, db_l = sum of delta_l; the head: e^T h_2 and sum of e."""
    (l1, l2), head = (block[-2] for block in model.blocks), model.head[0]
    h0 = x.flatten(1)
    a1 = h0 @ l1.weight.T + l1.bias
    h1 = a1.clamp(min=0)
    a2 = h1 @ l2.weight.T + l2.bias
    h2 = a2.clamp(min=0)
    z = h2 @ head.weight.T + head.bias
    target = torch.nn.functional.one_hot(labels, 3).float() * (1 - smoothing) + smoothing / 3
    e = (torch.softmax(z, 1) - target) / len(labels)
    delta1 = (e @ feedback[0]) * (a1 > 0)
    delta2 = (e @ feedback[1]) * (a2 > 0)
    return {"blocks.0.1.weight": delta1.T @ h0, "blocks.0.1.bias": delta1.sum(0),
            "blocks.1.0.weight": delta2.T @ h1, "blocks.1.0.bias": delta2.sum(0),
            "head.0.weight": e.T @ h2, "head.0.bias": e.sum(0)}, e, (h1, h2)


def test_dfa_gradients_equal_noklands_rule_by_hand():
    model = tiny_mlp_with_dfa()
    x, labels = torch.randn(7, 1, 5), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    cfg = config(method="dfa", label_smoothing=0.1)
    loss = dfa.step(model, x, labels, cfg, no_autocast)
    expected, _, _ = hand_dfa(model, model.dfa.matrices(), x, labels, smoothing=0.1)
    got = grads(model)
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), labels, label_smoothing=0.1).item())


def test_dfa_feedback_shapes_and_fixed_buffers_across_steps():
    model = tiny_mlp_with_dfa()
    assert [b.shape for b in model.dfa.matrices()] == [(3, 4), (3, 6)]
    assert all(name.startswith("dfa.") for name, _ in model.named_buffers())
    assert not any(name.startswith("dfa.") for name, _ in model.named_parameters())
    b = model.dfa.feedback_1
    assert b.abs().max() <= 1 / 6 ** 0.5 and b.abs().max() > 0.5 / 6 ** 0.5
    before = [m.clone() for m in model.dfa.matrices()]
    weight = model.blocks[0][1].weight.detach().clone()
    optimizer = make_optimizer(model, 0.1, "adam", weight_decay=0.1)
    for _ in range(2):
        dfa.step(model, torch.randn(4, 1, 5), torch.tensor([0, 1, 2, 0]), config(), no_autocast)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert not torch.equal(weight, model.blocks[0][1].weight)
    for b, b0 in zip(model.dfa.matrices(), before):
        assert torch.equal(b, b0)


def test_dfa_blocks_get_their_injected_error_only_on_a_conv_network():
    """Each block's gradient is autograd's for h_l.backward(e B_l) from its detached input: nothing
    reaches it from the blocks above (dropping the step's detach breaks this)."""
    torch.manual_seed(0)
    model = build_model("sll-cnn-fmnist", (1, 28, 28), 10)
    dfa.prepare(model, config(method="dfa"))
    assert [b.shape[1] for b in model.dfa.matrices()] == [64 * 14 * 14, 128 * 7 * 7, 256 * 7 * 7, 256 * 3 * 3, 512]
    images, labels = batch((1, 28, 28), n=3)
    images = images.contiguous(memory_format=torch.channels_last)
    model.eval()  # batch norm on running statistics, so the repeated forward passes below match
    dfa.step(model, images, labels, config(), no_autocast)
    stepped = grads(model)
    model.zero_grad(set_to_none=True)
    x, outputs = images, []
    for block in model.blocks:
        outputs.append(block(x))
        x = outputs[-1].detach()
    logits = model.head(x)
    logits.retain_grad()
    torch.nn.functional.cross_entropy(logits, labels).backward()
    e = logits.grad
    for i, (h, b) in enumerate(zip(outputs, model.dfa.matrices())):
        h.backward((e @ b).view(h.shape))
        for name, p in model.named_parameters():
            if name.startswith(f"blocks.{i}."):
                torch.testing.assert_close(stepped[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)
    torch.testing.assert_close(stepped["head.1.weight"], model.head[1].weight.grad)


def test_dfa_bf16_step_runs_and_matches_fp32_loosely():
    model = tiny_mlp_with_dfa()
    x, labels = torch.randn(6, 1, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    fp32 = dfa.step(model, x, labels, config(), no_autocast)
    first = model.blocks[0][1].weight.grad.clone()
    model.zero_grad()
    bf16 = dfa.step(model, x, labels, config(), lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)
    torch.testing.assert_close(model.blocks[0][1].weight.grad, first, rtol=0.1, atol=2e-3)


# ---- DKP ----

def test_dkp_feedback_gradient_is_kolen_pollacks_by_hand_and_the_layers_get_dfa():
    model = tiny_mlp_with_dfa(dkp)
    x, labels = torch.randn(7, 1, 5), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    feedback = [b.detach().clone() for b in model.dkp.matrices()]
    dkp.step(model, x, labels, config(method="dkp"), no_autocast)
    expected, e, hidden = hand_dfa(model, feedback, x, labels)  # DFA's rule with the current B
    got = grads(model)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-7, msg=name)
    for i, h in enumerate(hidden):  # dB_l = e^T h_l, h_l the block's output after its ReLU
        torch.testing.assert_close(got[f"dkp.feedback_{i}"], e.T @ h, rtol=1e-5, atol=1e-7)


def test_dkp_feedback_moves_by_the_optimiser_step_on_that_gradient():
    model = tiny_mlp_with_dfa(dkp)
    names = {n for n, _ in model.named_parameters()}
    assert {"dkp.feedback_0", "dkp.feedback_1"} <= names
    lr, decay = 0.1, 0.01
    optimizer = make_optimizer(model, lr, "sgd", weight_decay=decay)  # the run's optimiser
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        x, labels = torch.randn(5, 1, 5, generator=g), torch.randint(0, 3, (5,), generator=g)
        before = [b.detach().clone() for b in model.dkp.matrices()]
        _, e, hidden = hand_dfa(model, before, x, labels)
        dkp.step(model, x, labels, config(), no_autocast)
        momentum = [optimizer.state[b].get("momentum_buffer") for b in model.dkp.matrices()]
        momentum = [None if buf is None else buf.clone() for buf in momentum]  # the step updates it in place
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for b, b0, h, buf in zip(model.dkp.matrices(), before, hidden, momentum):
            update = e.T @ h + decay * b0  # SGD with momentum 0.9: buf <- 0.9 buf + update
            if buf is not None:
                update = update + 0.9 * buf
            torch.testing.assert_close(b.detach(), b0 - lr * update, rtol=1e-5, atol=1e-7)


def test_dkp_on_a_conv_network_and_the_methods_are_registered():
    torch.manual_seed(0)
    model = build_model("deep-cnn", (1, 12, 12), 10, depth=2)
    dkp.prepare(model, config(method="dkp"))
    images, labels = batch(n=3)
    loss = dkp.step(model, images, labels, config(), no_autocast)
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert METHODS["dfa"].heads == METHODS["dkp"].heads == ("linear",)
    assert METHODS["fa"].heads == ("linear", "cascade") and METHODS["dkp"].prepare is dkp.prepare


def test_dkp_feedback_gradient_accumulates_over_steps_as_autograd_would():
    """Two steps without zeroing (gradient accumulation) leave on B_l the sum of the two steps'
    Kolen-Pollack gradients e^T h_l, each by hand, as on every weight that autograd fills."""
    model = tiny_mlp_with_dfa(dkp)
    feedback = [b.detach().clone() for b in model.dkp.matrices()]
    g = torch.Generator().manual_seed(3)
    expected = [torch.zeros_like(b) for b in feedback]
    for _ in range(2):
        x, labels = torch.randn(5, 1, 5, generator=g), torch.randint(0, 3, (5,), generator=g)
        _, e, hidden = hand_dfa(model, feedback, x, labels)
        for total, h in zip(expected, hidden):
            total += e.T @ h
        dkp.step(model, x, labels, config(method="dkp"), no_autocast)
    for b, total in zip(model.dkp.matrices(), expected):
        torch.testing.assert_close(b.grad, total, rtol=1e-5, atol=1e-7)
