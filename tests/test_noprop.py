"""NoProp-DT (sidlib.methods.noprop): its schedule and chain against their formulas, a step's loss
against a hand computation with the same noise, the locality of every block's gradient, the two
variants' differences, deterministic inference, bf16, memory flat in depth and its option errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import CLASSES, config, grads, no_autocast, tiny_problem
from sidlib import bench, cli
from sidlib.methods import METHODS, noprop

T = 4


def prepared(variant="paper", depth=T, batch=8, seed=0, **changes):
    model, images, labels = tiny_problem(depth=depth, batch=batch, seed=seed)
    cfg = config(method="noprop", noprop_variant=variant, depth=depth, **changes)
    noprop.prepare(model, cfg)
    return model, images, labels, cfg


def cosine(tau, s=0.008):
    return math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2


def test_cosine_schedule_and_snr_follow_their_formulas():
    steps = 10
    alpha_bar = noprop.cosine_alpha_bar(steps)
    assert alpha_bar.shape == (steps + 1,)
    # abar_t is Nichol & Dhariwal's abar after T + 1 - t of T + 1 steps: t = T is the least noisy
    for t in range(1, steps + 1):
        expected = cosine((steps + 1 - t) / (steps + 1)) / cosine(0)
        assert alpha_bar[t].item() == pytest.approx(expected, rel=1e-12)
    # the last noising step (to z_0) is clipped at 0.999 of noise
    assert alpha_bar[0].item() == pytest.approx(0.001 * alpha_bar[1].item(), rel=1e-12)
    assert torch.all(alpha_bar[1:] > alpha_bar[:-1]) and alpha_bar[-1] < 1 and alpha_bar[0] < 1e-4
    ratios = noprop.snr(alpha_bar)
    torch.testing.assert_close(ratios, alpha_bar / (1 - alpha_bar))
    weights = noprop.denoising_weights(alpha_bar, 0.1)
    for t in range(1, steps + 1):
        assert weights[t - 1].item() == pytest.approx(steps / 2 * 0.1 * (ratios[t] - ratios[t - 1]).item(), rel=1e-12)


def test_chain_coefficients_carry_q_from_one_step_to_the_next():
    # with u_hat = u_y and z_{t-1} ~ q(z_{t-1}|y), z_t = a u + b z + sqrt(c) eps must be ~ q(z_t|y):
    # mean a + b sqrt(abar_{t-1}) = sqrt(abar_t), variance b^2 (1 - abar_{t-1}) + c = 1 - abar_t
    alpha_bar = noprop.cosine_alpha_bar(10)
    a, b, c = noprop.chain_coefficients(alpha_bar)
    now, before = alpha_bar[1:], alpha_bar[:-1]
    torch.testing.assert_close(a + b * before.sqrt(), now.sqrt())
    torch.testing.assert_close(b ** 2 * (1 - before) + c, 1 - now)
    # and they are the posterior's: c_t is the variance of q(z_t | z_{t-1}, y)
    alpha = before / now
    torch.testing.assert_close(1 / c, alpha / (1 - alpha) + 1 / (1 - now))


def test_paper_step_loss_equals_a_direct_computation_with_the_same_noise():
    model, images, labels, cfg = prepared(noprop_eta=0.3)
    torch.manual_seed(7)
    loss = noprop.step(model, images, labels, cfg, no_autocast).item()
    torch.manual_seed(7)
    noise = torch.randn(T + 1, len(labels), CLASSES).double()
    schedule = [1e-3 * cosine(T / (T + 1)) / cosine(0)] + [cosine((T + 1 - t) / (T + 1)) / cosine(0)
                                                           for t in range(1, T + 1)]
    snr = [s / (1 - s) for s in schedule]
    parts = model.noprop
    embedding = parts.embedding.detach().double()
    u = embedding[labels]
    with torch.no_grad():
        h = model.extractor(images)
        expected = 0.0
        for t in range(1, T + 1):
            z = math.sqrt(schedule[t - 1]) * u + math.sqrt(1 - schedule[t - 1]) * noise[t - 1]
            u_hat = torch.softmax(model.blocks[t - 1](z.float(), h).double(), 1) @ embedding
            expected += T / 2 * 0.3 * (snr[t] - snr[t - 1]) * ((u_hat - u) ** 2).sum(1).mean().item() / T
        z_T = math.sqrt(schedule[T]) * u + math.sqrt(1 - schedule[T]) * noise[T]
        expected += F.cross_entropy(parts.output(z_T.float()).double(), labels).item()
        a0 = schedule[0]
        expected += (0.5 * (a0 * (u ** 2).sum(1) - CLASSES * a0 - CLASSES * math.log(1 - a0))).mean().item()
    assert loss == pytest.approx(expected, rel=1e-5)


def block_losses_by_hand(model, images, labels, variant, noise):
    """Each block's loss as a function of the shared features, computed as the variants define them."""
    parts = model.noprop
    if variant == "paper":
        def loss(i, h):
            u = parts.embedding[labels]
            z = noprop.sample_q(u, parts.alpha_bar[i], noise[i])
            u_hat = torch.softmax(model.blocks[i](z, h), 1) @ parts.embedding
            snr = parts.alpha_bar / (1 - parts.alpha_bar)
            return T / 2 * 0.1 * (snr[i + 1] - snr[i]) * ((u_hat - u) ** 2).sum(1).mean() / T
    else:
        one_hot = F.one_hot(labels, CLASSES).float()
        inputs = noprop.authors_noisy_labels(one_hot, parts.alphas, noise)

        def loss(i, h):
            return ((model.blocks[i](inputs[i], h) - one_hot) ** 2).mean()
    return loss


