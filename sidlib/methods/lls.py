"""LLS (Apolinario, Roy & Roy, WACV 2025): each block trained alone against fixed periodic class projections.

"Local Learning rule inspired by neural activity Synchronization": block l reads its parent's output
detached, so no gradient crosses from one block to another, and its output h_l is scored against C
fixed basis vectors, one per class, that are never trained. The block's activity is reduced to a
vector (a feature map is average-pooled to a small grid, a vector is kept as it is), normalised to
unit length, and read by the basis B_l (C x d_l):

    s_l = pool(h_l).flatten() / ||pool(h_l).flatten()||                           (``activity_vector``)
    z_l = B_l s_l / temperature                                                    (``lls_logits``)
    L_l = CE(softmax(z_l), y)                                                      (``local_loss``)

The periodic basis gives class k a sinusoid of its own frequency over the d_l coordinates,

    B[k, j] = sin(f_k j),   f_k = f_min + k (f_max - f_min) / (C - 1),   j = 0 .. d_l - 1    (``periodic_basis``)

with f_min = 50 and f_max = 512 (radians per coordinate, so the sinusoids are aliased; what matters
is that each class has its own, nearly orthogonal pattern). ``--lls-projection random`` replaces it
by a Gaussian matrix of the same shape and the same mean square entry, 1/2 (``random_basis``), as an
ablation of the periodic structure. The model's head (its reduction, e.g. a Flatten, and its Linear
classifier) is trained by cross-entropy on the last block's detached output. Each block's loss is
backpropagated as soon as it is computed, freeing its graph, so the memory a step needs does not
grow with depth. The loss a step returns (the run's ``train_loss``) is the sum of every block's
local loss and the head's, as for SLL: not comparable with BP's cross-entropy.

What we took from the authors' code (github.com/mapolinario94/LLS-DNN), where the paper is not
explicit, and what we picked where our models differ:
  * The basis is sin(f_k j) with frequencies linearly spaced in [50, 512] (their "cosine" waveform;
    their "square" waveform is its sign, not an option here). We compute the phases f_k j in float64:
    their float32 products are off by up to ~0.03 rad at j ~ 2000, so our basis is the formula's, not
    a bit-for-bit copy of theirs.
  * The reduction: a convolutional block's output is adaptive-average-pooled to 4 x 4 for the first
    block and 2 x 2 for every later one (their per-layer ``pooling_size``), never above the map's own
    size (a 1 x 1 map stays 1 x 1); a fully connected block's output is used whole. Their loss reads
    the convolution's output before the max-pooling that follows it; in our CNNs that pooling is
    folded into the block, so we pool the block's (already max-pooled) output.
  * The activity vector is L2-normalised before the projection, and the logits are divided by a
    temperature of 0.5 (their default; ``TEMPERATURE``, not an option).
  * The random ablation: their random variant draws 0.1 * N(0, 1) entries and skips the
    normalisation; ours changes only the basis (Gaussian entries of variance 1/2, the mean square of
    a sinusoid's), so the comparison isolates the periodic structure.
  * ``--label-smoothing`` applies to every local loss and to the head's, as their code allows.
  * Transformers (token outputs) are not supported: the authors define the reduction for vectors and
    feature maps only (``check`` rejects the ViTs).
  * Their blocks are Conv (or Linear) - BatchNorm - LeakyReLU; ours are the models' own blocks.
The authors' scripts train with schedule-free AdamW, lr 5e-3, batch 128, 100 epochs (MNIST, F-MNIST,
CIFAR-10 with their SmallConv; 300 for VGG8 with augmentation), each layer with its own optimiser and
a reduce-on-plateau schedule. Schedule-free AdamW is not among ``--optimizer``'s choices; AdamW or
Adam is the closest (on our MLP, Adam at 1e-3 did better than at 5e-3 in a 1-epoch check).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .local import blockwise_step
from .stages import untimed

HEADS = ("linear",)  # trains a network's blocks and its classifier, not a belief cascade
DESCRIPTION = "each block trained alone against fixed periodic class projections of its pooled activity (LLS)"
PROJECTIONS = ("periodic", "random")
MIN_FREQUENCY, MAX_FREQUENCY = 50.0, 512.0
TEMPERATURE = 0.5
FIRST_POOL, LATER_POOL = 4, 2  # side of the average-pooled grid of a feature map: first block, later blocks


def check(config) -> None:
    """Raise ValueError naming the option that cannot work, and the fix."""
    if "vit" in config.model:
        raise ValueError(f"--method lls trains MLPs and CNNs (its reduction is for vectors and feature maps), "
                         f"not the transformer --model {config.model}; use e.g. mlp-2x800, sll-cnn-fmnist or deep-cnn")


def periodic_basis(num_classes: int, dim: int) -> Tensor:
    """B (C x d): B[k, j] = sin(f_k j), f_k linearly spaced from MIN_FREQUENCY to MAX_FREQUENCY."""
    frequencies = torch.linspace(MIN_FREQUENCY, MAX_FREQUENCY, num_classes, dtype=torch.float64)
    coordinates = torch.arange(dim, dtype=torch.float64)
    return torch.sin(frequencies[:, None] * coordinates[None, :]).float()  # float64 phases: exact for large j


def random_basis(num_classes: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """B (C x d) with i.i.d. N(0, 1/2) entries: the mean square entry of a sinusoid."""
    return torch.randn(num_classes, dim, generator=generator) * math.sqrt(0.5)


def pool_size(block_index: int) -> int:
    return FIRST_POOL if block_index == 0 else LATER_POOL


def activity_vector(h: Tensor, pool: int) -> Tensor:
    """s: a feature map (N, C, *spatial) average-pooled to at most ``pool`` per spatial side, or a
    vector (N, D) as it is; flattened and L2-normalised, in float32."""
    h = h.float()
    if h.dim() == 4:
        h = F.adaptive_avg_pool2d(h, (min(pool, h.shape[2]), min(pool, h.shape[3])))
    elif h.dim() == 3:
        h = F.adaptive_avg_pool1d(h, min(pool, h.shape[2]))
    return F.normalize(h.flatten(1), dim=1)


def lls_logits(vector: Tensor, basis: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """z = B s / temperature."""
    return vector @ basis.T / temperature


def local_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """The batch mean of CE(softmax(z), y)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


