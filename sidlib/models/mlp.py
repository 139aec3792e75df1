"""Multilayer perceptrons (SLL Table 1): 2x800 for MNIST-like inputs, 3x1000 for CIFAR-like ones.

Each block is Linear - ReLU (- Dropout); the first one flattens its input, so any input shape
(channels, *spatial) works. The head is one Linear layer. SLL's appendix A.4.3 uses ReLU and
dropout but does not give the rate; ``dropout`` is 0 unless asked for.
"""
from __future__ import annotations

import math

from torch import nn

from .layered import LayeredNetwork


def mlp(input_shape: tuple[int, ...], num_classes: int, widths: list[int], dropout: float = 0.0) -> LayeredNetwork:
    if not widths:
        raise ValueError("an MLP needs at least one hidden layer")
    blocks, width_in = [], math.prod(input_shape)
    for i, width in enumerate(widths):
        layers = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(width_in, width), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        width_in = width
    head = nn.Sequential(nn.Linear(width_in, num_classes))
    return LayeredNetwork(blocks, head, input_shape, num_classes)


def mlp_2x800(input_shape, num_classes, dropout: float = 0.0, width: int = 800) -> LayeredNetwork:
    """SLL's MNIST MLP: two hidden layers of 800 units (``width`` changes them, for SLL's Figure 4c)."""
    return mlp(input_shape, num_classes, [width] * 2, dropout)


def mlp_3x1000(input_shape, num_classes, dropout: float = 0.0, width: int = 1000) -> LayeredNetwork:
    """SLL's CIFAR MLP: three hidden layers of 1000 units."""
    return mlp(input_shape, num_classes, [width] * 3, dropout)
