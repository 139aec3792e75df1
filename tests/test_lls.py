"""LLS: the periodic projection against its formula, the fixed buffers, each block's gradient against
its own local loss alone, the reduction of feature maps, a CNN, flat memory, its options and errors."""
import copy
import math

import pytest
import torch
from torch.nn.functional import cross_entropy

from helpers import config, grads, no_autocast
from sidlib import bench, cli
from sidlib.methods import METHODS, lls
from sidlib.models import build_model

SHAPE = (1, 12, 12)


def prepared(name="deep-mlp", depth=3, shape=SHAPE, seed=0, **changes):
    cfg = config(method="lls", model=name, depth=depth, seed=seed, **changes)
    torch.manual_seed(seed)
    model = build_model(name, shape, 10, depth)
    lls.prepare(model, cfg)
    return model, cfg


def batch(shape=SHAPE, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_periodic_projection_is_its_formula():
    basis = lls.periodic_basis(3, 7)
    frequencies = [50.0, 281.0, 512.0]  # linearly spaced from 50 to 512
    expected = torch.tensor([[math.sin(f * j) for j in range(7)] for f in frequencies])
    torch.testing.assert_close(basis, expected, rtol=0, atol=1e-6)
    # the classes' sinusoids are nearly orthogonal at the widths we use
    rows = torch.nn.functional.normalize(lls.periodic_basis(10, 800), dim=1)
    assert (rows @ rows.T - torch.eye(10)).abs().max() < 0.05
    random = lls.random_basis(10, 5000, torch.Generator().manual_seed(0))
    assert random.shape == (10, 5000) and random.pow(2).mean().item() == pytest.approx(0.5, rel=0.03)


def test_logits_are_the_normalised_activity_read_by_the_basis():
    h = torch.randn(4, 30)
    basis = lls.periodic_basis(10, 30)
    projection = lls.ClassProjection(basis, pool=2)
    expected = (h / h.norm(dim=1, keepdim=True)) @ basis.T / 0.5
    torch.testing.assert_close(projection(h), expected)


def test_feature_maps_are_average_pooled_then_flattened():
    h = torch.randn(2, 3, 8, 8)
    quadrants = h.unflatten(2, (2, 4)).unflatten(4, (2, 4)).mean((3, 5))  # (2, 3, 2, 2): each 4x4 tile's mean
    expected = quadrants.flatten(1) / quadrants.flatten(1).norm(dim=1, keepdim=True)
    torch.testing.assert_close(lls.activity_vector(h, 2), expected)
    assert lls.activity_vector(torch.randn(2, 5, 1, 1), 2).shape == (2, 5)  # never pooled up
    assert lls.activity_vector(torch.randn(2, 5, 3, 3), 4).shape == (2, 45)
    assert lls.activity_vector(torch.randn(2, 5, 16), 4).shape == (2, 20)  # 1-D signals


def test_projections_are_fixed_buffers_that_a_training_step_leaves_alone():
    model, cfg = prepared(depth=2)
    buffers = {n: b.clone() for n, b in model.named_buffers() if n.startswith("lls.")}
    assert set(buffers) == {"lls.projections.0.basis", "lls.projections.1.basis"}
    assert not any(n.startswith("lls.") for n, _ in model.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = model.blocks[0][1].weight.clone()
    for seed in range(2):
        lls.step(model, *batch(seed=seed), cfg, no_autocast)
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(before, model.blocks[0][1].weight)  # the network did train
    for name, value in model.named_buffers():
        if name in buffers:
            assert torch.equal(value, buffers[name]), name
    assert "lls.projections.0.basis" in model.state_dict()
    torch.testing.assert_close(model.lls.projections[0].basis, lls.periodic_basis(10, 800), rtol=0, atol=0)


def test_random_projection_is_fixed_by_the_seed():
    first, _ = prepared(lls_projection="random")
    again, _ = prepared(lls_projection="random")
    other, _ = prepared(lls_projection="random", seed=1)
    basis = first.lls.projections[1].basis
    assert basis.shape == (10, 800) and torch.equal(again.lls.projections[1].basis, basis)
    assert not torch.equal(other.lls.projections[1].basis, basis)
    assert not torch.equal(first.lls.projections[0].basis, basis)  # one matrix per block


def own_gradients_by_hand(model, images, labels, smoothing=0.0):
    """Per block (then the head), the gradient of its own loss alone, from a separate autograd call
    on its parameters, the block's input computed (without a graph) by the blocks before it."""
    out, x = [], images
    for block, projection in zip(model.blocks, model.lls.projections):
        h = block(x)
        loss = cross_entropy(projection(h), labels, label_smoothing=smoothing)
        params = dict(block.named_parameters())
        out.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
        x = h.detach()
    loss = cross_entropy(model.head(x), labels, label_smoothing=smoothing)
    params = dict(model.head.named_parameters())
    out.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
    return out


@pytest.mark.parametrize("name, depth, shape", [("deep-mlp", 3, SHAPE), ("deep-cnn", 3, (1, 16, 16))])
def test_each_block_gets_the_gradient_of_its_own_loss_only(name, depth, shape):
    model, cfg = prepared(name, depth, shape, label_smoothing=0.1)
    images, labels = batch(shape)
    copied = copy.deepcopy(model)  # batch norm in training mode: the copy's forward is the step's forward
    lls.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    by_hand = own_gradients_by_hand(copied, images, labels, 0.1)
    prefixes = [f"blocks.{i}." for i in range(depth)] + ["head."]
    for prefix, own in zip(prefixes, by_hand):
        for local_name, grad in own.items():
            assert grad.abs().sum() > 0, prefix + local_name
            torch.testing.assert_close(stepped[prefix + local_name], grad, rtol=1e-5, atol=1e-7,
                                       msg=prefix + local_name)
    assert set(stepped) == {prefix + n for prefix, own in zip(prefixes, by_hand) for n in own}


def test_without_detaching_block_one_would_get_every_later_loss():
    model, cfg = prepared()
    images, labels = batch()
    lls.step(model, images, labels, cfg, no_autocast)
    local = model.blocks[0][1].weight.grad.clone()
    model.zero_grad(set_to_none=True)
    x, total = images, 0
    for block, projection in zip(model.blocks, model.lls.projections):
        x = block(x)  # not detached
        total = total + lls.local_loss(projection(x), labels)
    total.backward()
    assert not torch.allclose(model.blocks[0][1].weight.grad, local, rtol=1e-3, atol=1e-6)


def test_a_cnn_trains_with_pooled_projections():
    model, cfg = prepared("sll-cnn-fmnist", 1, (1, 28, 28))
    # block outputs 64x14x14, 128x7x7, 256x7x7, 256x3x3, 512x1x1 pooled to 4x4, then 2x2 (never up)
    widths = [p.basis.shape for p in model.lls.projections]
    assert widths == [(10, 64 * 16), (10, 128 * 4), (10, 256 * 4), (10, 256 * 4), (10, 512)]
    assert [p.pool for p in model.lls.projections] == [4, 2, 2, 2, 2]
    images, labels = batch((1, 28, 28), n=4)
    images = images.contiguous(memory_format=torch.channels_last)
    loss = lls.step(model, images, labels, cfg, no_autocast)
    assert math.isfinite(loss.item())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_bf16_step_projects_in_float32_and_matches_fp32_loosely():
    model, cfg = prepared("deep-cnn", 2, (1, 16, 16))
    images, labels = batch((1, 16, 16), n=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.blocks[0](images)
        assert h.dtype == torch.bfloat16 and model.lls.projections[0](h).dtype == torch.float32
    fp32 = lls.step(model, images, labels, cfg, no_autocast).item()
    model.zero_grad()
    bf16 = lls.step(model, images, labels, cfg, lambda: torch.autocast("cpu", dtype=torch.bfloat16)).item()
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_step_memory_does_not_grow_with_depth():
    cpu = torch.device("cpu")
    peak = {d: bench.peak_saved_bytes(config(method="lls", model="deep-mlp", depth=d), 32, cpu) for d in (2, 8)}
    assert peak[2] == peak[8] > 0


def test_lls_learns_a_separable_task():
    torch.manual_seed(0)
    centres = torch.randn(10, 144) * 0.5
    labels = torch.randint(0, 10, (600,))
    images = (centres[labels] + torch.randn(600, 144)).view(600, *SHAPE)
    model, cfg = prepared(depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(3):
        for start in range(0, 600, 30):
            lls.step(model, images[start:start + 30], labels[start:start + 30], cfg, no_autocast)
            optimizer.step()
            optimizer.zero_grad()
    with torch.no_grad():
        per_block = lls.block_logits(model, images)
    accuracies = [(z.argmax(1) == labels).float().mean().item() for z in per_block]
    assert min(accuracies) > 0.9, accuracies  # every block's fixed projection, and the head, classify


def test_lls_is_registered_with_its_heads():
    method = METHODS["lls"]
    assert method.prepare is lls.prepare and method.check is lls.check and method.heads == ("linear",)


@pytest.mark.parametrize("options, message", [
    (["--model", "deep-vit"], "--method lls trains MLPs and CNNs"),
    (["--model", "simplecnn"], "--method lls cannot train simplecnn with a cascade head"),
    (["--head", "cascade"], "--method lls cannot train mlp-2x800 with a cascade head"),
])
def test_bad_lls_options_end_with_one_line(options, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["train", "--method", "lls", "--model", "mlp-2x800", "--dataset", "synthetic", *options, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_options_reach_the_model_and_the_run_trains():
    from sidlib.train import train_model
    cfg = config(method="lls", model="mlp-2x800", train_subset=40, test_subset=20, batch_size=20,
                 lls_projection="random")
    model, result = train_model(cfg)
    assert model.lls.kind == "random" and model.lls.projections[0].basis.shape == (10, 800)
    assert result["config"]["lls_projection"] == "random" and math.isfinite(result["history"][0]["train_loss"])


def test_the_step_returns_the_sum_of_every_blocks_loss_and_the_heads():
    """The loss a step reports is the sum (not the mean) of the blocks' local cross-entropies and the
    head's, each written out here: s = h / ||h||, z = B s / 0.5."""
    model, cfg = prepared(depth=3, label_smoothing=0.1)
    images, labels = batch()
    loss = lls.step(model, images, labels, cfg, no_autocast)
    x, expected = images, 0.0
    with torch.no_grad():
        for block, projection in zip(model.blocks, model.lls.projections):
            x = block(x)
            s = x.flatten(1) / x.flatten(1).norm(dim=1, keepdim=True)
            expected += cross_entropy(s @ projection.basis.T / 0.5, labels, label_smoothing=0.1).item()
        expected += cross_entropy(model.head(x), labels, label_smoothing=0.1).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
