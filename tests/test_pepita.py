"""PEPITA: each layer's update against a hand computation of the paper's rule, the sign of the
modulation, shared dropout masks, the fixed feedback matrix, no autograd, its options and errors."""
import math

import pytest
import torch

from helpers import config, grads, no_autocast
from sidlib import bench, cli
from sidlib.methods import METHODS, pepita
from sidlib.models.mlp import mlp

SHAPE, CLASSES = (1, 4, 4), 3


def tiny(seed=0, dropout=0.0, widths=(8, 8), scale=1.0, sign="minus"):
    """An MLP 16 -> 8 -> 8 -> 3 with PEPITA attached (a large F, so that h - h^mod is far above rounding)."""
    torch.manual_seed(seed)
    model = mlp(SHAPE, CLASSES, list(widths), dropout)
    cfg = config(method="pepita", model="mlp-2x800", pepita_feedback_scale=scale, pepita_sign=sign)
    pepita.prepare(model, cfg)
    return model, cfg


def batch(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def test_each_layer_update_is_the_papers_rule_computed_by_hand():
    model, cfg = tiny()
    images, labels = batch()
    loss = pepita.step(model, images, labels, cfg, no_autocast)
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.double(), m.bias.double())
                                    for m in (model.blocks[0][1], model.blocks[1][0], model.head[0])]
    f = model.pepita.feedback.double()
    x = images.flatten(1).double()
    relu = torch.relu
    # standard pass, output error
    h1 = relu(x @ w1.T + b1)
    h2 = relu(h1 @ w2.T + b2)
    logits = h2 @ w3.T + b3
    e = torch.softmax(logits, 1) - torch.nn.functional.one_hot(labels, CLASSES).double()
    # modulated pass on x - F e
    x_mod = x - e @ f.T
    h1_mod = relu(x_mod @ w1.T + b1)
    h2_mod = relu(h1_mod @ w2.T + b2)
    n = len(x)
    expected = {
        "blocks.0.1.weight": (h1 - h1_mod).T @ x_mod / n, "blocks.0.1.bias": (h1 - h1_mod).mean(0),
        "blocks.1.0.weight": (h2 - h2_mod).T @ h1_mod / n, "blocks.1.0.bias": (h2 - h2_mod).mean(0),
        "head.0.weight": e.T @ h2_mod / n, "head.0.bias": e.mean(0),
    }
    got = grads(model)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert value.abs().max() > 1e-3, name  # a real update, not zeros matching zeros
        torch.testing.assert_close(got[name].double(), value, rtol=1e-4, atol=1e-6, msg=name)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_output_error_is_the_cross_entropy_gradient_with_label_smoothing():
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2, reduction="sum").backward()
    torch.testing.assert_close(pepita.output_error(logits.detach(), labels, 0.2).double(), logits.grad,
                               rtol=1e-6, atol=1e-7)


