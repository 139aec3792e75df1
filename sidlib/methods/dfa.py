"""Direct feedback alignment (Nøkland 2016): the output error reaches every block directly, through
a fixed random matrix, instead of travelling back through the layers above.

A network of blocks h_l = block_l(h_{l-1}) (l = 1..n) and a head, logits = head(h_n), trained by
the mean cross-entropy L (with the run's label smoothing). With e = dL/dlogits (N x C, exact, from
autograd) and one fixed random B_l (C x d_l) per block, d_l the number of values in the block's
output per sample, a step

    head:       its true gradient, from L on the detached h_n                       (BP inside the head)
    block l:    dL/dh_l  :=  e B_l, reshaped as h_l                                  (``injected_gradient``)
                backpropagated inside block l only, from its detached input h_{l-1}

For a Linear-ReLU block h_l = relu(a_l), a_l = W_l h_{l-1} + b_l, this is Nøkland's rule
delta_l = (e B_l) ⊙ 1[a_l > 0] (his B_l^T e for column vectors), dW_l = delta_l^T h_{l-1},
db_l = sum over the batch of delta_l. For a convolutional block the injected error enters after its
pooling, batch norm and ReLU, and those backpropagate exactly inside the block.
No gradient crosses blocks: each block reads its input detached, so the step can update all blocks
in parallel once e is known (Nøkland's point), and the last block too receives e B_n, not e W_head.

Open choices, and what we picked:
* B_l's distribution: U(-1/sqrt(d_l), 1/sqrt(d_l)), PyTorch's default initialisation of the direct
  connection h_l -> logits that B_l stands in for (an nn.Linear(d_l, C)): at initialisation e B_l
  then has the scale that e W_head gives the last block in BP. The DKP authors' code uses
  kaiming_uniform (sqrt(6) times wider); Nøkland's own scale we could not check. Under Adam a factor
  on B_l changes nothing but Adam's epsilon (the block's gradients are linear in B_l).
* Where e enters: at the block's output, i.e. after the activation (and pooling), and flattened in
  the output's logical (C, H, W) order, whatever its memory format.
* The loss the step returns is the head's cross-entropy, as BP's.

A property worth knowing: each row of e sums to zero (softmax minus a target distribution), so adding
the same vector to every row of B_l (B_l + 1 c^T) changes nothing; only B_l's class contrasts matter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stages import untimed

HEADS = ("linear",)  # DFA trains a network's blocks and its classifier head, not a belief cascade
DESCRIPTION = "direct feedback alignment: the output error sent to each block by a fixed random matrix (Nøkland 2016)"


def random_direct_feedback(num_classes: int, width: int) -> Tensor:
    """B (C x d), entries U(-1/sqrt(d), 1/sqrt(d)): nn.Linear(d, C)'s default weight distribution."""
    bound = 1.0 / width ** 0.5
    return torch.empty(num_classes, width).uniform_(-bound, bound)


class DirectFeedback(nn.Module):
    """What ``prepare`` attaches as ``model.dfa`` (or ``model.dkp``): B_l (C x d_l) for each block, as
    buffers (DFA: fixed, saved and moved with the model) or as Parameters (DKP: trained by the run's
    optimiser from the gradient its step writes)."""

    def __init__(self, num_classes: int, block_widths: list[int], learned: bool = False):
        super().__init__()
        self.depth = len(block_widths)
        for i, width in enumerate(block_widths):
            matrix = random_direct_feedback(num_classes, width)
            if learned:
                self.register_parameter(f"feedback_{i}", nn.Parameter(matrix))
            else:
                self.register_buffer(f"feedback_{i}", matrix)

    def matrices(self) -> list[Tensor]:
        return [getattr(self, f"feedback_{i}") for i in range(self.depth)]


@torch.no_grad()
def block_output_widths(model) -> list[int]:
    """d_l: the values per sample in each block's output, from a forward pass of two zero inputs."""
    was_training = model.training
    model.eval()  # batch norm on 2 samples; no dropout
    h = torch.zeros(2, *model.input_shape, device=next(model.parameters()).device)
    widths = []
    for block in model.blocks:
        h = block(h)
        widths.append(h[0].numel())
    model.train(was_training)
    return widths


def attach_direct_feedback(model, learned: bool) -> DirectFeedback:
    """B_l for every block, drawn on the CPU from the global generator (the run's seed fixes them
    whatever the device), then moved to the model's device."""
    feedback = DirectFeedback(model.num_classes, block_output_widths(model), learned)
    return feedback.to(next(model.parameters()).device)


def prepare(model, config) -> None:
    model.dfa = attach_direct_feedback(model, learned=False)


def injected_gradient(error: Tensor, feedback: Tensor, h: Tensor) -> Tensor:
    """dL/dh_l := e B_l, in h_l's shape, dtype and memory format (computed in float32). B_l is detached:
    under DKP it is a parameter, whose gradient is set by the Kolen-Pollack rule, not through this."""
    grad = (error @ feedback.detach().float()).view(h.shape).to(h.dtype)
    if h.dim() == 4 and not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last):
        grad = grad.contiguous(memory_format=torch.channels_last)  # as h, so the conv's backward needs no conversion
    return grad


def direct_feedback_step(model, feedback: DirectFeedback, images, labels, config, autocast, clock=untimed):
    """One DFA step with the given B_l. Returns the (detached) loss, the output error e (float32) and
    the blocks' outputs (detached), which DKP's feedback update reads."""
    x, outputs = images, []
    for i, block in enumerate(model.blocks):
        with clock("unit_forward", i), autocast():
            h = block(x)
        outputs.append(h)
        x = h.detach()  # no gradient crosses from one block to the one below
    with clock("head_forward"):
        with autocast():
            logits = model.head(x)
        logits = logits.float()
        logits.retain_grad()  # e = dL/dlogits, exactly, from the same backward that trains the head
        loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    with clock("head_backward"):
        loss.backward()
    error, matrices = logits.grad, feedback.matrices()
    for i in reversed(range(len(outputs))):
        with clock("unit_backward", i):
            h = outputs[i]
            if h.requires_grad:  # a block without parameters on a detached input has nothing to train
                h.backward(injected_gradient(error, matrices[i], h))
    return loss.detach(), error, [h.detach() for h in outputs]


def step(model, images, labels, config, autocast, clock=untimed):
    """Leave DFA's gradients in the blocks and the head; return the cross-entropy (detached)."""
    return direct_feedback_step(model, model.dfa, images, labels, config, autocast, clock)[0]
