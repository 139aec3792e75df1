"""Backpropagation: the whole network trained end to end by cross-entropy on the last module's logits.

Gradients flow from the output through every module's softmax into the shared extractor,
as in the SID paper's BP baseline.
"""
import torch.nn.functional as F


def step(model, images, labels, config, autocast):
    """Compute the gradients of one minibatch; return the (detached) loss."""
    with autocast():
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    loss.backward()
    return loss.detach()