def test_plus_with_f_is_minus_with_negated_f_and_flips_the_hidden_updates():
    images, labels = batch()
    stepped = {}
    for sign, flip in (("minus", 1), ("plus", -1), ("plus", 1)):
        model, cfg = tiny(sign=sign, scale=0.005)
        model.pepita.feedback.mul_(flip)
        pepita.step(model, images, labels, cfg, no_autocast)
        stepped[sign, flip] = grads(model)
    minus, plus_negated, plus = stepped["minus", 1], stepped["plus", -1], stepped["plus", 1]
    # x + (-F) e is x - F e: the same modulated input, hence the same update, bit for bit
    for name in minus:
        torch.testing.assert_close(plus_negated[name], minus[name], rtol=0, atol=0, msg=name)
    # the other sign moves the input the other way: to first order in F e, the hidden layers'
    # updates change sign and the head's does not (up to 1% of the update: the second-order terms)
    def relative_gap(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    for name in ("blocks.0.1.weight", "blocks.0.1.bias", "blocks.1.0.weight", "blocks.1.0.bias"):
        assert relative_gap(plus[name], -minus[name]) < 0.01, name
    for name in ("head.0.weight", "head.0.bias"):
        assert relative_gap(plus[name], minus[name]) < 0.01, name


def test_both_passes_share_their_dropout_masks():
    model, cfg = tiny(dropout=0.5, widths=(64, 64))
    calls = {i: [] for i in range(2)}
    for i, block in enumerate(model.blocks):
        block[-1].register_forward_hook(lambda m, inputs, out, i=i: calls[i].append((inputs[0].clone(), out.clone())))
    images, labels = batch(n=16)
    torch.manual_seed(3)
    pepita.step(model, images, labels, cfg, no_autocast)
    first_step_masks = []
    for i in range(2):
        (in_a, out_a), (in_b, out_b) = calls[i]
        both_active = (in_a != 0) & (in_b != 0)
        kept_a, kept_b = out_a != 0, out_b != 0
        assert both_active.sum() > 100 and (~kept_a[both_active]).sum() > 50, i  # dropout did drop units
        assert torch.equal(kept_a[both_active], kept_b[both_active]), f"layer {i}: the masks differ"
        first_step_masks.append(kept_a)
    # and the next step draws new masks: the random state moved on
    for i in range(2):
        calls[i].clear()
    pepita.step(model, images, labels, cfg, no_autocast)
    assert not torch.equal(calls[0][0][1] != 0, first_step_masks[0])


def test_feedback_matrix_is_a_fixed_buffer_of_the_papers_scale():
    model, cfg = tiny()
    assert "pepita.feedback" in dict(model.named_buffers()) and "pepita.feedback" in model.state_dict()
    assert not any(name.startswith("pepita") for name, _ in model.named_parameters())
    before_f, before_w = model.pepita.feedback.clone(), model.blocks[0][1].weight.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for seed in range(3):
        pepita.step(model, *batch(seed=seed), cfg, no_autocast)
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(before_w, model.blocks[0][1].weight)  # the network did train
    assert torch.equal(before_f, model.pepita.feedback)
    # He-uniform bound of the input times the scale: Uniform(-b, b), b = 0.05 sqrt(6 / 784)
    f = pepita.feedback_matrix(784, 10, 0.05, torch.Generator().manual_seed(0))
    bound = 0.05 * math.sqrt(6 / 784)
    assert f.shape == (784, 10) and f.abs().max() <= bound and f.abs().max() > 0.99 * bound
    assert f.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    again, _ = tiny()
    assert torch.equal(again.pepita.feedback, before_f)  # the seed fixes F
    other, _ = tiny(seed=1)
    assert not torch.equal(other.pepita.feedback, before_f)


def test_no_autograd_graph_is_built():
    model, cfg = tiny()
    packed = []

    def pack(tensor):
        packed.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = pepita.step(model, *batch(), cfg, no_autocast)
    assert packed == [] and loss.grad_fn is None
    assert bench.peak_saved_bytes(config(method="pepita", model="mlp-2x800"), 8, torch.device("cpu")) == 0


def test_both_passes_run_in_float32_under_bf16_autocast():
    images, labels = batch()
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    stepped = []
    for autocast, outer in ((no_autocast, no_autocast), (bf16, no_autocast), (no_autocast, bf16)):
        model, cfg = tiny(scale=0.05)
        with outer():
            pepita.step(model, images, labels, cfg, autocast)
        stepped.append(grads(model))
    for other in stepped[1:]:
        for name in stepped[0]:
            torch.testing.assert_close(other[name], stepped[0][name], rtol=0, atol=0, msg=name)


def test_pepita_learns_and_its_hidden_updates_come_to_align_with_the_gradient():
    torch.manual_seed(0)
    centres = torch.randn(CLASSES, 16) * 2
    labels = torch.randint(0, CLASSES, (600,))
    images = (centres[labels] + torch.randn(600, 16)).view(600, *SHAPE)
    model, cfg = tiny(widths=(32, 32), scale=0.05)

    def cosines_with_backprop():
        """cos(PEPITA's update, BP's gradient) of each weight, on the whole set."""
        pepita.step(model, images, labels, cfg, no_autocast)
        updates = grads(model)
        model.zero_grad()
        with torch.enable_grad():
            torch.nn.functional.cross_entropy(model(images), labels).backward()
        cosines = {name: torch.nn.functional.cosine_similarity(updates[name].flatten(), p.grad.flatten(), 0).item()
                   for name, p in model.named_parameters() if name.endswith("weight")}
        model.zero_grad()
        return cosines

    at_start = cosines_with_backprop()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):
        for start in range(0, 600, 20):
            pepita.step(model, images[start:start + 20], labels[start:start + 20], cfg, no_autocast)
            optimizer.step()
            optimizer.zero_grad()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9
    # F is random, so at first the hidden updates are unrelated to the gradient; training aligns them
    # (the "adaptive feedback alignment" of Srinivasan et al. 2023). The head's update is its gradient.
    at_end = cosines_with_backprop()
    assert all(abs(at_start[name]) < 0.2 for name in ("blocks.0.1.weight", "blocks.1.0.weight")), at_start
    assert all(at_end[name] > 0.15 for name in ("blocks.0.1.weight", "blocks.1.0.weight")), at_end
    assert at_end["head.0.weight"] > 0.999


def test_pepita_is_registered_with_its_heads():
    method = METHODS["pepita"]
    assert method.prepare is pepita.prepare and method.check is pepita.check and method.heads == ("linear",)


@pytest.mark.parametrize("options, message", [
    (["--model", "sll-cnn-fmnist"], "--method pepita trains MLPs only, not --model sll-cnn-fmnist"),
    (["--model", "simplecnn"], "--method pepita trains MLPs only, not --model simplecnn"),
    (["--pepita-feedback-scale", "0"], "--pepita-feedback-scale must be positive, got 0.0"),
    (["--head", "cascade"], "--method pepita cannot train mlp-2x800 with a cascade head"),
])
def test_bad_pepita_options_end_with_one_line(options, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["train", "--method", "pepita", "--model", "mlp-2x800", "--dataset", "synthetic", *options,
            "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_options_reach_the_model_and_the_run_trains():
    from dataclasses import replace

    from sidlib.train import train_model
    cfg = replace(config(method="pepita", model="deep-mlp", depth=3, train_subset=40, test_subset=20, batch_size=20,
                         optimizer="sgd", lr=0.01), pepita_sign="plus", pepita_feedback_scale=0.1)
    model, result = train_model(cfg)
    assert model.pepita.sign == "plus" and model.pepita.feedback.abs().max() <= 0.1 * math.sqrt(6 / 144)
    assert result["config"]["pepita_sign"] == "plus" and math.isfinite(result["history"][0]["train_loss"])
