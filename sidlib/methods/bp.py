"""Backpropagation: the whole network trained end to end by cross-entropy on its output logits.

On a belief cascade, gradients flow from the last module through every module's softmax into the
shared extractor, as in the SID paper's BP baseline (or through what ``--belief-input`` passes
instead: the logits, or the logits with an identity path). That step is cut at the module boundaries so
each stage can be timed on its own (``sidlib.methods.stages``): each module reads a detached copy of
its input belief and of the features, and the backward hands each input's gradient to the module
before it. That is the chain rule autograd would apply, in the same order, and it leaves the same
gradients as one ``loss.backward()`` (tests/test_profiling.py checks it bit for bit).
"""
import torch
import torch.nn.functional as F

from ..models import BeliefCascade
from .stages import untimed

DESCRIPTION = "end-to-end backpropagation of the cross-entropy at the output"


def step(model, images, labels, config, autocast, clock=untimed):
    """Compute the gradients of one minibatch; return the (detached) loss."""
    if isinstance(model, BeliefCascade):
        return cascade_step(model, images, labels, config, autocast, clock)
    with clock("forward"):
        with autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    with clock("backward"):
        loss.backward()
    return loss.detach()


def cascade_step(model, images, labels, config, autocast, clock=untimed):
    """BP through a belief cascade, stage by stage: extractor, module 1..L forward, module L..1
    backward, extractor backward."""
    with clock("extractor_forward"), autocast():
        features = model.extractor(images)
    shared = features.detach().requires_grad_()
    belief = model.uniform_belief(shared)
    inputs, outputs = [], []
    for i in range(model.depth):
        with clock("module_forward", i):
            if i > 0:
                belief = belief.detach().requires_grad_()
            with autocast():
                logits = model.module_logits(i, belief, shared)
                output = model.module_input(logits) if i < model.depth - 1 else None
            if output is None:  # the last module's output is the loss
                output = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        inputs.append(belief)
        outputs.append(output)
        belief = output
    grad = None
    for i in reversed(range(model.depth)):
        with clock("module_backward", i):
            outputs[i].backward(grad)
            grad = inputs[i].grad if i > 0 else None
    with clock("extractor_backward"):
        features.backward(shared.grad)
    return outputs[-1].detach()
