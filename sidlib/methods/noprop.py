"""NoProp (Li, Teh & Pascanu 2025), its discrete-time variant NoProp-DT, on a belief cascade; and the
SID authors' simplified NoProp (``--noprop-variant authors``).

The cascade's refinement module i is NoProp's block u_t (t = i + 1, T = depth). It reads z_{t-1}
through the slot where SID passes a belief, and h = g_phi(x), the shared extractor's features.
Every block is trained on its own to denoise a noisy label embedding given the input; no block
sees another block's output in training.

``paper`` (``--noprop-variant paper``, the default)
    A learned class embedding W (C x C, row u_c for class c) and a fixed Gaussian process q that
    noises u_y in T + 1 steps: q(z_T | y) = N(sqrt(alpha_T) u_y, (1 - alpha_T) I) and
    q(z_{t-1} | z_t) = N(sqrt(alpha_{t-1}) z_t, (1 - alpha_{t-1}) I), so that

        q(z_t | y) = N(sqrt(abar_t) u_y, (1 - abar_t) I),   abar_t = prod_{s=t..T} alpha_s  (``sample_q``)
        SNR(t) = abar_t / (1 - abar_t)                                                        (``snr``)

    abar is the cosine schedule (``cosine_alpha_bar``), z_0 the noisiest latent, z_T the cleanest.
    Block t predicts the embedding as a mixture of the class embeddings,

        u_hat_t = softmax(f_t(z_{t-1}, h)) W                                     (``predicted_embedding``)

    and one step minimises the paper's objective (its negative ELBO), with an output layer
    p(y | z_T) = softmax(Linear(z_T)) and the prior p(z_0) = N(0, I):

        L = E_q(z_T|y)[-log p(y | z_T)]                                          (``output_loss``)
          + KL(q(z_0 | y) || N(0, I))                                            (``prior_kl``)
          + (1/T) sum_{t=1..T} (T/2) eta (SNR(t) - SNR(t-1)) ||u_hat_t(z_{t-1}, x) - u_y||^2
                                                        with z_{t-1} ~ q(z_{t-1}|y) (``denoising_loss``)

    eta = ``--noprop-eta`` (default 0.1, with T = 10 the paper's NoProp-DT setting). Inference
    (``paper_inference``) runs the chain

        z_0 ~ N(0, I),   z_t = a_t u_hat_t(z_{t-1}, x) + b_t z_{t-1} + sqrt(c_t) eps_t

    with the mean and variance of q(z_t | z_{t-1}, y), u_y replaced by u_hat_t (``chain_coefficients``):

        a_t = sqrt(abar_t) (1 - alpha_{t-1}) / (1 - abar_{t-1})
        b_t = sqrt(alpha_{t-1}) (1 - abar_t) / (1 - abar_{t-1})
        c_t = (1 - abar_t) (1 - alpha_{t-1}) / (1 - abar_{t-1}),   alpha_{t-1} = abar_{t-1} / abar_t

    and predicts with the output layer on z_T.

``authors`` (``--noprop-variant authors``), the SID authors' NoProp (their public notebook,
``NoProp.ipynb`` in ychAlbert/sid_bp), as our issue describes it: one-hot labels e_y, no learned
embedding and no output layer; a linear schedule of per-step factors alpha_i from 1.0 down to 0.1
(``authors_alphas``); block i reads z_{i+1} of the chain

    z_0 = e_y,   z_{i+1} = sqrt(alpha_i) z_i + sqrt(1 - alpha_i) eps_i            (``authors_noisy_labels``)

so block 0 (alpha_0 = 1) sees the clean label, and the noisiest input, block T-1's, keeps
prod_i alpha_i (3.6e-4 of the signal's power at T = 10); the loss is the plain sum over blocks of
the mean squared error between each block's raw output and e_y (``authors_loss``). Inference
(``authors_inference``) starts from z ~ N(0, I), which training never shows, and runs the blocks
from the last to the first, z <- sqrt(alpha_i) f_i(z, h) + sqrt(1 - alpha_i) eps; the prediction is
argmax z, the raw output of block 0 (alpha_0 = 1 adds no noise).
How the two differ: learned embedding and output layer vs one-hot and argmax; cosine schedule
with z_0 ~ N(0, I) (the inference start is what training shows block 1) vs a linear schedule that
never reaches pure noise; SNR-weighted squared error of a softmax mixture of embeddings, plus the
CE and KL terms, vs unweighted MSE of raw outputs; inference through the blocks in training order
1..T with the posterior's coefficients vs in reverse order with the forward noising's factors.

What we chose where the paper leaves it open, or where our structure forces it:

* The embedding's dimension must be C: module i's input slot is C wide (it is SID's belief), so
  unlike in the paper it is not a free choice. Neither W's nor the output layer's initialisation
  is given. We initialise W as the identity (the one-hot code the authors' variant
  keeps fixed, so the variants start from the same code) and the output layer as the identity with
  zero bias, the decoder of that code (p(y | z_T) = softmax(z_T) at the start). With PyTorch's
  default initialisation the output layer must first learn to read the code, which the short runs
  of our tests cannot afford (simplecnn, depth 3, 2,000 Fashion-MNIST images: 10.2% then 20.2%
  after 1 and 5 epochs, against 14.2% and 39.2% with the identity).
* W gets the gradient of every term that contains it: the targets u_y, the mixtures u_hat_t, the
  reparameterised samples z_{t-1} and z_T, and the KL. This is the full gradient of the objective,
  as the paper's algorithm updates W with the same loss as theta_t and theta_out; the CE term is what
  keeps the embeddings from collapsing onto each other.
* The schedule: the paper fixes a cosine schedule without its discretisation. q noises u_y in T + 1
  steps (alpha_0 .. alpha_T), so we take Nichol & Dhariwal's cosine schedule for T + 1 steps (offset
  s = 0.008, each step's noise 1 - alpha clipped at 0.999) read backwards: abar_t is their
  abar at step T + 1 - t. Then abar_T < 1 (SNR(T) is finite: z_T is a noisy u_y, as the CE term
  needs) and abar_0 ~ 2e-5 (q(z_0 | y) is nearly the prior, the KL term nearly 0).
* Which blocks a step trains: the paper's algorithm trains one block t per minibatch (an outer loop
  over t); we train all T blocks on every minibatch, each with its own noise. The denoising term is
  then the exact mean over t of the paper's per-block term (T/2) eta (SNR(t) - SNR(t-1)) ||.||^2,
  i.e. the ELBO's expectation over t ~ U{1..T} computed rather than sampled, which keeps the paper's
  balance between this term and the CE and KL terms. (Each block's own parameters only see their
  own term, whose scale Adam ignores; the scale matters for the extractor and for W.)
* The shared extractor: in the paper every block embeds the image itself; here the blocks share
  g_phi, which receives the sum of the blocks' feature gradients (as SID's ``extractor="all"``).
  The authors' notebook leaves its extractor out of every optimiser (it stays at its random
  initialisation); we train it in both variants. Memory stays flat in depth: the features are
  detached once, each block's loss is backpropagated as soon as it is computed, and one backward
  through the extractor closes the step (as ``sidlib.methods.sid``).
* Noise: a step draws all its noise at once, eps_0 .. eps_T (T x batch x C for the authors'
  chain), from the global generator, so a run's seed fixes it. Inference draws its noise from a
  generator created inside ``predict`` with a fixed seed (``INFERENCE_SEED``) on the images' device:
  the same images in the same batch always get the same prediction, so evaluation is reproducible
  (a sample's noise depends on the evaluation batch it is in and its place there).
* The loss a step returns: ``paper``, the objective L above; ``authors``, the summed MSEs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stages import untimed

HEADS = ("cascade",)  # NoProp's blocks read (z_{t-1}, x): the refinement modules of a belief cascade
DESCRIPTION = "each module trained alone to denoise a noisy label embedding given the input (NoProp-DT)"
VARIANTS = ("paper", "authors")
COSINE_OFFSET = 0.008   # Nichol & Dhariwal's s
MAX_STEP_NOISE = 0.999  # their clip of each step's noise 1 - alpha
AUTHORS_ALPHA_RANGE = (1.0, 0.1)  # the authors' per-step factors, linearly from the first to the last
INFERENCE_SEED = 0


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------

def cosine_alpha_bar(T: int) -> Tensor:
    """abar_0 .. abar_T (float64): Nichol & Dhariwal's cosine schedule for T + 1 noising steps,
    read backwards, abar_t = abar_ND(T + 1 - t) with abar_ND(k) = f(k / (T + 1)) / f(0),
    f(tau) = cos^2((tau + s) / (1 + s) * pi / 2), each step's noise clipped at 0.999."""
    steps = T + 1
    tau = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((tau + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    step_noise = (1 - f[1:] / f[:-1]).clamp(max=MAX_STEP_NOISE)
    alpha_bar_nd = torch.cumprod(1 - step_noise, 0)  # after 1 .. T+1 noising steps
    return alpha_bar_nd.flip(0)


def snr(alpha_bar: Tensor) -> Tensor:
    """SNR(t) = abar_t / (1 - abar_t)."""
    return alpha_bar / (1 - alpha_bar)


def denoising_weights(alpha_bar: Tensor, eta: float) -> Tensor:
    """The paper's weight of block t's squared error, (T/2) eta (SNR(t) - SNR(t-1)), t = 1..T."""
    T = len(alpha_bar) - 1
    ratios = snr(alpha_bar)
    return T / 2 * eta * (ratios[1:] - ratios[:-1])


def chain_coefficients(alpha_bar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(a_t, b_t, c_t) for t = 1..T: q(z_t | z_{t-1}, y) = N(a_t u_y + b_t z_{t-1}, c_t I)."""
    now, before = alpha_bar[1:], alpha_bar[:-1]
    alpha_before = before / now  # alpha_{t-1}, the factor of q(z_{t-1} | z_t)
    a = now.sqrt() * (1 - alpha_before) / (1 - before)
    b = alpha_before.sqrt() * (1 - now) / (1 - before)
    c = (1 - now) * (1 - alpha_before) / (1 - before)
    return a, b, c


def authors_alphas(T: int) -> Tensor:
    """The authors' per-step factors alpha_0 .. alpha_{T-1}, linear from 1.0 to 0.1 (float64)."""
    return torch.linspace(*AUTHORS_ALPHA_RANGE, T, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# the paper's terms
# ---------------------------------------------------------------------------------------------

def sample_q(u_y: Tensor, alpha_bar_t: Tensor, noise: Tensor) -> Tensor:
    """z_t = sqrt(abar_t) u_y + sqrt(1 - abar_t) eps, a sample of q(z_t | y) (reparameterised)."""
    return alpha_bar_t.sqrt() * u_y + (1 - alpha_bar_t).sqrt() * noise


def predicted_embedding(logits: Tensor, embedding: Tensor) -> Tensor:
    """u_hat = softmax(logits) W, in float32 (also inside an autocast region, e.g. evaluation's)."""
    with torch.autocast(logits.device.type, enabled=False):
        return torch.softmax(logits.float(), dim=1) @ embedding.float()


def denoising_loss(u_hat: Tensor, u_y: Tensor, weight: Tensor) -> Tensor:
    """weight * ||u_hat - u_y||^2, averaged over the batch."""
    return weight * (u_hat - u_y).pow(2).sum(1).mean()


def prior_kl(u_y: Tensor, alpha_bar_0: Tensor) -> Tensor:
    """KL(N(sqrt(abar_0) u_y, (1 - abar_0) I) || N(0, I)) for each row:
    (abar_0 ||u_y||^2 - d abar_0 - d log(1 - abar_0)) / 2."""
    d = u_y.shape[1]
    return (alpha_bar_0 * u_y.pow(2).sum(1) - d * alpha_bar_0 - d * torch.log1p(-alpha_bar_0)) / 2


def output_loss(output_layer: nn.Linear, z_T: Tensor, labels: Tensor) -> Tensor:
    """-log p(y | z_T) with p = softmax(Linear(z_T)), averaged over the batch."""
    return F.cross_entropy(output_layer(z_T).float(), labels)


# ---------------------------------------------------------------------------------------------
# the authors' terms
# ---------------------------------------------------------------------------------------------

def authors_noisy_labels(one_hot: Tensor, alphas: Tensor, noise: Tensor) -> list[Tensor]:
    """Block i's input z_{i+1} = sqrt(alpha_i) z_i + sqrt(1 - alpha_i) eps_i from z_0 = e_y, i = 0..T-1."""
    z, inputs = one_hot, []
    for alpha, eps in zip(alphas, noise):
        z = alpha.sqrt() * z + (1 - alpha).sqrt() * eps
        inputs.append(z)
    return inputs


def authors_loss(output: Tensor, one_hot: Tensor) -> Tensor:
    """Mean over the batch and the classes of (f_i(z, h) - e_y)^2, the raw output against e_y."""
    return F.mse_loss(output.float(), one_hot)


# ---------------------------------------------------------------------------------------------
# what prepare attaches
# ---------------------------------------------------------------------------------------------

class NoPropParts(nn.Module):
    """``model.noprop``: the variant, its schedule (buffers: saved, moved, never trained) and, for
    the paper, the class embedding W and the output layer (parameters, trained)."""

    def __init__(self, variant: str, depth: int, num_classes: int):
        super().__init__()
        self.variant = variant
        if variant == "paper":
            alpha_bar = cosine_alpha_bar(depth)
            a, b, c = chain_coefficients(alpha_bar)
            self.register_buffer("alpha_bar", alpha_bar.float())
            self.register_buffer("weights_per_eta", denoising_weights(alpha_bar, 1.0).float())
            self.register_buffer("chain", torch.stack([a, b, c]).float())  # rows a, b, c; column t-1
            self.embedding = nn.Parameter(torch.eye(num_classes))
            self.output = nn.Linear(num_classes, num_classes)
            with torch.no_grad():  # starts as the decoder of the initial code: logits = z_T
                self.output.weight.copy_(torch.eye(num_classes))
                self.output.bias.zero_()
        elif variant == "authors":
            self.register_buffer("alphas", authors_alphas(depth).float())
        else:
            raise ValueError(f"unknown --noprop-variant {variant!r}; choose one of: {', '.join(VARIANTS)}")

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


def check(config) -> None:
    if config.belief_input != "softmax":
        raise ValueError("--belief-input has no meaning for NoProp (its blocks read noisy label embeddings, not "
                         "beliefs); drop it")
    if not config.noprop_eta > 0:
        raise ValueError(f"--noprop-eta must be positive, got {config.noprop_eta}; the paper uses 0.1")
    if config.label_smoothing:
        raise ValueError(f"--label-smoothing {config.label_smoothing} has no meaning for NoProp (its targets are "
                         "label embeddings); drop it or set it to 0")


def prepare(model, config) -> None:
    """Attach ``model.noprop`` on the model's device."""
    check(config)
    parts = NoPropParts(config.noprop_variant, model.depth, model.num_classes)
    model.noprop = parts.to(next(model.parameters()).device)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def step(model, images, labels, config, autocast, clock=untimed):
    """Every block's loss, backpropagated at once on its own graph, then the variant's last terms
    and one backward through the extractor. Returns the step's loss (detached)."""
    with clock("extractor_forward"), autocast():
        features = model.extractor(images)
    shared = features.detach().requires_grad_()
    if model.noprop.variant == "paper":
        loss = paper_losses(model, shared, labels, config.noprop_eta, autocast, clock)
    else:
        loss = authors_losses(model, shared, labels, autocast, clock)
    with clock("extractor_backward"):
        features.backward(shared.grad)
    return loss


def paper_losses(model, shared, labels, eta, autocast, clock=untimed):
    """The paper's objective: each block's denoising term, then the output layer's CE and the KL."""
    parts: NoPropParts = model.noprop
    T, alpha_bar = model.depth, parts.alpha_bar
    noise = torch.randn(T + 1, len(labels), model.num_classes, device=shared.device)  # eps_0 .. eps_T
    losses = []
    for i, block in enumerate(model.blocks):  # block u_t, t = i + 1, reads z_{t-1} = z_i
        with clock("module_forward", i):
            u_y = parts.embedding[labels]
            z = sample_q(u_y, alpha_bar[i], noise[i])
            with autocast():
                logits = block(z, shared)
            u_hat = predicted_embedding(logits, parts.embedding)
            weight = eta * parts.weights_per_eta[i]  # its own tensor: a view would keep all T alive
            loss = denoising_loss(u_hat, u_y, weight) / T  # the mean over t of the paper's term
        with clock("module_backward", i):
            loss.backward()  # frees this block's graph before the next block runs
        losses.append(loss.detach())
    with clock("output_forward"):
        u_y = parts.embedding[labels]
        z_T = sample_q(u_y, alpha_bar[T], noise[T])
        loss = output_loss(parts.output, z_T, labels) + prior_kl(u_y, alpha_bar[0]).mean()
    with clock("output_backward"):
        loss.backward()
    losses.append(loss.detach())
    return torch.stack(losses).sum()


def authors_losses(model, shared, labels, autocast, clock=untimed):
    """The authors' summed MSEs, each block on its input from the noising chain."""
    parts: NoPropParts = model.noprop
    one_hot = F.one_hot(labels, model.num_classes).float()
    noise = torch.randn(model.depth, *one_hot.shape, device=shared.device)
    inputs = authors_noisy_labels(one_hot, parts.alphas, noise)
    losses = []
    for i, (block, z) in enumerate(zip(model.blocks, inputs)):
        with clock("module_forward", i):
            with autocast():
                output = block(z, shared)
            loss = authors_loss(output, one_hot)
        with clock("module_backward", i):
            loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses).sum()


# ---------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------

def inference_noise(steps: int, batch: int, width: int, device) -> Tensor:
    """Inference's noise eps_0 .. eps_T (steps x batch x width), from a generator seeded with
    ``INFERENCE_SEED`` on ``device``: the same every call, so evaluation is reproducible and leaves
    the global generator alone."""
    generator = torch.Generator(device=device).manual_seed(INFERENCE_SEED)
    return torch.randn(steps, batch, width, generator=generator, device=device)


def paper_inference(model, features: Tensor, noise: Tensor) -> Tensor:
    """The output layer's logits on z_T, from z_0 = noise[0] and z_t = a_t u_hat_t + b_t z_{t-1}
    + sqrt(c_t) noise[t]."""
    parts: NoPropParts = model.noprop
    a, b, c = parts.chain
    z = noise[0]
    for i, block in enumerate(model.blocks):
        u_hat = predicted_embedding(block(z, features), parts.embedding)
        z = a[i] * u_hat + b[i] * z + c[i].sqrt() * noise[i + 1]
    with torch.autocast(z.device.type, enabled=False):  # as in training: the output layer runs in float32
        return parts.output(z.float())


def authors_inference(model, features: Tensor, noise: Tensor) -> Tensor:
    """z from noise[0], then z <- sqrt(alpha_i) f_i(z, h) + sqrt(1 - alpha_i) noise[T - i] for
    i = T-1 .. 0; the last z (block 0's raw output) are the class scores."""
    alphas = model.noprop.alphas
    z = noise[0]
    for i in reversed(range(model.depth)):
        z = alphas[i].sqrt() * model.blocks[i](z, features).float() + (1 - alphas[i]).sqrt() * noise[model.depth - i]
    return z


def predict(model, images: Tensor) -> Tensor:
    """Class scores (argmax is the prediction) by the variant's inference chain, with fixed noise."""
    features = model.extractor(images)
    noise = inference_noise(model.depth + 1, images.shape[0], model.num_classes, images.device)
    if model.noprop.variant == "paper":
        return paper_inference(model, features, noise)
    return authors_inference(model, features, noise)
