"""PEPITA (Dellaferrera & Kreiman 2022): two forward passes, the second on an input modulated by the error.

No backward pass and no autograd: the network runs once on the input x, its output error is
projected onto the input by a fixed random matrix F, the network runs again on that modulated
input, and every layer learns from the difference between its two activities. For an MLP with
hidden layers h_l = block_l(h_{l-1}) (Linear, ReLU, [Dropout]) and a Linear head:

    standard pass    h_0 = x (flattened),   h_l = block_l(h_{l-1}),   logits = head(h_{L-1})
    output error     e = softmax(logits) - t                                        (``output_error``)
    modulated input  h_0^mod = x - F e   (--pepita-sign minus)
                     h_0^mod = x + F e   (--pepita-sign plus)                      (``modulated_input``)
    modulated pass   h_l^mod = block_l(h_{l-1}^mod)

with t the one-hot label (smoothed by ``--label-smoothing`` when asked: e is then the gradient of
the smoothed cross-entropy with respect to the logits, as for e with t one-hot). The updates, averaged
over the batch and left in ``.grad`` so that the optimiser's W <- W - lr * grad applies them:

    hidden layer l:  grad W_l = mean_n (h_l - h_l^mod) (h_{l-1}^mod)^T,   grad b_l = mean_n (h_l - h_l^mod)
                                                                                    (``hidden_update``)
    head:            grad W_L = mean_n e (h_{L-1}^mod)^T,                 grad b_L = mean_n e
                                                                                    (``output_update``)

F (input_dim x C) is sampled once, in ``prepare``, and never trained (a buffer, ``model.pepita.feedback``):

    F_ij = scale * u_ij * sqrt(6 / input_dim),   u_ij ~ Uniform(-1, 1),   scale = --pepita-feedback-scale
                                                                                  (``feedback_matrix``)

which is the paper's "He-uniform times 0.05" (both of the authors' implementations, numpy and
PyTorch, draw F this way for the network's input dimension).

The sign of the modulation. The paper and its authors' code modulate x + F e; the later code of
Srinivasan et al. (2023, same group) modulates x - F e. Both keep the same update, (h - h^mod) and e,
so x + F e with F is exactly x - F e with -F: the option flips the sign of the effective feedback,
not the rule. Because F's distribution is symmetric, the two signs are the same algorithm in
distribution (a seed gives different runs, a seed's F and -F give identical ones; the tests check
that identity). We default to ``minus``, the sign under which PEPITA reads as "nudge the input
against the error".

Open choices, what we picked, and why:
  * The head's error is e of the standard pass (the paper's Algorithm 1). The authors' numpy and
    PyTorch code use the modulated pass's error instead; the two differ by O(|F e|), about 1e-3 of e.
  * Biases (the paper's networks have none; ours do) learn as their weights do, from the same
    difference with a constant input of 1.
  * Dropout: both passes share one dropout mask per layer (the paper's "custom dropout"); we
    restore the random generators (CPU and the model's accelerator) after the first pass, so the
    second draws the same masks. h_l is the block's output after its dropout, as in the authors' code.
  * Precision: both passes run in float32 whatever the autocast. The rule learns from h_l - h_l^mod,
    a perturbation of a few 1e-3 of h_l at the paper's scale (2.4e-3 on Fashion-MNIST at init),
    below bfloat16's relative precision (2^-8 = 3.9e-3), which would round it away. An MLP's two
    forward passes are cheap, so we keep them exact rather than fast.
  * The loss a step returns (the run's ``train_loss``) is the standard pass's cross-entropy,
    comparable with BP's; PEPITA never differentiates it.
  * Inputs: the paper feeds pixels in [0, 1]; sidlib standardises them (mean 0, std 1 per
    channel), so F e is about 3x smaller relative to the input than in the paper. The scale is an
    option for that reason.

The paper's hyper-parameters (fully connected networks, 1 hidden layer of 1024 ReLU units, no
biases, He-uniform init): SGD with momentum 0.9, lr 0.01 (MNIST: 0.1 in the numpy example of the
README), batch 64, 100 epochs with lr x0.1 at epochs 60 and 90, dropout keep-rate 0.9 (10%), F scale
0.05. Test accuracy: MNIST 98.01, CIFAR-10 52.57, CIFAR-100 24.91. Here: ``--optimizer sgd --lr 0.01
--batch-size 64``; the step schedule and dropout are not options of ``train``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import WIDTH_MODELS
from .stages import untimed

HEADS = ("linear",)  # a block-by-block MLP with a Linear head; no belief cascade
DESCRIPTION = "two forward passes, the second on the input modulated by the projected error; no backward pass (PEPITA)"
SIGNS = ("minus", "plus")


def check(config) -> None:
    """Raise ValueError naming the option that cannot work, and the fix."""
    if config.model not in WIDTH_MODELS:
        raise ValueError(f"--method pepita trains MLPs only, not --model {config.model}; "
                         f"use one of: {', '.join(WIDTH_MODELS)}")
    if not config.pepita_feedback_scale > 0:
        raise ValueError(f"--pepita-feedback-scale must be positive, got {config.pepita_feedback_scale}; "
                         f"the paper's is 0.05 (use --pepita-sign to flip the modulation)")


def feedback_matrix(input_dim: int, num_classes: int, scale: float, generator: torch.Generator | None = None) -> Tensor:
    """F (input_dim x C): scale * Uniform(-1, 1) * sqrt(6 / input_dim), the He-uniform bound of the input."""
    u = torch.rand(input_dim, num_classes, generator=generator) * 2 - 1
    return scale * math.sqrt(6.0 / input_dim) * u


def output_error(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """e = softmax(logits) - t, in float32; t is the one-hot label, smoothed as cross-entropy smooths it."""
    num_classes = logits.shape[1]
    target = F.one_hot(labels, num_classes).float() * (1 - label_smoothing) + label_smoothing / num_classes
    return torch.softmax(logits.float(), dim=1) - target


def modulated_input(x: Tensor, error: Tensor, feedback: Tensor, sign: str = "minus") -> Tensor:
    """h_0^mod = x - F e (``minus``) or x + F e (``plus``), x flattened to (N, input_dim)."""
    projected = error @ feedback.T
    return x - projected if sign == "minus" else x + projected


def hidden_update(h: Tensor, h_mod: Tensor, h_prev_mod: Tensor) -> tuple[Tensor, Tensor]:
    """(grad W, grad b) of a hidden layer: the batch means of (h - h^mod) (h_prev^mod)^T and of (h - h^mod)."""
    delta = h - h_mod
    return delta.T @ h_prev_mod / len(h), delta.mean(0)


def output_update(error: Tensor, h_prev_mod: Tensor) -> tuple[Tensor, Tensor]:
    """(grad W, grad b) of the head: the batch means of e (h_{L-1}^mod)^T and of e."""
    return error.T @ h_prev_mod / len(error), error.mean(0)


class Feedback(nn.Module):
    """What ``prepare`` attaches as ``model.pepita``: F as a buffer (saved, moved, never trained) and the sign."""

    def __init__(self, feedback: Tensor, sign: str):
        super().__init__()
        self.register_buffer("feedback", feedback)
        self.sign = sign

    def extra_repr(self) -> str:
        return f"input_dim={self.feedback.shape[0]}, classes={self.feedback.shape[1]}, sign={self.sign}"


def _linear_of(block: nn.Module) -> nn.Linear:
    """The one Linear layer of an MLP block (Flatten, Linear, ReLU, Dropout), or a ValueError."""
    kinds = (nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout)
    layers = list(block.children()) if isinstance(block, nn.Sequential) else [block]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    if len(linears) != 1 or not all(isinstance(m, kinds) for m in layers):
        raise ValueError(f"PEPITA needs MLP blocks of Flatten, Linear, ReLU and Dropout; got {block}")
    return linears[0]


def prepare(model, config) -> None:
    """Check the network is an MLP and attach ``model.pepita``: F, sampled from the global generator
    on the CPU (the run's seed fixes it whatever the device), then moved to the model's device."""
    if config.pepita_sign not in SIGNS:
        raise ValueError(f"unknown --pepita-sign {config.pepita_sign!r}; choose one of: {', '.join(SIGNS)}")
    for block in model.blocks:
        _linear_of(block)
    if len(model.head) != 1 or not isinstance(model.head[0], nn.Linear):
        raise ValueError(f"PEPITA needs a head of one Linear layer; got {model.head}")
    input_dim = math.prod(model.input_shape)
    feedback = feedback_matrix(input_dim, model.num_classes, config.pepita_feedback_scale)
    model.pepita = Feedback(feedback, config.pepita_sign).to(next(model.parameters()).device)


def _shared_dropout_masks(device: torch.device):
    """A context that restores the random state on exit: the pass run inside it and the pass run
    after it draw the same dropout masks (the CPU generator, and the accelerator's for its tensors)."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device], device_type=device.type)


def _accumulate(parameter: Tensor, grad: Tensor) -> None:
    # Add to .grad as autograd would, so gradient accumulation over several calls still works.
    grad = grad.to(parameter.dtype)
    if parameter.grad is None:
        parameter.grad = grad
    else:
        parameter.grad += grad


@torch.no_grad()
def step(model, images, labels, config, autocast, clock=untimed):
    """The two passes and every layer's update, left in ``.grad``; returns the standard pass's
    cross-entropy. ``autocast`` is not used: both passes run in float32 (see the module's notes),
    even inside an autocast region opened by the caller."""
    with torch.autocast(images.device.type, enabled=False):
        return _two_passes(model, images.flatten(1).float(), labels, config, clock)


def _two_passes(model, x, labels, config, clock):
    feedback: Feedback = model.pepita
    with clock("forward"):
        with _shared_dropout_masks(x.device):
            hidden, h = [], x
            for block in model.blocks:
                h = block(h)
                hidden.append(h)
            logits = model.head(h)
        error = output_error(logits, labels, config.label_smoothing)
    h_prev = modulated_input(x, error, feedback.feedback, feedback.sign)
    for i, (block, h) in enumerate(zip(model.blocks, hidden)):
        with clock("modulated_forward", i):
            h_mod = block(h_prev)
            linear = _linear_of(block)
            grad_weight, grad_bias = hidden_update(h, h_mod, h_prev)
            _accumulate(linear.weight, grad_weight)
            if linear.bias is not None:
                _accumulate(linear.bias, grad_bias)
            h_prev = h_mod
    with clock("head_update"):
        head = model.head[0]
        grad_weight, grad_bias = output_update(error, h_prev)
        _accumulate(head.weight, grad_weight)
        if head.bias is not None:
            _accumulate(head.bias, grad_bias)
    return F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
