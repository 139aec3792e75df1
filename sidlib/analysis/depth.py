"""What each refinement module of a belief cascade learns from, by depth (SID Figure 4).

The SID paper reports that BP degrades past 8 modules on its SimpleCNN while SID keeps improving.
In that network every module's output passes through a softmax before the next module reads it,
and the softmax's Jacobian, diag(p) - p p^T, shrinks as beliefs sharpen, so BP's gradient can
shrink by a factor at every module on its way back from the output. ``module_gradient_norms``
measures that, through a method's own step: the norm of each module's hidden-layer weight
gradient after one step on one batch. ``--belief-input logits`` (no softmax between modules) and
``residual`` (an identity path as well) are the controls that tell the cascade from BP itself.
"""
from __future__ import annotations

import contextlib

import torch

from ..methods import METHODS
from ..models import BeliefCascade


def module_gradient_norms(model: BeliefCascade, images: torch.Tensor, labels: torch.Tensor, config,
                          autocast=contextlib.nullcontext) -> list[float]:
    """The Frobenius norm of each module's first-layer weight gradient (module 1 to L) after one step
    of ``config.method`` on this batch; the model's earlier gradients are discarded first."""
    if not isinstance(model, BeliefCascade):
        raise ValueError("module gradient norms need a belief cascade (--head cascade)")
    model.zero_grad(set_to_none=True)
    METHODS[config.method].step(model, images, labels, config, autocast)
    norms = [0.0 if block.hidden.weight.grad is None else block.hidden.weight.grad.norm().item()
             for block in model.blocks]
    model.zero_grad(set_to_none=True)
    return norms
