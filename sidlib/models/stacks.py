"""Networks whose depth is a parameter: memory against depth (SLL Figure 2) for an MLP, a CNN and a ViT.

``--depth`` is their number of blocks (for the other models it is the number of SID refinement
modules of a cascade head). The SLL paper does not give the widths of its Figure 2 networks; these
repeat the blocks of its Table 1-3 models:

* ``deep-mlp``: ``depth`` hidden layers of 800 units (the width of SLL's MNIST MLP);
* ``deep-cnn``: SLL's VGG-style F-MNIST CNN, Conv64-MaxPool-Conv128-MaxPool, then Conv256 layers
  at the resolution reached (7x7 for 28x28 inputs) until there are ``depth`` convolutions;
* ``deep-vit``: SLL's ViT blocks (width 384, 12 heads, MLP ratio 2), ``depth`` of them, patch 4.
"""
from __future__ import annotations

from .layered import LayeredNetwork
from .mlp import mlp
from .vgg import sll_cnn
from .vit import vit


def deep_mlp(input_shape, num_classes, depth: int, width: int = 800) -> LayeredNetwork:
    return mlp(input_shape, num_classes, [width] * depth)


def deep_cnn(input_shape, num_classes, depth: int) -> LayeredNetwork:
    layers = (["Conv64k3-MaxPool2", "Conv128k3-MaxPool2"] + ["Conv256k3"] * max(0, depth - 2))[:depth]
    return sll_cnn(input_shape, num_classes, spec="-".join(layers + [f"FC{num_classes}"]), name="deep-cnn")


def deep_vit(input_shape, num_classes, depth: int) -> LayeredNetwork:
    return vit(input_shape, num_classes, width=384, layers=depth, heads=12, mlp_dim=768, name="deep-vit")
