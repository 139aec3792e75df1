"""Forward-Forward: its goodness and loss against direct computations, the label embedding, the
negatives, the locality of its gradients, the prediction by summed goodness, the read-out, a conv
model, flat memory, bf16 and its errors."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import config, grads, no_autocast
from sidlib import bench, cli
from sidlib.data import DATASETS, DatasetInfo
from sidlib.methods import METHODS, ff
from sidlib.models import build_model
from sidlib.models.mlp import mlp

SHAPE = (1, 12, 12)


def prepared(name="deep-mlp", depth=3, seed=0, shape=SHAPE, classes=10, **options):
    options.setdefault("goodness", "sum")  # the hand computations below sum the squares
    cfg = config(method="ff", model=name, depth=depth, seed=seed, **{f"ff_{k}": v for k, v in options.items()})
    torch.manual_seed(seed)
    model = build_model(name, shape, classes, depth)
    ff.prepare(model, cfg)
    return model, cfg


def batch(shape=SHAPE, n=8, classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_goodness_threshold_and_loss_against_a_direct_computation():
    h = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    torch.testing.assert_close(ff.goodness(h, "sum"), torch.tensor([5.25, 10.0]))
    torch.testing.assert_close(ff.goodness(h, "mean"), torch.tensor([5.25 / 3, 10.0 / 3]))
    conv = torch.arange(24.0).view(2, 3, 2, 2)  # all of a sample's values count
    torch.testing.assert_close(ff.goodness(conv, "sum"), (conv ** 2).sum((1, 2, 3)))
    # the threshold is per unit: the sum's is the mean's times the number of outputs
    assert ff.threshold(conv, "mean", 2.0) == 2.0 and ff.threshold(conv, "sum", 2.0) == 24.0
    positive, negative, theta = torch.tensor([3.0, 2.5]), torch.tensor([0.5, 4.0]), 2.0
    expected = sum(math.log(1 + math.exp(theta - p)) + math.log(1 + math.exp(q - theta))
                   for p, q in zip(positive.tolist(), negative.tolist())) / 2
    assert ff.ff_loss(positive, negative, theta).item() == pytest.approx(expected, rel=1e-6)


def test_normalisation_gives_root_mean_square_one_per_sample():
    h = torch.randn(3, 4, 2, 2) * torch.tensor([0.1, 1.0, 30.0]).view(3, 1, 1, 1)
    n = ff.normalise(h)
    torch.testing.assert_close(n.square().mean((1, 2, 3)), torch.ones(3))
    torch.testing.assert_close(n / n.flatten(1).norm(dim=1).view(3, 1, 1, 1),
                               h / h.flatten(1).norm(dim=1).view(3, 1, 1, 1))  # the direction is kept


def test_label_embedding_writes_the_scaled_one_hot_in_the_first_values_and_leaves_the_rest():
    images, _ = batch(shape=(3, 4, 4), n=5)
    images[0, 1, 2, 3] = -50.0  # the strength is the largest absolute value
    labels = torch.tensor([0, 3, 9, 3, 7])
    out = ff.embed_label(images, ff.one_hot(labels, 10)).flatten(1)
    strength = images.flatten(1).abs().amax(1)
    assert strength[0] == 50.0
    torch.testing.assert_close(out[:, :10], F.one_hot(labels, 10) * strength[:, None])
    assert torch.equal(out[:, 10:], images.flatten(1)[:, 10:])
    neutral = ff.embed_label(images, ff.neutral_codes(images, 10)).flatten(1)
    torch.testing.assert_close(neutral[:, :10], (strength / 10)[:, None].expand(5, 10))
    last = images.contiguous(memory_format=torch.channels_last)
    embedded = ff.embed_label(last, ff.one_hot(labels, 10))
    assert embedded.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(embedded.flatten(1), out)


def test_other_negatives_are_never_the_true_label_and_permuted_ones_keep_the_multiset():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (5000,))
    other = ff.negative_labels(labels, 10, "other")
    assert not (other == labels).any()
    counts = torch.bincount((other - labels) % 10, minlength=10)  # the offset is uniform over 1..9
    assert counts[0] == 0 and counts[1:].min() > 450
    permuted = ff.negative_labels(labels, 10, "permute")
    assert torch.equal(permuted.sort().values, labels.sort().values)
    assert 0.07 < (permuted == labels).float().mean() < 0.13  # about 1/C of them are positives


@pytest.mark.parametrize("name", ["deep-mlp", "deep-cnn"])
def test_each_block_gets_the_gradient_of_its_own_loss_only(name):
    model, cfg = prepared(name)
    images, labels = batch()
    torch.manual_seed(5)
    ff.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    torch.manual_seed(5)  # the same negatives
    wrong = ff.negative_labels(labels, 10, cfg.ff_negatives)
    x = torch.cat([ff.embed_label(images, ff.one_hot(labels, 10)), ff.embed_label(images, ff.one_hot(wrong, 10))])
    for i, block in enumerate(model.blocks):
        model.zero_grad(set_to_none=True)
        h = block(x)
        g_pos, g_neg = ff.goodness(h, "sum").chunk(2)
        ff.ff_loss(g_pos, g_neg, cfg.ff_threshold * h[0].numel()).backward()
        own = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        # this block's loss reaches this block's parameters and nothing else
        assert set(own) == {n for n in stepped if n.startswith(f"blocks.{i}.")}, i
        for n, grad in own.items():
            torch.testing.assert_close(stepped[n], grad, rtol=1e-5, atol=1e-7)
        x = ff.normalise(h.detach())
    assert all(grad is None for n, grad in stepped.items() if n.startswith("head."))  # predicting by goodness


def test_prediction_is_the_argmax_of_goodness_summed_by_hand_on_a_tiny_mlp():
    torch.manual_seed(0)
    model = mlp((1, 9), 3, [16, 12, 8])
    ff.prepare(model, config(method="ff", ff_goodness="sum"))
    model.eval()
    x = torch.randn(6, 1, 9)
    weights = [(b[0 if i else 1].weight, b[0 if i else 1].bias) for i, b in enumerate(model.blocks)]
    expected = torch.zeros(6, 3)
    for c in range(3):
        inp = x.flatten(1).clone()
        strength = inp.abs().max(1).values
        inp[:, :3] = 0
        inp[:, c] = strength
        h = inp
        for i, (w, b) in enumerate(weights):
            if i > 0:
                h = h / torch.sqrt((h ** 2).mean(1, keepdim=True) + 1e-8)
            h = torch.clamp(h @ w.T + b, min=0)
            expected[:, c] += (h ** 2).sum(1)  # every block, the first included
    with torch.no_grad():
        logits = ff.predict(model, x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert len(set(expected.argmax(1).tolist())) > 1  # the check is not vacuous


def test_the_readout_head_gets_exactly_the_cross_entropy_gradient_on_detached_features():
    model, cfg = prepared(predict="readout")
    images, labels = batch()
    torch.manual_seed(5)
    ff.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    # the blocks get what they get when predicting by goodness: the read-out sends them nothing
    by_goodness, cfg_goodness = prepared(predict="goodness")
    torch.manual_seed(5)
    ff.step(by_goodness, images, labels, cfg_goodness, no_autocast)
    for name, grad in grads(by_goodness).items():
        if name.startswith("blocks."):
            torch.testing.assert_close(stepped[name], grad)
    # the head's gradient is the cross-entropy's on the last block's normalised neutral output
    model.zero_grad(set_to_none=True)
    x = ff.embed_label(images, torch.full((8, 10), 0.1))
    for i, block in enumerate(model.blocks):
        x = block(x if i == 0 else ff.normalise(x))
    features = ff.normalise(x).detach()
    F.cross_entropy(model.head(features), labels).backward()
    torch.testing.assert_close(stepped["head.0.weight"], model.head[0].weight.grad)
    torch.testing.assert_close(stepped["head.0.bias"], model.head[0].bias.grad)
    with torch.no_grad():
        torch.testing.assert_close(ff.predict(model, images), model.head(features))


def test_a_conv_model_trains_and_predicts():
    model, cfg = prepared("sll-cnn-fmnist", depth=1, shape=(1, 28, 28))
    model = model.to(memory_format=torch.channels_last)
    images, labels = batch(shape=(1, 28, 28), n=4)
    images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = model.blocks[4][0].weight.clone()
    loss = ff.step(model, images, labels, cfg, no_autocast)
    assert math.isfinite(loss.item())
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.startswith("blocks."), name
    optimizer.step()
    assert not torch.equal(before, model.blocks[4][0].weight)
    model.eval()
    with torch.no_grad():
        logits = ff.predict(model, images)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


def test_step_memory_does_not_grow_with_depth():
    peak = {d: bench.peak_saved_bytes(config(method="ff", model="deep-mlp", depth=d), 16, torch.device("cpu"))
            for d in (2, 6)}
    assert peak[6] == peak[2]


def test_a_bf16_step_keeps_goodness_in_float32_and_matches_fp32_loosely():
    model, cfg = prepared("deep-cnn", depth=2)
    images, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.blocks[0](images)
        assert h.dtype == torch.bfloat16 and ff.goodness(h).dtype == torch.float32
    torch.manual_seed(3)
    fp32 = ff.step(model, images, labels, cfg, no_autocast).item()
    model.zero_grad()
    torch.manual_seed(3)
    bf16 = ff.step(model, images, labels, cfg, lambda: torch.autocast("cpu", dtype=torch.bfloat16)).item()
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_ff_is_registered_with_its_rule_and_heads():
    method = METHODS["ff"]
    assert method.predict is ff.predict and method.prepare is ff.prepare and method.check is ff.check
    assert method.heads == ("linear",)


def test_check_rejects_inputs_too_small_for_the_label(monkeypatch):
    monkeypatch.setitem(DATASETS, "tiny", DatasetInfo((1, 10), 10, 10, 10, False))
    with pytest.raises(ValueError, match="first 10 input values.* has only 10"):
        ff.check(SimpleNamespace(dataset="tiny", ff_threshold=2.0))
    ff.check(SimpleNamespace(dataset="mnist1d", ff_threshold=2.0))  # 40 values: fine


@pytest.mark.parametrize("options, message", [
    (["--ff-threshold", "0"], "--ff-threshold must be positive"),
    (["--model", "simplecnn"], "--method ff cannot train simplecnn with a cascade head"),
])
def test_bad_ff_options_end_with_one_line(options, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["train", "--method", "ff", "--model", "mlp-2x800", "--dataset", "synthetic", *options, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("rule", ["goodness", "readout"])
def test_a_run_through_the_training_loop_learns_the_synthetic_task(rule):
    from dataclasses import replace

    from sidlib.train import train_model
    cfg = replace(config(method="ff", model="mlp-2x800", train_subset=1000, test_subset=200, batch_size=50),
                  ff_predict=rule)
    model, result = train_model(cfg)
    assert result["config"]["ff_predict"] == rule and model.ff.predict == rule
    assert result["final_test_acc"] > 60  # chance is 10%
