"""Forward-Forward (Hinton 2022): every block trained alone to tell a right label from a wrong one.

The label is written into the input: the first C values of each flattened sample are replaced by a
one-hot code c, as bright as the sample's brightest value,

    embed(x, c) = [s(x) c_1, ..., s(x) c_C, x_{C+1}, ..., x_D],   s(x) = max_j |x_j|     (``embed_label``)

A positive input carries the true label y, a negative one a wrong label y'. Block l reads the
previous block's output, normalised and detached, so no gradient crosses from one block to another,

    h_1 = block_1(embed(x, c)),   h_l = block_l(n(h_{l-1})) for l = 2..L,
    n(h) = h / sqrt(mean_j h_j^2 + eps)                                                  (``normalise``)

and its goodness is the sum or the mean of its squared outputs (all of them: a convolutional
block's channels x height x width),

    g_l = sum_j h_{l,j}^2   or   (1/D_l) sum_j h_{l,j}^2                                  (``goodness``)

Each block minimises, on its own graph, freed as soon as the loss is backpropagated (so memory does
not grow with depth), the logistic loss of "is this input positive?" with p = sigmoid(g - theta):

    L_l = mean over the batch of  softplus(theta_l - g_l(x, y)) + softplus(g_l(x, y') - theta_l)   (``ff_loss``)

The SID paper's FF baseline is described as a margin-based loss on sum-of-squares activity; this is
the same objective with the hinge max(0, .) smoothed into softplus (Hinton's own loss), around a
fixed threshold rather than a margin between the positive and the negative goodness.

Prediction (``--ff-predict``):
  * ``goodness`` (the default): embed every candidate label c in turn, run all blocks, and return the
    N x C matrix G[n, c] = sum over all blocks l of g_l(x_n, c) as logits (``summed_goodness``);
    argmax G is the prediction.
  * ``readout``: the model's own head (``model.reduce()`` then its Linear) reads the normalised,
    detached output of the last block for the input with a neutral label (1/C in each label slot,
    times s(x)) and is trained in the same step by cross-entropy, logits = head(n(h_L(x, neutral)))
    (``readout_logits``); it predicts by those logits.

Open choices, what we picked, and why:
  * ``--ff-threshold`` is read per unit: theta_l = threshold for the mean goodness, and
    theta_l = threshold * D_l for the sum (D_l: the block's number of outputs). The two readings then
    put the boundary at the same mean square activity and differ only in the loss's sharpness (the
    sum's logit is D_l times the mean's). The default 2 is the mean-goodness threshold of the common
    PyTorch reproduction; Löwe's reproduction of Hinton's code uses the sum with theta = D_l, which is
    ``--ff-threshold 1`` here.
  * Normalisation: n(h) has root mean square 1 (length sqrt(D)), as in Löwe's reproduction, rather
    than unit length (the common PyTorch reproduction): a freshly initialised next block then sees inputs of the
    scale it was initialised for. Only the direction of the activity reaches the next block, so it
    cannot pass the previous block's goodness on. The input itself is not normalised: the dataset
    pipeline already standardises it.
  * The label's strength s(x) = max |x| (per sample, detached): the label is as visible as the
    brightest pixel whatever the dataset's scale, as in the common reproduction (which takes the
    batch's max; per sample keeps a sample's input independent of its batch). Löwe's code writes 1
    into the label slots; on standardised images max |x| is about 2 to 3. A stronger label speeds
    the start (the label's first-layer weights grow by at most lr per Adam step): 5 instead of
    max |x| gave 55% instead of 46% after 3 epochs of 2,000 samples, 1 gave 42%.
  * Negatives: ``other`` draws a wrong label uniformly from the C - 1 others (Hinton, Löwe).
    ``permute`` permutes the batch's labels; about 1/C of these "negatives" then carry the true label
    and are pushed down while their positive twins are pushed up (the common reproduction's
    pitfall, kept as the option's honest behaviour).
  * Goodness prediction sums every block, the first included. Hinton leaves the first hidden layer
    out (it reads the label slots directly); we measured the two on mlp-2x800 / Fashion-MNIST: the
    second block lags the first by epochs (after a short run its goodness even ranks the labels
    worse than chance) and the first is the best single predictor throughout, so leaving it out cost
    30 to 50 points after one epoch of 2,000 samples and 2 points after 8 full epochs (81.2% against
    83.6%). ``summed_goodness`` is the one place to change it.
  * The read-out reads the last block only (the paper's softmax reads the last three hidden layers),
    so that it is exactly the model's own head; its cross-entropy uses ``--label-smoothing``.
  * Positive and negative inputs go through a block as one batch of 2N (one forward; batch norm
    sees both). The read-out's neutral pass is a third, gradient-free pass in training mode.

Two readings are common: (a) Hinton's and Löwe's, the sum of squares against theta = D_l and a
linear read-out on neutral-label activities, and (b) the common PyTorch reproduction's, the mean of
squares against theta = 2 and prediction by summed goodness. The defaults (``--ff-goodness mean``,
``--ff-threshold 2``, ``--ff-predict goodness``) take (b)'s goodness, threshold and prediction; ``--ff-goodness sum --ff-threshold 1
--ff-predict readout`` gives (a). With a per-unit threshold the sum
and the mean share their boundary, and in our runs they end level (83.6% and 82.2% after 8 epochs of
mlp-2x800 on Fashion-MNIST); the mean learns faster at the start.

On a convolutional network the label occupies the first C pixels of the first row, so it reaches
only the outputs whose receptive field covers that corner: the first blocks' goodness hardly
depends on it, and FF with this embedding learns slowly there (22% after one epoch of 1,000
samples on sll-cnn-fmnist, against 44% for mlp-2x800 on 2,000).

The loss a step returns (the run's ``train_loss``) is the sum of the blocks' losses (and of the
read-out's cross-entropy), so it is not comparable with BP's cross-entropy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import DATASETS
from .stages import untimed

HEADS = ("linear",)  # FF trains a network's blocks (and, for the read-out, its head), not a cascade
DESCRIPTION = "Forward-Forward: each block alone tells the true label in its input from a wrong one by its goodness"
EPS = 1e-8


@dataclass(frozen=True)
class FFOptions:
    """FF's options, from the ``--ff-*`` flags; ``prepare`` attaches them to the model as ``model.ff``
    so that ``predict`` (which gets no config) can read them."""
    threshold: float  # per unit (see the module's docstring)
    goodness: str     # "sum" or "mean"
    predict: str      # "goodness" or "readout"
    negatives: str    # "other" or "permute"

    @classmethod
    def from_config(cls, config) -> "FFOptions":
        return cls(config.ff_threshold, config.ff_goodness, config.ff_predict, config.ff_negatives)


def check(config) -> None:
    info = DATASETS[config.dataset]
    values = math.prod(info.input_shape)
    if values <= info.num_classes:
        raise ValueError(f"--method ff writes the label into the first {info.num_classes} input values, but "
                         f"--dataset {config.dataset} has only {values}; use a dataset with larger inputs")
    if not config.ff_threshold > 0:
        raise ValueError(f"--ff-threshold must be positive, got {config.ff_threshold}; "
                         f"2 is the usual mean-square threshold")


def prepare(model, config) -> None:
    """Attach the options as ``model.ff``; FF adds no parameters or buffers (the read-out is the
    model's own head)."""
    model.ff = FFOptions.from_config(config)


# ---- the formulas ----------------------------------------------------------------------------------

def label_strength(images: Tensor) -> Tensor:
    """s(x) = max_j |x_j| per sample, shape (N, 1), detached."""
    return images.detach().flatten(1).abs().amax(1, keepdim=True)


def embed_label(images: Tensor, codes: Tensor) -> Tensor:
    """The images with their first C flattened values replaced by s(x) * codes (codes: N x C, one-hot
    or neutral); the other values are left as they are, and so is the memory format."""
    flat = images.flatten(1)
    num_classes = codes.shape[1]
    embedded = torch.cat([codes.to(flat.dtype) * label_strength(images), flat[:, num_classes:]], 1)
    embedded = embedded.view(images.shape)
    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
        embedded = embedded.contiguous(memory_format=torch.channels_last)
    return embedded


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    return F.one_hot(labels, num_classes).float()


def neutral_codes(images: Tensor, num_classes: int) -> Tensor:
    """1/C in each label slot: the label of an input whose class is not given."""
    return images.new_full((images.shape[0], num_classes), 1.0 / num_classes, dtype=torch.float32)


def negative_labels(labels: Tensor, num_classes: int, rule: str = "other") -> Tensor:
    """``other``: y' uniform over the C - 1 wrong classes (y + k mod C, k uniform in 1..C-1);
    ``permute``: the batch's labels in a random order (about 1/C of them are then the true label)."""
    if rule == "other":
        return (labels + torch.randint_like(labels, 1, num_classes)) % num_classes
    if rule == "permute":
        return labels[torch.randperm(len(labels), device=labels.device)]
    raise ValueError(f"unknown negatives rule {rule!r}")


def normalise(h: Tensor) -> Tensor:
    """n(h) = h / sqrt(mean_j h_j^2 + eps) over all of a sample's values, in float32: root mean square 1."""
    h = h.float()
    mean_square = h.flatten(1).square().mean(1)
    return h * torch.rsqrt(mean_square + EPS).view(-1, *([1] * (h.dim() - 1)))


def goodness(h: Tensor, reading: str = "sum") -> Tensor:
    """g = sum_j h_j^2 (``sum``) or mean_j h_j^2 (``mean``) over all of a sample's values, in float32."""
    squares = h.float().flatten(1).square()
    return squares.sum(1) if reading == "sum" else squares.mean(1)


def threshold(h: Tensor, reading: str, per_unit: float) -> float:
    """theta: ``per_unit`` for the mean goodness, ``per_unit`` times the number of outputs for the sum."""
    return per_unit * h[0].numel() if reading == "sum" else per_unit


def ff_loss(positive_goodness: Tensor, negative_goodness: Tensor, theta: float) -> Tensor:
    """mean over the batch of softplus(theta - g_pos) + softplus(g_neg - theta)."""
    return (F.softplus(theta - positive_goodness) + F.softplus(negative_goodness - theta)).mean()


def block_goodness(model, x: Tensor) -> list[Tensor]:
    """g_l of every block for the (already embedded) input x, each block reading n(h_{l-1})."""
    reading, out = model.ff.goodness, []
    for i, block in enumerate(model.blocks):
        h = block(x if i == 0 else normalise(x))
        out.append(goodness(h, reading))
        x = h
    return out


def summed_goodness(model, images: Tensor) -> Tensor:
    """G[n, c] = sum over the blocks of g_l(embed(x_n, c)), an N x C matrix."""
    num_classes, columns = model.num_classes, []
    for c in range(num_classes):
        candidates = torch.full((images.shape[0],), c, dtype=torch.long, device=images.device)
        per_block = block_goodness(model, embed_label(images, one_hot(candidates, num_classes)))
        columns.append(torch.stack(per_block).sum(0))  # all blocks; Hinton leaves out the first
    return torch.stack(columns, 1)


def neutral_features(model, images: Tensor) -> Tensor:
    """n(h_L(embed(x, neutral))): the last block's normalised output for the neutral label."""
    x = embed_label(images, neutral_codes(images, model.num_classes))
    for i, block in enumerate(model.blocks):
        x = block(x if i == 0 else normalise(x))
    return normalise(x)


def readout_logits(model, features: Tensor) -> Tensor:
    """The model's own head (its reduction, then its Linear) on the normalised activity."""
    return model.head(features)


# ---- training and prediction ------------------------------------------------------------------------

def step(model, images, labels, config, autocast, clock=untimed):
    """Each block's FF loss on positives and negatives, backpropagated at once on its own graph; then,
    for the read-out, the head's cross-entropy on detached neutral features. Returns their sum."""
    options: FFOptions = model.ff
    num_classes = model.num_classes
    with clock("embed"):
        wrong = negative_labels(labels, num_classes, options.negatives)
        x = torch.cat([embed_label(images, one_hot(labels, num_classes)),
                       embed_label(images, one_hot(wrong, num_classes))])
    losses = []
    for i, block in enumerate(model.blocks):
        with clock("unit_forward", i):
            with autocast():
                h = block(x)
            positive, negative = goodness(h, options.goodness).chunk(2)
            loss = ff_loss(positive, negative, threshold(h, options.goodness, options.threshold))
        with clock("unit_backward", i):
            loss.backward()  # frees this block's graph before the next block runs
        losses.append(loss.detach())
        x = normalise(h.detach())  # only the direction goes on, and no gradient
    if options.predict == "readout":
        with clock("neutral_forward"):
            with torch.no_grad(), autocast():
                features = neutral_features(model, images)
        with clock("head_forward"):
            with autocast():
                logits = readout_logits(model, features)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        with clock("head_backward"):
            loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses).sum()


def predict(model, images: Tensor) -> Tensor:
    """N x C logits: the summed goodness of each candidate label, or the read-out's logits."""
    if model.ff.predict == "readout":
        return readout_logits(model, neutral_features(model, images))
    return summed_goodness(model, images)
