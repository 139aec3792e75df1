"""The HSIC bottleneck (Ma, Lewis & Kleijn 2020): every unit trained alone to keep what its output
says about the labels and to drop what it says about the input, then an output layer trained by
cross-entropy ("format" training).

On a minibatch of m samples, with X the flattened inputs, Y the one-hot labels and Z a unit's
flattened output, each a matrix of m rows, the Gaussian kernel of a d-wide matrix is

    K[i, j] = exp(-||a_i - a_j||^2 / (2 sigma^2 d))                             (``gaussian_kernel``)

(the width sigma scaled by sqrt(d), so that one sigma suits every layer, as in the authors' code),
centred as K~ = H K H with H = I - 11^T / m (``centre``), and the normalised HSIC is the cosine
between two centred kernels (``kernel_alignment``, ``normalized_hsic``):

    nHSIC(A, B) = tr(K~_A K~_B) / sqrt(tr(K~_A K~_A) tr(K~_B K~_B))             in [0, 1]

Unit l minimises, on its own graph, with its input detached,

    J_l = nHSIC(Z_l, X) - beta nHSIC(Z_l, Y)                                   (``bottleneck_objective``)

with beta = ``--hsic-beta`` and sigma = ``--hsic-sigma``. The output layer minimises the
cross-entropy of its logits on the detached output of the last unit.

Units, by the model's structure:

* linear head (``LayeredNetwork``): the units are ``model.blocks``; the output layer is
  ``model.head`` (its reduction, e.g. pooling or a ViT's class token, and its Linear classifier).
* cascade (``BeliefCascade``): the units are the extractor (Z = h) and the refinement modules
  1..L-1 (Z = the module's logits; each reads the previous module's belief and h, both detached);
  the last module is the output layer.

The layers' codes come out permuted: nothing asks a unit's output coordinate c to mean class c, so
argmax accuracy of an HSIC-trained unit is near chance (or near 0) until the output layer has
learnt the code. Prediction is therefore the trained output layer's, i.e. the ordinary forward pass
``model(images)``: the head of a linear network, the last module of a cascade (whose earlier
modules' beliefs, softmax of their HSIC-trained logits, feed it as in training).

Open choices, and what we picked:

* The normalisation. The authors' code (choasma/HSIC-bottleneck) trains with a regularised form,
  tr(R_A R_B) with R = K~ (K~ + eps m I)^{-1}, eps = 1e-5 (its ``hsic_normalized_cca``, after
  Fukumizu et al.'s normalised cross-covariance), whose scale grows with the kernels' rank (up to
  about m for the input, C for the labels): one reason their beta is large. We use the cosine form
  above (the same code's ``hsic_normalized``), which needs no matrix inverse and lies in [0, 1] for
  every pair; with it, beta >= 50 leaves the input term a small regulariser.
* The label kernel: the same Gaussian kernel on the one-hot labels, as the authors' code. After
  centring, any kernel of one-hot labels that depends only on whether two labels agree is a
  multiple of the linear kernel's H Y Y^T H, so nHSIC(Z, Y) does not depend on sigma.
* beta and sigma: the authors' configurations use sigma = 5 and beta (their ``lambda_y``) of 50
  (MNIST MLP), 100-200 (their searches) and 200 (their ResNet), with the CCA normalisation; our
  defaults are sigma = 5, beta = 500.
* Schedule: the paper trains the units first ("HSIC training") and the output layer afterwards on
  the frozen network ("format training"). We train both in every step: the output layer learns the
  units' current code, which it tracks as they change; a run's epochs therefore count both phases.
* The X kernel is computed on the network's input for every unit (not on the unit's own input),
  as in the paper: the bottleneck is between each representation and the data.
* The loss a step returns is the sum of all the units' J_l and the output layer's cross-entropy,
  so it is negative and not comparable with BP's cross-entropy.

The SID paper's HSIC baseline (its appendix B.1.3) is a different objective, ``--hsic-objective
labels``: each unit maximises the HSIC between its output and the labels alone (no input term),
measured by the unbiased estimator of Song et al. (2012) on the raw (uncentred) Gaussian kernels
K of Z and L of the one-hot labels (``unbiased_hsic``, ``labels_objective``):

    HSIC_u = [tr(K' L') + 1^T K' 1 1^T L' 1 / ((m-1)(m-2)) - 2/(m-2) 1^T K' L' 1] / (m(m-3))

where K' and L' are K and L with their diagonals set to zero, so J_l = -HSIC_u(Z_l, Y). The
paper gives neither the kernel's width nor how the units' code becomes a prediction; we use the
same width convention and sigma as above, and the same output layer trained by cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import BeliefCascade
from .local import blockwise_step
from .stages import untimed

DESCRIPTION = ("each block trained alone to keep HSIC with the labels and drop HSIC with the input (HSIC bottleneck; "
               "--hsic-objective labels: the SID paper's, HSIC with the labels alone)")
TINY = 1e-12  # keeps the normalisation finite for a constant output (a dead layer: its centred kernel is 0)


def gaussian_kernel(a: Tensor, sigma: float) -> Tensor:
    """K[i, j] = exp(-||a_i - a_j||^2 / (2 sigma^2 d)) for the rows of a (m x d), in float32."""
    with torch.autocast(a.device.type, enabled=False):
        a = a.float()
        a = a - a.mean(0, keepdim=True)  # distances do not change; the Gram expansion cancels less
        squares = a.pow(2).sum(1)
        distances = (squares[:, None] + squares[None, :] - 2 * a @ a.T).clamp_min(0)
        return torch.exp(-distances / (2 * sigma ** 2 * a.shape[1]))


def centre(kernel: Tensor) -> Tensor:
    """H K H with H = I - 11^T / m: subtract the row and column means, add back the overall mean."""
    return kernel - kernel.mean(0, keepdim=True) - kernel.mean(1, keepdim=True) + kernel.mean()


def kernel_alignment(centred_a: Tensor, centred_b: Tensor) -> Tensor:
    """tr(K~_A K~_B) / sqrt(tr(K~_A K~_A) tr(K~_B K~_B)) for symmetric centred kernels."""
    product = (centred_a * centred_b).sum()
    norms = (centred_a.pow(2).sum() * centred_b.pow(2).sum() + TINY).sqrt()
    return product / norms


def normalized_hsic(a: Tensor, b: Tensor, sigma: float) -> Tensor:
    """nHSIC(A, B) with Gaussian kernels of width sigma sqrt(d) on each matrix's rows."""
    return kernel_alignment(centre(gaussian_kernel(a, sigma)), centre(gaussian_kernel(b, sigma)))


