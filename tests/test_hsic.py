"""The HSIC bottleneck (sidlib.methods.hsic): its estimator against a float64 computation, the
locality of every unit's gradient, the output layer's plain cross-entropy gradient, the three model
structures, bf16, and its option errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import CLASSES, config, grads, no_autocast
from sidlib import cli
from sidlib.methods import METHODS, hsic
from sidlib.models import build_model

SHAPE = (1, 12, 12)


def batch(n=16, seed=1, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def built(name, depth=3, seed=0, shape=SHAPE):
    torch.manual_seed(seed)
    return build_model(name, shape, CLASSES, depth)


def numpy_kernel(x, sigma):
    """exp(-||x_i - x_j||^2 / (2 sigma^2 d)) in float64, from the differences themselves."""
    x = np.asarray(x, dtype=np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-d / (2 * sigma ** 2 * x.shape[1]))


def numpy_nhsic(a, b, sigma):
    """tr(K~a K~b) / sqrt(tr(K~a K~a) tr(K~b K~b)), K~ = HKH, Gaussian kernels of width sigma sqrt(d)."""
    m = len(a)
    h = np.eye(m) - np.ones((m, m)) / m
    ka, kb = h @ numpy_kernel(a, sigma) @ h, h @ numpy_kernel(b, sigma) @ h
    return np.trace(ka @ kb) / math.sqrt(np.trace(ka @ ka) * np.trace(kb @ kb))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 5.0])
def test_normalized_hsic_matches_a_float64_computation(sigma):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=g), torch.randn(7, 5, generator=g)
    b[:, 0] += 2 * a[:, 0]  # some dependence
    value = hsic.normalized_hsic(a, b, sigma).item()
    assert value == pytest.approx(numpy_nhsic(a.numpy(), b.numpy(), sigma), rel=1e-5)
    assert 0 < value < 1


def test_normalized_hsic_of_a_matrix_with_itself_is_one_and_it_is_symmetric():
    g = torch.Generator().manual_seed(2)
    z, x = torch.randn(9, 4, generator=g), torch.randn(9, 6, generator=g)
    assert hsic.normalized_hsic(z, z, 5.0).item() == pytest.approx(1.0, abs=1e-6)
    assert hsic.normalized_hsic(z, x, 2.0).item() == pytest.approx(hsic.normalized_hsic(x, z, 2.0).item(), rel=1e-6)
    # a constant output (a dead layer) has a zero centred kernel: nHSIC 0, not nan
    assert hsic.normalized_hsic(torch.ones(9, 4), x, 2.0).item() == 0.0


def test_label_kernel_is_the_linear_kernel_once_centred_so_sigma_does_not_matter():
    labels = torch.tensor([0, 3, 3, 1, 0, 2, 9, 3])
    one_hot = F.one_hot(labels, CLASSES).float()
    linear = hsic.centre(one_hot @ one_hot.T)
    for sigma in (0.3, 1.0, 5.0):
        gaussian = hsic.centre(hsic.gaussian_kernel(one_hot, sigma))
        assert hsic.kernel_alignment(gaussian, linear).item() == pytest.approx(1.0, abs=1e-5)


def test_bottleneck_objective_is_input_term_minus_beta_label_term():
    images, labels = batch(n=10)
    z = torch.randn(10, 7, generator=torch.Generator().manual_seed(4))
    x_kernel, y_kernel = hsic.data_kernels(images, labels, CLASSES, 5.0)
    value = hsic.bottleneck_objective(z, x_kernel, y_kernel, 5.0, 50.0).item()
    one_hot = F.one_hot(labels, CLASSES).float()
    expected = numpy_nhsic(z, images.flatten(1), 5.0) - 50.0 * numpy_nhsic(z, one_hot, 5.0)
    assert value == pytest.approx(expected, rel=1e-5)


def test_each_unit_of_a_network_gets_the_gradient_of_its_own_objective_only():
    model = built("deep-mlp", depth=3)
    images, labels = batch()
    cfg = config(method="hsic", hsic_beta=50.0)
    hsic.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    x_kernel, y_kernel = hsic.data_kernels(images, labels, CLASSES, cfg.hsic_sigma)
    assert_each_block_gets_its_own_gradient(
        model, images, stepped, lambda h: hsic.bottleneck_objective(h, x_kernel, y_kernel, cfg.hsic_sigma, cfg.hsic_beta),
        rtol=1e-5, atol=1e-8)


def assert_each_block_gets_its_own_gradient(model, images, stepped, objective, rtol, atol):
    """Block by block, on its detached input: the step's gradient of block i is that of objective(block i's output)."""
    x = images
    for i, block in enumerate(model.blocks):
        model.zero_grad(set_to_none=True)
        h = block(x)
        objective(h).backward()
        own = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert set(own) == {n for n in stepped if n.startswith(f"blocks.{i}.")}, i
        for name, grad in own.items():
            torch.testing.assert_close(stepped[name], grad, rtol=rtol, atol=atol)
        x = h.detach()


def test_the_output_layer_gets_exactly_the_cross_entropy_gradient_on_detached_features():
    model = built("deep-mlp", depth=2)
    images, labels = batch()
    hsic.step(model, images, labels, config(method="hsic"), no_autocast)
    stepped = grads(model)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        features = model.blocks[1](model.blocks[0](images))
    F.cross_entropy(model.head(features), labels).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {"head.0.weight", "head.0.bias"}
    for name in ("head.0.weight", "head.0.bias"):
        torch.testing.assert_close(stepped[name], dict(model.named_parameters())[name].grad, rtol=0, atol=0)


def test_a_cascade_trains_its_extractor_and_modules_as_units_and_its_last_module_by_cross_entropy():
    model = built("simplecnn", depth=3)
    images, labels = batch()
    cfg = config(method="hsic", hsic_beta=20.0, hsic_sigma=2.0)
    hsic.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    x_kernel, y_kernel = hsic.data_kernels(images, labels, CLASSES, cfg.hsic_sigma)
    objective = lambda z: hsic.bottleneck_objective(z, x_kernel, y_kernel, cfg.hsic_sigma, cfg.hsic_beta)  # noqa: E731
    named = dict(model.named_parameters())

    def assert_only(prefix):
        got = {n for n, p in named.items() if p.grad is not None}
        assert got == {n for n in named if n.startswith(prefix)}, prefix
        for n in got:
            torch.testing.assert_close(stepped[n], named[n].grad, rtol=1e-5, atol=1e-8)

    model.zero_grad(set_to_none=True)
    features = model.extractor(images)
    objective(features).backward()
    assert_only("extractor.")
    features = features.detach()
    belief = torch.full((len(labels), CLASSES), 1 / CLASSES)
    for i, block in enumerate(model.blocks):
        model.zero_grad(set_to_none=True)
        logits = block(belief, features)
        (F.cross_entropy(logits, labels) if i == 2 else objective(logits)).backward()
        assert_only(f"blocks.{i}.")
        belief = torch.softmax(logits.detach(), 1)


@pytest.mark.parametrize("name, depth, shape", [("mlp-2x800", 1, SHAPE), ("deep-cnn", 3, SHAPE),
                                                ("simplecnn", 3, SHAPE), ("deep-vit", 2, (1, 8, 8))])
def test_a_step_trains_every_parameter_of_an_mlp_a_cnn_a_vit_and_a_cascade(name, depth, shape):
    model = built(name, depth=depth, shape=shape)
    images, labels = batch(n=8, shape=shape)
    loss = hsic.step(model, images, labels, config(method="hsic"), no_autocast)
    assert math.isfinite(loss.item()) and loss.item() < 0  # the label terms dominate
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_a_bf16_step_computes_its_kernels_in_float32_and_matches_fp32_loosely():
    model = built("simplecnn", depth=2)
    images, labels = batch()
    cfg = config(method="hsic")
    h = torch.randn(16, 128, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.extractor(images).dtype == torch.bfloat16
        kernel = hsic.gaussian_kernel(h, 1.0)
    # distances from a bf16 matmul would be off by about 1% here
    expected = torch.from_numpy(numpy_kernel(h.float().numpy(), 1.0)).float()
    torch.testing.assert_close(kernel, expected, rtol=1e-5, atol=1e-6)
    fp32 = hsic.step(model, images, labels, cfg, no_autocast).item()
    model.zero_grad()
    bf16 = hsic.step(model, images, labels, cfg, lambda: torch.autocast("cpu", dtype=torch.bfloat16)).item()
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_training_runs_end_to_end_and_predicts_with_the_trained_output_layer():
    from sidlib.train import train_model
    cfg = config(method="hsic", model="mlp-2x800", train_subset=60, test_subset=20, batch_size=20, hsic_beta=50.0)
    model, result = train_model(cfg)
    assert math.isfinite(result["history"][0]["train_loss"]) and result["config"]["hsic_beta"] == 50.0
    method = METHODS["hsic"]
    assert method.heads == ("linear", "cascade")
    # the prediction is the ordinary forward pass, whose output layer the format stage has trained:
    # it moved away from the initialisation train_model started from
    from sidlib.data import DATASETS
    from sidlib.models import build_model
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg.model, DATASETS[cfg.dataset].input_shape, DATASETS[cfg.dataset].num_classes)
    assert not torch.equal(model.head[-1].weight, untrained.head[-1].weight)


@pytest.mark.parametrize("options, message", [
    (["--hsic-sigma", "0"], "--hsic-sigma must be positive"),
    (["--hsic-beta", "-1"], "--hsic-beta must be at least 0"),
])
def test_bad_hsic_options_end_with_one_line(options, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["train", "--method", "hsic", "--model", "mlp-2x800", "--dataset", "synthetic", *options, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def u_statistic_hsic(k, l):
    """HSIC's unbiased estimate from its definition (Song et al. 2012): the mean over ordered tuples of
    4 distinct samples (i, j, q, r) of k_ij (l_ij + l_qr - 2 l_iq), in float64."""
    k, l = np.asarray(k, dtype=np.float64), np.asarray(l, dtype=np.float64)
    m = len(k)
    total, count = 0.0, 0
    for i, j, q, r in __import__("itertools").permutations(range(m), 4):
        total += k[i, j] * (l[i, j] + l[q, r] - 2 * l[i, q])
        count += 1
    return total / count


def test_the_unbiased_hsic_is_the_u_statistic_of_its_definition():
    g = torch.Generator().manual_seed(3)
    z, one_hot = torch.randn(7, 5, generator=g), F.one_hot(torch.randint(0, 3, (7,), generator=g), 3).float()
    k, l = hsic.gaussian_kernel(z, 1.5), hsic.gaussian_kernel(one_hot, 1.5)
    # the closed form is exact: in float64 it meets the definition to rounding (float32 cancels in its sums)
    assert hsic.unbiased_hsic(k.double(), l.double()).item() == pytest.approx(u_statistic_hsic(k.numpy(), l.numpy()), rel=1e-9)
    # biased estimates of independent samples are positive; the unbiased one averages to zero
    values = []
    for seed in range(200):
        g = torch.Generator().manual_seed(100 + seed)
        a, b = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
        values.append(hsic.unbiased_hsic(hsic.gaussian_kernel(a, 1.0), hsic.gaussian_kernel(b, 1.0)).item())
    assert abs(np.mean(values)) < 3 * np.std(values) / math.sqrt(len(values))


def test_the_sid_papers_objective_trains_each_unit_on_the_labels_term_alone():
    """--hsic-objective labels: each unit's gradient is that of -HSIC_u(Z, Y) alone (no input term, no beta)."""
    model = built("deep-mlp", depth=3)
    images, labels = batch()
    cfg = config(method="hsic", hsic_objective="labels", hsic_beta=50.0, hsic_sigma=2.0)
    hsic.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    label_kernel = torch.tensor(numpy_kernel(F.one_hot(labels, CLASSES).numpy(), 2.0), dtype=torch.float32)
    m = len(labels)

    def negative_unbiased_hsic(h):
        a, b = hsic.gaussian_kernel(h.flatten(1), 2.0) * (1 - torch.eye(m)), label_kernel * (1 - torch.eye(m))
        return -((a * b).sum() + a.sum() * b.sum() / ((m - 1) * (m - 2)) - 2 / (m - 2) * (a @ b).sum()) / (m * (m - 3))

    assert_each_block_gets_its_own_gradient(model, images, stepped, negative_unbiased_hsic, rtol=1e-4, atol=1e-9)


def test_a_batch_too_small_for_the_unbiased_estimate_contributes_nothing():
    z = torch.randn(3, 4, requires_grad=True)
    loss = hsic.labels_objective(z, torch.ones(3, 3), 1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(z.grad) == 0