@pytest.mark.parametrize("variant", noprop.VARIANTS)
def test_each_block_gets_the_gradient_of_its_own_loss_only(variant):
    model, images, labels, cfg = prepared(variant)
    torch.manual_seed(3)
    noprop.step(model, images, labels, cfg, no_autocast)
    stepped = grads(model)
    torch.manual_seed(3)
    shape = (T + 1, len(labels), CLASSES) if variant == "paper" else (T, len(labels), CLASSES)
    loss = block_losses_by_hand(model, images, labels, variant, torch.randn(shape))
    extractor_grad = None
    for i in range(T):
        model.zero_grad(set_to_none=True)
        h = model.extractor(images)
        loss(i, h).backward()
        touched = {n for n, p in model.named_parameters() if p.grad is not None}
        own = {n for n in touched if n.startswith("blocks.")}
        assert own == {f"blocks.{i}.hidden.weight", f"blocks.{i}.hidden.bias", f"blocks.{i}.out.weight",
                       f"blocks.{i}.out.bias"}, i
        for name in own:
            torch.testing.assert_close(stepped[name], dict(model.named_parameters())[name].grad, rtol=1e-5, atol=1e-7)
        # the shared extractor receives the sum of the blocks' feature gradients
        w = model.extractor[0].weight.grad.clone()
        extractor_grad = w if extractor_grad is None else extractor_grad + w
    torch.testing.assert_close(stepped["extractor.0.weight"], extractor_grad, rtol=1e-4, atol=1e-7)


