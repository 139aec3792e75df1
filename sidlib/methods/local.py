"""The step every layer-local method on blocks and a head shares (LLS, the HSIC bottleneck).

Block l reads its parent's output detached, computes its own loss and backpropagates it at once,
which frees its graph before the next block runs (so memory stays flat in depth); the head is
then trained by cross-entropy on the last block's detached output. A method supplies only its
block loss.
"""
import torch
import torch.nn.functional as F

from .stages import untimed


def blockwise_step(model, images, labels, block_loss, label_smoothing, autocast, clock=untimed):
    """``block_loss(i, h)``: block i's scalar loss from its output h. Returns the sum of every
    block's loss and the head's cross-entropy (detached)."""
    x, losses = images, []
    for i, block in enumerate(model.blocks):
        with clock("unit_forward", i):
            with autocast():
                h = block(x)
            loss = block_loss(i, h)
        with clock("unit_backward", i):
            loss.backward()  # frees this block's graph before the next block runs
        losses.append(loss.detach())
        x = h.detach()
    with clock("head_forward"):
        with autocast():
            logits = model.head(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    with clock("head_backward"):
        loss.backward()
    losses.append(loss.detach())
    return torch.stack(losses).sum()
