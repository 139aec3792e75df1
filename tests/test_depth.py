"""The cascade's belief inputs (softmax, logits, residual) and each module's gradient by depth (SID Figure 4)."""
import pytest
import torch
import torch.nn.functional as F

from helpers import CLASSES, SHAPE, config, grads, no_autocast
from sidlib.analysis.depth import module_gradient_norms
from sidlib.divergences import sid_objective, smoothed_target_log_beliefs
from sidlib.methods import METHODS
from sidlib.models import BELIEF_INPUTS, build_model


def problem(belief_input, depth=4, batch=16, seed=0):
    torch.manual_seed(seed)
    model = build_model("simplecnn", SHAPE, CLASSES, depth, belief_input=belief_input)
    return model, torch.randn(batch, *SHAPE), torch.randint(0, CLASSES, (batch,))


def by_hand(model, features, belief_input, teachers=None):
    """Every module's logits z_1..z_L by the recursion of sidlib.models.cascade's docstring; with
    ``teachers``, module i reads teachers[i] (detached logits of module i - 1) instead of its own chain."""
    z = torch.zeros(features.shape[0], CLASSES)
    out = []
    for i, block in enumerate(model.blocks):
        previous = teachers[i] if teachers is not None else z
        read = torch.softmax(previous, dim=1) if belief_input == "softmax" else previous
        z = block.out(torch.relu(block.hidden(torch.cat([read, features], dim=1))))
        if belief_input == "residual":
            z = previous + z
        out.append(z)
    return out


@pytest.mark.parametrize("belief_input", BELIEF_INPUTS)
def test_each_belief_input_computes_its_recursion(belief_input):
    model, images, _ = problem(belief_input)
    features = model.extractor(images)
    expected = by_hand(model, features, belief_input)
    got = model.refine(features)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected))
    assert torch.equal(model(images), got[-1])
    if belief_input == "softmax":  # p_0 uniform, as the paper; the others start from zero logits
        assert torch.allclose(model.uniform_belief(features), torch.full((16, CLASSES), 0.1))


@pytest.mark.parametrize("belief_input", BELIEF_INPUTS)
def test_bps_stagewise_step_equals_one_backward_for_every_belief_input(belief_input):
    model, images, labels = problem(belief_input)
    METHODS["bp"].step(model, images, labels, config(method="bp", belief_input=belief_input), no_autocast)
    stagewise = grads(model)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    for name, grad in grads(model).items():
        assert torch.allclose(stagewise[name], grad, rtol=1e-4, atol=1e-9), name


@pytest.mark.parametrize("belief_input", BELIEF_INPUTS)
def test_sid_modules_read_their_teachers_as_the_belief_input_says(belief_input):
    model, images, labels = problem(belief_input)
    c = config(method="sid", belief_input=belief_input)
    METHODS["sid"].step(model, images, labels, c, no_autocast)
    stepped = grads(model)
    model.zero_grad(set_to_none=True)
    features = model.extractor(images)
    with torch.no_grad():
        chain = by_hand(model, features.detach(), belief_input)
    teachers = [torch.zeros(16, CLASSES)] + chain[:-1]
    log_target = smoothed_target_log_beliefs(labels, CLASSES, c.label_smoothing)
    losses = [sid_objective(torch.log_softmax(z, dim=1), torch.log_softmax(t, dim=1), log_target, c.alpha, c.kl).mean()
              for z, t in zip(by_hand(model, features, belief_input, teachers), teachers)]
    torch.stack(losses).sum().backward()
    for name, grad in grads(model).items():
        assert torch.allclose(stepped[name], grad, rtol=1e-4, atol=1e-8), name


def test_module_gradient_norms_are_the_methods_own_gradients():
    model, images, labels = problem("softmax")
    norms = module_gradient_norms(model, images, labels, config(method="bp"))
    F.cross_entropy(model(images), labels).backward()
    assert norms == pytest.approx([block.hidden.weight.grad.norm().item() for block in model.blocks], rel=1e-4)
    module_gradient_norms(model, images, labels, config(method="bp"))
    assert all(p.grad is None for p in model.parameters())  # it discards earlier gradients and leaves none behind


def test_bps_gradient_vanishes_through_the_softmax_and_survives_a_residual_path():
    """At initialisation, BP's gradient falls by orders of magnitude per module in the paper's cascade,
    less without the softmax, and not at all with an identity path; SID's modules each get their own."""
    ratio = {}
    for belief_input in BELIEF_INPUTS:
        for method in ("bp", "sid"):
            model, images, labels = problem(belief_input, depth=8, batch=64)
            norms = module_gradient_norms(model, images, labels, config(method=method, belief_input=belief_input))
            ratio[method, belief_input] = norms[0] / norms[-1]
    assert ratio["bp", "softmax"] < 1e-8 and ratio["bp", "logits"] < 1e-3
    assert ratio["bp", "softmax"] < 1e-3 * ratio["bp", "logits"]
    assert 0.1 < ratio["bp", "residual"] < 10
    assert all(0.1 < ratio["sid", b] < 10 for b in BELIEF_INPUTS)