class ClassProjection(nn.Module):
    """A block's fixed basis B (a buffer: saved, moved, never trained) and its pooling: h -> z."""

    def __init__(self, basis: Tensor, pool: int):
        super().__init__()
        self.register_buffer("basis", basis)
        self.pool = pool

    def forward(self, h: Tensor) -> Tensor:
        # float32 whatever the autocast: a bf16 dot product over d ~ 1000 coordinates loses digits
        with torch.autocast(h.device.type, enabled=False):
            return lls_logits(activity_vector(h, self.pool), self.basis.float())

    def extra_repr(self) -> str:
        return f"classes={self.basis.shape[0]}, in_features={self.basis.shape[1]}, pool={self.pool}"


class Projections(nn.Module):
    """What ``prepare`` attaches as ``model.lls``: one ClassProjection per block."""

    def __init__(self, projections: list[ClassProjection], kind: str):
        super().__init__()
        self.projections = nn.ModuleList(projections)
        self.kind = kind


@torch.no_grad()
def _activity_dims(model) -> list[int]:
    """d_l of every block: the length of its activity vector, from a forward pass on 2 zero inputs."""
    was_training = model.training
    model.eval()  # batch norm on 2 samples; no dropout
    h, dims = torch.zeros(2, *model.input_shape, device=next(model.parameters()).device), []
    for i, block in enumerate(model.blocks):
        h = block(h)
        dims.append(activity_vector(h, pool_size(i)).shape[1])
    model.train(was_training)
    return dims


def prepare(model, config) -> None:
    """Attach ``model.lls``: each block's basis, periodic (deterministic) or random (sampled on the
    CPU from the global generator, so the run's seed fixes it whatever the device)."""
    if config.lls_projection not in PROJECTIONS:
        raise ValueError(f"unknown --lls-projection {config.lls_projection!r}; choose one of: {', '.join(PROJECTIONS)}")
    make = periodic_basis if config.lls_projection == "periodic" else random_basis
    projections = [ClassProjection(make(model.num_classes, dim), pool_size(i))
                   for i, dim in enumerate(_activity_dims(model))]
    model.lls = Projections(projections, config.lls_projection).to(next(model.parameters()).device)


def step(model, images, labels, config, autocast, clock=untimed):
    """Each block's local loss, backpropagated at once on its own graph (its input detached); then
    the head's cross-entropy on the last block's detached output. Returns their sum (detached)."""
    projections = model.lls.projections
    return blockwise_step(model, images, labels,
                          lambda i, h: local_loss(projections[i](h), labels, config.label_smoothing),
                          config.label_smoothing, autocast, clock)


@torch.no_grad()
def block_logits(model, images: Tensor) -> list[Tensor]:
    """z_l of every block, then the head's logits, in the current mode (for analysis: how well does
    each block's fixed projection already classify?)."""
    out, h = [], images
    for block, projection in zip(model.blocks, model.lls.projections):
        h = block(h)
        out.append(projection(h))
    out.append(model.head(h).float())
    return out