def bottleneck_objective(z: Tensor, input_kernel: Tensor, label_kernel: Tensor, sigma: float, beta: float) -> Tensor:
    """J = nHSIC(Z, X) - beta nHSIC(Z, Y), given the centred kernels of X and Y."""
    z_kernel = centre(gaussian_kernel(z.flatten(1), sigma))
    return kernel_alignment(z_kernel, input_kernel) - beta * kernel_alignment(z_kernel, label_kernel)


def unbiased_hsic(kernel_a: Tensor, kernel_b: Tensor) -> Tensor:
    """Song et al.'s unbiased estimator of HSIC from two raw symmetric kernels of m >= 4 samples."""
    m = kernel_a.shape[0]
    a = kernel_a - torch.diag_embed(torch.diagonal(kernel_a))  # K': the diagonal (i = j) left out
    b = kernel_b - torch.diag_embed(torch.diagonal(kernel_b))
    trace = (a * b).sum()  # tr(K' L') for symmetric K', L'
    sums = a.sum() * b.sum() / ((m - 1) * (m - 2))
    cross = 2 / (m - 2) * (a.sum(0) @ b.sum(1))  # 1^T K' L' 1
    return (trace + sums - cross) / (m * (m - 3))


def labels_objective(z: Tensor, label_kernel: Tensor, sigma: float) -> Tensor:
    """J = -HSIC_u(Z, Y), given the raw Gaussian kernel of the one-hot labels (the SID paper's baseline).
    A batch of fewer than 4 samples has no unbiased estimate: it contributes nothing (a zero with a graph)."""
    if z.shape[0] < 4:
        return z.sum() * 0.0
    return -unbiased_hsic(gaussian_kernel(z.flatten(1), sigma), label_kernel)


def data_kernels(images: Tensor, labels: Tensor, num_classes: int, sigma: float) -> tuple[Tensor, Tensor]:
    """The centred kernels of the flattened inputs and of the one-hot labels (no gradient)."""
    one_hot = F.one_hot(labels, num_classes).float()
    return centre(gaussian_kernel(images.flatten(1), sigma)), centre(gaussian_kernel(one_hot, sigma))


def check(config) -> None:
    if not config.hsic_sigma > 0:
        raise ValueError(f"--hsic-sigma must be positive, got {config.hsic_sigma}; the authors use 5")
    if not config.hsic_beta >= 0:
        raise ValueError(f"--hsic-beta must be at least 0, got {config.hsic_beta}; "
                         f"the authors use 50 to 200 (larger weighs the labels more)")


def step(model, images, labels, config, autocast, clock=untimed):
    """Each unit's objective on its own graph, backpropagated at once; then the output layer's
    cross-entropy on the detached last output. Returns their sum (detached)."""
    if config.hsic_objective == "labels":  # the SID paper's baseline: the labels' term alone, unbiased
        with clock("kernels"), torch.no_grad():
            raw_label_kernel = gaussian_kernel(F.one_hot(labels, model.num_classes).float(), config.hsic_sigma)
        objective = lambda z: labels_objective(z, raw_label_kernel, config.hsic_sigma)  # noqa: E731
    else:
        with clock("kernels"), torch.no_grad():
            input_kernel, label_kernel = data_kernels(images, labels, model.num_classes, config.hsic_sigma)
        objective = lambda z: bottleneck_objective(z, input_kernel, label_kernel,  # noqa: E731
                                                   config.hsic_sigma, config.hsic_beta)
    if isinstance(model, BeliefCascade):
        return cascade_step(model, images, labels, objective, autocast, clock, config.label_smoothing)
    return blockwise_step(model, images, labels, lambda i, h: objective(h), config.label_smoothing, autocast, clock)


def cascade_step(model, images, labels, objective, autocast, clock=untimed, label_smoothing=0.0):
    """The extractor and modules 1..L-1 as units, the last module as the output layer."""
    with clock("extractor_forward"):
        with autocast():
            features = model.extractor(images)
        loss = objective(features)
    with clock("extractor_backward"):
        loss.backward()
    losses = [loss.detach()]
    features = features.detach()
    belief = model.uniform_belief(features)
    for i in range(model.depth):
        last = i == model.depth - 1
        with clock("module_forward", i):
            with autocast():
                logits = model.module_logits(i, belief, features)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing) if last else objective(logits)
        with clock("module_backward", i):
            loss.backward()
        losses.append(loss.detach())
        belief = model.module_input(logits.detach().float())
    return torch.stack(losses).sum()