def test_the_variants_differ_as_stated():
    for variant in noprop.VARIANTS:
        model, images, labels, cfg = prepared(variant)
        inputs = []
        handles = [block.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
                   for block in model.blocks]
        torch.manual_seed(5)
        noprop.step(model, images, labels, cfg, no_autocast)
        for handle in handles:
            handle.remove()
        torch.manual_seed(5)
        one_hot = F.one_hot(labels, CLASSES).float()
        if variant == "authors":
            # one-hot labels, no learned embedding, no output layer, linear factors 1.0 .. 0.1;
            # block 0 sees the clean label and no block sees pure noise
            noise = torch.randn(T, len(labels), CLASSES)
            assert not list(model.noprop.parameters())
            torch.testing.assert_close(model.noprop.alphas, torch.linspace(1.0, 0.1, T))
            assert torch.equal(inputs[0], one_hot)
            z = one_hot
            for alpha, eps, seen in zip(torch.linspace(1.0, 0.1, T), noise, inputs):
                z = alpha.sqrt() * z + (1 - alpha).sqrt() * eps
                torch.testing.assert_close(seen, z)
        else:
            # a learned C x C embedding and an output layer; block 1 reads z_0 ~ q(z_0|y), which is
            # nearly the prior N(0, I), and block T reads the least noisy z_{T-1}
            noise = torch.randn(T + 1, len(labels), CLASSES)
            parts = model.noprop
            assert parts.embedding.shape == (CLASSES, CLASSES) and parts.embedding.requires_grad
            assert isinstance(parts.output, torch.nn.Linear)
            assert torch.equal(parts.output.weight, torch.eye(CLASSES)) and not parts.output.bias.any()
            alpha_bar = noprop.cosine_alpha_bar(T)
            assert alpha_bar[0] < 1e-4
            u = parts.embedding.detach()[labels]
            for i, seen in enumerate(inputs):
                expected = alpha_bar[i].sqrt().item() * u + (1 - alpha_bar[i]).sqrt().item() * noise[i]
                torch.testing.assert_close(seen, expected)


def test_authors_loss_is_the_plain_sum_of_the_blocks_mse():
    model, images, labels, cfg = prepared("authors")
    torch.manual_seed(11)
    loss = noprop.step(model, images, labels, cfg, no_autocast).item()
    torch.manual_seed(11)
    by_hand = block_losses_by_hand(model, images, labels, "authors", torch.randn(T, len(labels), CLASSES))
    with torch.no_grad():
        h = model.extractor(images)
        expected = sum(by_hand(i, h).item() for i in range(T))
    assert loss == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("variant", noprop.VARIANTS)
def test_inference_is_deterministic_has_the_right_shape_and_follows_the_chain(variant):
    model, images, labels, cfg = prepared(variant)
    model.eval()
    rng = torch.get_rng_state()
    with torch.no_grad():
        logits = noprop.predict(model, images)
    assert logits.shape == (8, CLASSES) and logits.dtype == torch.float32
    assert torch.equal(noprop.predict(model, images).detach(), logits)
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is left alone
    noise = torch.randn(T + 1, 8, CLASSES, generator=torch.Generator().manual_seed(noprop.INFERENCE_SEED))
    with torch.no_grad():
        h = model.extractor(images)
        if variant == "paper":
            a, b, c = noprop.chain_coefficients(noprop.cosine_alpha_bar(T))
            z = noise[0]
            for i in range(T):
                u_hat = torch.softmax(model.blocks[i](z, h), 1) @ model.noprop.embedding
                z = a[i].item() * u_hat + b[i].item() * z + math.sqrt(c[i].item()) * noise[i + 1]
            expected = model.noprop.output(z)
        else:
            alphas = torch.linspace(1.0, 0.1, T)
            z = noise[0]
            for k, i in enumerate(reversed(range(T))):
                z = alphas[i].sqrt() * model.blocks[i](z, h) + (1 - alphas[i]).sqrt() * noise[k + 1]
            expected = z
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", noprop.VARIANTS)
def test_a_bf16_step_and_prediction_run_and_match_fp32_loosely(variant):
    model, images, labels, cfg = prepared(variant)
    torch.manual_seed(0)
    fp32 = noprop.step(model, images, labels, cfg, no_autocast).item()
    model.zero_grad()
    torch.manual_seed(0)
    bf16 = noprop.step(model, images, labels, cfg, lambda: torch.autocast("cpu", dtype=torch.bfloat16)).item()
    assert math.isfinite(bf16) and bf16 == pytest.approx(fp32, rel=0.05)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(noprop.predict(model, images)).all()


