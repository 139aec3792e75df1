"""Direct Kolen-Pollack (Webster, Choi & Ahn 2021, "Learning the Connections in Direct Feedback
Alignment"): DFA whose feedback matrices learn by the Kolen-Pollack rule.

The blocks and the head get DFA's gradients (``sidlib.methods.dfa``) with the current B_l (C x d_l).
B_l, a Parameter, gets the gradient that a direct forward connection logits += V_l h_l, from block
l's output to the output, would get (Kolen & Pollack 1994, as Akrout et al. 2019 use it for FA):

    dB_l = e^T h_l       e = dL/dlogits (N x C), h_l = block l's output (N x d_l)   (``kolen_pollack_gradient``)

and the run's optimiser applies it, with the run's weight decay lambda; with SGD without momentum (for illustration: ``--optimizer sgd``
has momentum 0.9, which keeps the argument, a linear recurrence, but not this formula),
B_l <- B_l - lr (e^T h_l + lambda B_l). A V_l trained alongside would receive the same update, so
B_l - V_l shrinks by the factor (1 - lr lambda) each step whatever the data: weight decay is what
brings B_l to that learned direct connection; without it B_l - V_l keeps its random start.

Open choices, and what we picked:
* h_l is the block's output, after its activation and pooling: the authors' code (webstah/dkp-gist)
  reads the post-ReLU output, the tensor the feedback enters at, so dB_l has exactly B_l's shape.
* e is the gradient of the batch-mean loss (it carries the 1/N), as in the authors' code.
* B_l and its gradient are float32 whatever the autocast.
* One optimiser, learning rate, schedule and weight decay for W and B: the run's. The authors' code
  gives B its own Adam (lr 1e-4 on its CIFAR-10 CNN, 1e-2 on AlexNet) with its learning rate
  multiplied by 0.8 each epoch, weight decay 1e-6 or 1e-4 on both W and B, and batch norm after every
  convolution. sidlib has no option for a separate B optimiser or schedule yet.
* B_l starts as DFA's: U(-1/sqrt(d_l), 1/sqrt(d_l)) (the authors' code: kaiming_uniform).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .dfa import HEADS, attach_direct_feedback, direct_feedback_step  # noqa: F401 (HEADS: as DFA's)
from .stages import untimed

DESCRIPTION = "direct Kolen-Pollack: DFA whose feedback matrices learn as direct connections (Webster et al. 2021)"


def prepare(model, config) -> None:
    model.dkp = attach_direct_feedback(model, learned=True)


def kolen_pollack_gradient(error: Tensor, h: Tensor) -> Tensor:
    """dB_l = e^T h_l (C x d_l): the gradient a direct connection h_l -> logits would receive."""
    return error.T @ h.flatten(1).float()


def _accumulate(parameter: Tensor, gradient: Tensor) -> None:
    # as autograd would: add to a gradient already there (set_to_none=False, or accumulation)
    parameter.grad = gradient if parameter.grad is None else parameter.grad + gradient


def step(model, images, labels, config, autocast, clock=untimed):
    """DFA's gradients with the current B_l, and B_l's Kolen-Pollack gradient; returns the loss."""
    feedback = model.dkp
    loss, error, outputs = direct_feedback_step(model, feedback, images, labels, config, autocast, clock)
    with clock("feedback_update"), torch.no_grad():
        for matrix, h in zip(feedback.matrices(), outputs):
            _accumulate(matrix, kolen_pollack_gradient(error, h))
    return loss
