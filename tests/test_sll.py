"""SLL (reconstructed): locality of its gradients, its fixed projections, its flat memory, its loss
against a hand computation, its options and its errors."""
import math
from dataclasses import replace

import pytest
import torch

from helpers import config, grads, no_autocast
from sidlib import bench, cli
from sidlib.divergences import bhattacharyya_distance
from sidlib.methods import METHODS, sll
from sidlib.models import build_model
from sidlib.models.mlp import mlp

SHAPE = (1, 12, 12)


def prepared(name="deep-mlp", depth=3, seed=0, shape=SHAPE, classes=10, **options):
    cfg = config(method="sll", model=name, depth=depth, seed=seed,
                 **{f"sll_{k}": v for k, v in options.items()})
    torch.manual_seed(seed)
    model = build_model(name, shape, classes, depth)
    sll.prepare(model, cfg)
    return model, cfg


def batch(shape=SHAPE, n=8, classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def hand_log_codes(weight, vector, temperature):
    """log q = log softmax(R v / T), written out: the reference for ``code_log_probs``."""
    z = vector @ weight.T / temperature
    return z - z.exp().sum(1, keepdim=True).log()


def hand_local_loss(log_q, log_parent, labels, weight, classes):
    """-log q(y) + weight * (-log sum_k sqrt(q_k p_k)), batch mean, with code j pooled into class
    j mod C, written out from the paper's formula: the reference for ``sll_objective``."""
    q = log_q.exp()
    label_prob = sum(q[torch.arange(len(labels)), labels + offset] for offset in range(0, q.shape[1], classes))
    bhattacharyya = -(q * log_parent.exp()).sqrt().sum(1).log()
    return (-label_prob.log() + weight * bhattacharyya).mean()


def pooled(log_q, classes):
    q = log_q.exp()
    return sum(q[:, offset:offset + classes] for offset in range(0, q.shape[1], classes)).log()


# away from the defaults (weight 1, temperature 1, k = C), where a swapped or dropped factor would hide
HAND = dict(dropout=0.0, weight=0.7, temperature=2.0, codes=20)


def hand_unit_gradients(model, images, labels, detach=True):
    """Each unit's (and the head's) gradient from its own hand-written loss, accumulated over units;
    ``detach=False`` lets every later loss reach every earlier unit, as end-to-end training would."""
    heads, w, t = model.sll, HAND["weight"], HAND["temperature"]
    parent = hand_log_codes(heads.input_projection.weight, images.flatten(1), t)
    x, total = images, 0
    for unit, projection in zip(heads.units(model), heads.projections):
        h = unit(x)
        log_q = hand_log_codes(projection.weight, h.flatten(1), t)
        total = total + hand_local_loss(log_q, parent, labels, w, 10)
        x, parent = (h.detach(), log_q.detach()) if detach else (h, log_q.detach())
    log_q = torch.log_softmax(model.head(x), 1)
    total = total + hand_local_loss(log_q, pooled(parent, 10), labels, w, 10)
    model.zero_grad(set_to_none=True)
    total.backward()
    return grads(model)


def test_each_unit_gets_the_gradient_of_its_own_loss_only():
    # dropout off, so the step's forward passes can be repeated exactly by hand
    model, cfg = prepared(**HAND)
    images, labels = batch()
    sll.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    # with every unit's input detached, the sum of the local losses has each unit's own gradient
    by_hand = hand_unit_gradients(model, images, labels)
    assert set(stepped) == set(by_hand)
    for name, grad in by_hand.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(stepped[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_without_detaching_the_check_above_would_fail():
    # the same hand losses trained end to end: unit 0 then receives gradient from every later loss
    model, cfg = prepared(**HAND)
    images, labels = batch()
    sll.step(model, images, labels, cfg, no_autocast)
    local = model.blocks[0][1].weight.grad.clone()
    end_to_end = hand_unit_gradients(model, images, labels, detach=False)["blocks.0.1.weight"]
    assert not torch.allclose(end_to_end, local, rtol=1e-3, atol=1e-6)


def test_projections_are_fixed_buffers_that_a_training_step_leaves_alone():
    model, cfg = prepared(depth=2)
    names = {n for n, _ in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers() if n.startswith("sll.")}
    assert set(buffers) == {"sll.projections.0.weight", "sll.projections.1.weight", "sll.input_projection.weight"}
    assert not names & set(buffers)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = model.blocks[0][1].weight.clone()
    for _ in range(2):
        sll.step(model, *batch(), cfg, no_autocast)
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(before, model.blocks[0][1].weight)  # the network did train
    for name, value in model.named_buffers():
        if name in buffers:
            assert torch.equal(value, buffers[name]), name
    assert "sll.projections.0.weight" in model.state_dict()  # saved with the checkpoint


def test_projection_shapes_scale_and_seed():
    model, _ = prepared(name="sll-cnn-fmnist", depth=1, shape=(1, 28, 28), codes=20)
    # unit outputs flattened: 64x14x14, 128x7x7, 256x7x7, 256x3x3, 512x1x1
    widths = [p.weight.shape for p in model.sll.projections]
    assert widths == [(20, 64 * 14 * 14), (20, 128 * 7 * 7), (20, 256 * 7 * 7), (20, 256 * 3 * 3), (20, 512)]
    assert model.sll.input_projection.weight.shape == (20, 784)
    r = model.sll.projections[0].weight
    assert abs(r.var().item() * r.shape[1] - 1) < 0.01  # variance 1/d
    rademacher, _ = prepared(projection="rademacher")
    assert torch.allclose(rademacher.sll.input_projection.weight.abs() * math.sqrt(144), torch.ones(10, 144))
    assert torch.allclose(rademacher.sll.projections[1].weight.abs() * math.sqrt(800), torch.ones(10, 800))
    again, _ = prepared(projection="rademacher")
    assert torch.equal(again.sll.projections[1].weight, rademacher.sll.projections[1].weight)
    other, _ = prepared(projection="rademacher", seed=1)
    assert not torch.equal(other.sll.projections[1].weight, rademacher.sll.projections[1].weight)


def test_dropout_on_the_projection_is_fresh_each_training_step_and_off_in_eval():
    projection = sll.RandomProjection(50, 10, dropout=0.5)
    h = torch.randn(4, 50)
    torch.manual_seed(0)
    first, second = projection(h), projection(h)
    assert not torch.equal(first, second)
    projection.eval()
    torch.testing.assert_close(projection(h), h @ projection.weight.T)


def test_loss_equals_a_hand_computation_on_a_tiny_network():
    torch.manual_seed(0)
    model = mlp((1, 3), 2, [2])  # one hidden layer of 2 units, 2 classes
    with torch.no_grad():
        model.blocks[0][1].weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]))
        model.blocks[0][1].bias.zero_()
        model.head[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
        model.head[0].bias.zero_()
    cfg = config(method="sll", sll_dropout=0.0, sll_weight=0.5)
    sll.prepare(model, cfg)
    r_in = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # q_0 from x[0] and x[2]
    r_1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    model.sll.input_projection.weight.copy_(r_in)
    model.sll.projections[0].weight.copy_(r_1)
    x, y = [0.5, 1.0, -1.0], 1
    loss = sll.step(model, torch.tensor([[x]]), torch.tensor([y]), cfg, no_autocast).item()

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    def d_b(p, q):
        return -math.log(sum(math.sqrt(a * b) for a, b in zip(p, q)))

    hidden = [max(0.0, 1 * 0.5 - 1 * 1.0 + 0.5 * -1.0), max(0.0, 2 * 1.0 - 1 * -1.0)]  # [0, 3]
    q0 = softmax([x[0], x[2]])
    q1 = softmax([2 * hidden[0], hidden[1]])
    q_head = softmax([hidden[0], -hidden[0] + hidden[1]])
    expected = (-math.log(q1[y]) + 0.5 * d_b(q1, q0)) + (-math.log(q_head[y]) + 0.5 * d_b(q_head, q1))
    assert loss == pytest.approx(expected, rel=1e-6)


def test_codes_beyond_the_classes_pool_into_them():
    log_q = torch.log_softmax(torch.randn(5, 7, dtype=torch.float64), 1)
    pooled = sll.class_log_probs(log_q, 3, "pooled")  # codes 0,3,6 -> class 0; 1,4 -> 1; 2,5 -> 2
    q = log_q.exp()
    torch.testing.assert_close(pooled.exp(), torch.stack([q[:, [0, 3, 6]].sum(1), q[:, [1, 4]].sum(1),
                                                          q[:, [2, 5]].sum(1)], 1))
    first = sll.class_log_probs(log_q, 3, "first")
    torch.testing.assert_close(first.exp(), q[:, :3] / q[:, :3].sum(1, keepdim=True))
    assert torch.equal(sll.class_log_probs(log_q, 7), log_q)


def test_objective_is_cross_entropy_plus_weighted_bhattacharyya():
    log_q = torch.log_softmax(torch.randn(4, 10, dtype=torch.float64), 1)
    log_p = torch.log_softmax(torch.randn(4, 10, dtype=torch.float64), 1)
    labels = torch.tensor([0, 3, 9, 2])
    ce = torch.nn.functional.nll_loss(log_q, labels, reduction="none")
    torch.testing.assert_close(sll.sll_objective(log_q, None, labels, 1.0, 10), ce)
    torch.testing.assert_close(sll.sll_objective(log_q, log_p, labels, 0.0, 10), ce)
    torch.testing.assert_close(sll.sll_objective(log_q, log_p, labels, 2.0, 10),
                               ce + 2 * bhattacharyya_distance(log_q, log_p))


@pytest.mark.parametrize("prior", sll.FIRST_PRIORS)
def test_first_prior_options(prior):
    model, cfg = prepared(first_prior=prior)
    images, _ = batch()
    model.eval()  # no dropout on the input's projection
    parent = model.sll.first_prior(images)
    if prior == "none":
        assert parent is None and model.sll.input_projection is None
    elif prior == "uniform":
        torch.testing.assert_close(parent.exp(), torch.full((8, 10), 0.1))
    else:
        torch.testing.assert_close(parent, torch.log_softmax(images.flatten(1) @ model.sll.input_projection.weight.T, 1))


def test_sll_plus_units_train_their_blocks_together_and_stay_apart():
    model, cfg = prepared(name="deep-vit", depth=3, shape=(1, 8, 8), unit=2, tokens="mean", dropout=0.0)
    assert model.sll.unit_slices == [(0, 2), (2, 3)] and len(model.sll.projections) == 2
    assert model.sll.projections[0].weight.shape == (10, 384)  # the token mean, not the flattened tokens
    images, labels = batch(shape=(1, 8, 8), n=4)
    sll.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    # unit 0 (blocks 0-1) by hand: block 0 gets gradient through block 1, from unit 0's loss alone
    model.zero_grad(set_to_none=True)
    h = model.blocks[1](model.blocks[0](images))
    log_q = torch.log_softmax(model.sll.projections[0](h.mean(1)), 1)
    sll.sll_objective(log_q, model.sll.first_prior(images), labels, 1.0, 10).mean().backward()
    for name, p in model.named_parameters():
        if name.startswith(("blocks.0.", "blocks.1.")) and p.grad is not None:
            torch.testing.assert_close(stepped[name], p.grad, rtol=1e-5, atol=1e-6)
        elif not name.startswith(("blocks.0.", "blocks.1.")):
            assert p.grad is None, name
    assert stepped["blocks.0.0.conv_proj.weight"].abs().sum() > 0


@pytest.mark.parametrize("rule", sll.PREDICTION_RULES)
def test_prediction_rules(rule):
    model, cfg = prepared(predict=rule, codes=20)
    model.eval()
    images, _ = batch()
    logits = sll.predict(model, images)
    assert logits.shape == (8, 10)
    per_layer = sll.layer_class_log_probs(model, images)
    assert len(per_layer) == 4  # three units and the head
    expected = {"head": model(images), "last": per_layer[2],
                "average": torch.stack([p.exp() for p in per_layer]).mean(0).log()}[rule]
    torch.testing.assert_close(logits.log_softmax(1), expected.log_softmax(1))


def test_step_memory_does_not_grow_with_depth_and_bp_does():
    device = torch.device("cpu")
    peak = {(m, d): bench.peak_saved_bytes(config(method=m, model="deep-mlp", depth=d), 32, device)
            for m in ("sll", "bp") for d in (2, 8)}
    assert peak[("sll", 8)] == peak[("sll", 2)]
    # BP keeps each hidden layer's activations: 6 more layers of 800 units at batch 32, float32, at least
    assert peak[("bp", 8)] - peak[("bp", 2)] >= 6 * 32 * 800 * 4
    unit_vit = {u: bench.peak_saved_bytes(config(method="sll", model="deep-vit", depth=4, dataset="synthetic",
                                                 sll_unit=u), 4, device) for u in (1, 2, 4)}
    assert unit_vit[1] < unit_vit[2] < unit_vit[4]  # SLL+: memory follows the unit, not the network


def test_sll_is_registered_with_its_rule_and_heads():
    method = METHODS["sll"]
    assert method.predict is sll.predict and method.prepare is sll.prepare and method.heads == ("linear",)


@pytest.mark.parametrize("options, message", [
    (["--sll-dropout", "1"], "--sll-dropout must lie in [0, 1)"),
    (["--sll-codes", "5"], "--sll-codes 5 is below the 10 classes"),
    (["--sll-unit", "0"], "--sll-unit (blocks per unit) must be at least 1"),
    (["--sll-temperature", "0"], "--sll-temperature must be positive"),
    (["--sll-weight", "-1"], "--sll-weight must be at least 0"),
    (["--model", "simplecnn"], "--method sll cannot train simplecnn with a cascade head"),
    (["--model", "deep-mlp", "--head", "cascade"], "no cascade head"),
])
def test_bad_sll_options_end_with_one_line(options, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["train", "--method", "sll", "--model", "mlp-2x800", "--dataset", "synthetic", *options, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_options_reach_the_model_and_are_recorded_in_the_run_config():
    from sidlib.train import train_model
    cfg = replace(config(method="sll", model="mlp-2x800", train_subset=40, test_subset=20, batch_size=20),
                  sll_codes=30, sll_code_map="first", sll_predict="average", sll_first_prior="none", optimizer="adamax")
    model, result = train_model(cfg)
    assert [p.weight.shape for p in model.sll.projections] == [(30, 800), (30, 800)]
    assert model.sll.input_projection is None and model.sll.options.code_map == "first"
    assert result["config"]["sll_codes"] == 30 and result["config"]["sll_predict"] == "average"
    assert result["config"]["optimizer"] == "adamax" and math.isfinite(result["history"][0]["train_loss"])


def test_a_bf16_step_projects_in_float32_and_matches_fp32_loosely():
    model, cfg = prepared(name="sll-cnn-fmnist", depth=1, shape=(1, 28, 28), dropout=0.0)
    images, labels = batch(shape=(1, 28, 28), n=4)
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.blocks[0](images)
        assert h.dtype == torch.bfloat16 and model.sll.projections[0](h.flatten(1)).dtype == torch.float32
    fp32 = sll.step(model, images, labels, cfg, no_autocast).item()
    model.zero_grad()
    bf16 = sll.step(model, images, labels, cfg, lambda: torch.autocast("cpu", dtype=torch.bfloat16)).item()
    assert bf16 == pytest.approx(fp32, rel=0.05)