def test_step_memory_does_not_grow_with_depth():
    device = torch.device("cpu")
    for variant in noprop.VARIANTS:
        peak = {d: bench.peak_saved_bytes(config(method="noprop", noprop_variant=variant, depth=d), 16, device)
                for d in (2, 6)}
        assert peak[6] == peak[2], variant


def test_training_updates_the_embedding_and_records_the_options():
    from sidlib.train import train_model
    cfg = config(method="noprop", depth=3, train_subset=40, test_subset=20, batch_size=20, noprop_eta=0.2)
    model, result = train_model(cfg)
    assert not torch.equal(model.noprop.embedding.detach(), torch.eye(CLASSES))  # W is trained
    assert "noprop.embedding" in model.state_dict() and "noprop.alpha_bar" in model.state_dict()
    assert result["config"]["noprop_eta"] == 0.2 and math.isfinite(result["history"][0]["train_loss"])
    assert METHODS["noprop"].predict is noprop.predict and METHODS["noprop"].heads == ("cascade",)


@pytest.mark.parametrize("options, message", [
    (["--noprop-eta", "0"], "--noprop-eta must be positive"),
    (["--model", "mlp-2x800"], "--method noprop cannot train mlp-2x800 with a linear head"),
])
def test_bad_noprop_options_end_with_one_line(options, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["train", "--method", "noprop", "--dataset", "synthetic", *options, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_the_embedding_gets_the_gradient_of_every_term_including_the_prior_kl():
    """W's gradient and the step's loss against the paper's objective written out, with KL(q(z_0|y) || N(0, I))
    from torch.distributions. abar_0 is raised to 0.05 (from ~1e-4, where the KL term is ~1e-5 and would hide
    among the others) and W moved off the identity, so that every term's share of W's gradient shows."""
    model, images, labels, cfg = prepared(noprop_eta=0.3)
    parts = model.noprop
    with torch.no_grad():
        parts.alpha_bar[0] = 0.05  # still below abar_1 (~0.09): z_0 stays the noisiest latent
        parts.embedding.add_(0.2 * torch.randn(CLASSES, CLASSES, generator=torch.Generator().manual_seed(1)))
    torch.manual_seed(7)
    loss = noprop.step(model, images, labels, cfg, no_autocast).item()
    stepped = parts.embedding.grad.clone()
    torch.manual_seed(7)
    noise = torch.randn(T + 1, len(labels), CLASSES)
    # the denoising weights come from the unchanged cosine schedule (the step's precomputed buffer)
    schedule = [1e-3 * cosine(T / (T + 1)) / cosine(0)] + [cosine((T + 1 - t) / (T + 1)) / cosine(0)
                                                           for t in range(1, T + 1)]
    snr = [s / (1 - s) for s in schedule]
    abar = parts.alpha_bar.detach()  # the sampled latents and the KL use the raised abar_0
    w = parts.embedding
    u = w[labels]
    h = model.extractor(images).detach()
    total = 0.0
    for t in range(1, T + 1):
        z = abar[t - 1].sqrt() * u + (1 - abar[t - 1]).sqrt() * noise[t - 1]
        u_hat = torch.softmax(model.blocks[t - 1](z, h), 1) @ w
        total = total + T / 2 * 0.3 * (snr[t] - snr[t - 1]) * ((u_hat - u) ** 2).sum(1).mean() / T
    z_T = abar[T].sqrt() * u + (1 - abar[T]).sqrt() * noise[T]
    total = total + F.cross_entropy(parts.output(z_T), labels)
    q_0 = torch.distributions.Normal(abar[0].sqrt() * u, (1 - abar[0]).sqrt())
    kl = torch.distributions.kl_divergence(q_0, torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    assert kl.item() > 0.01  # a term that counts
    total = total + kl
    (expected,) = torch.autograd.grad(total, w)
    assert loss == pytest.approx(total.item(), rel=1e-5)
    torch.testing.assert_close(stepped, expected, rtol=1e-4, atol=1e-6)
