"""The SID paper's SimpleCNN (its Table 2): a shared convolutional extractor and L belief-refinement
modules (``sidlib.models.cascade``).

    h   = g_phi(x)                                   shared features, 128 numbers
    p_0 = uniform over C classes
    p_i = softmax(f_i(concat(p_{i-1}, h)))           f_i: Linear(C+128, 256) - ReLU - Linear(256, C)

Inference is one ordinary forward pass; the prediction is argmax p_L. Convolutions use
padding 1 as in the authors' code. Inputs may be images (channels, height, width) or 1-D
signals (channels, length), e.g. MNIST-1D, for which the same layers are built in 1-D.
"""
from __future__ import annotations

from torch import nn

from .cascade import BeliefCascade

FEATURE_DIM = 128


def make_extractor(input_shape: tuple[int, ...]) -> nn.Sequential:
    """Conv(in,32)-ReLU, Conv(32,64)-ReLU-MaxPool2, Conv(64,128)-ReLU, Conv(128,128)-ReLU-MaxPool2,
    global average pool, Linear(128, 128). Works for any spatial size >= 1 (pools round up)."""
    spatial_dims = len(input_shape) - 1
    if spatial_dims not in (1, 2):
        raise ValueError(f"input shape must be (channels, length) or (channels, height, width), got {input_shape}")
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
    pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool1d
    global_pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool1d
    channels = input_shape[0]
    # Max-pooling before ReLU computes exactly relu-then-pool (ReLU is monotone, so it commutes
    # with max), values and gradients alike, with a quarter of the ReLU work.
    return nn.Sequential(
        conv(channels, 32, 3, padding=1), nn.ReLU(inplace=True),
        conv(32, 64, 3, padding=1), pool(2, ceil_mode=True), nn.ReLU(inplace=True),
        conv(64, 128, 3, padding=1), nn.ReLU(inplace=True),
        conv(128, 128, 3, padding=1), pool(2, ceil_mode=True), nn.ReLU(inplace=True),
        global_pool(1), nn.Flatten(),
        nn.Linear(128, FEATURE_DIM),
    )


class SimpleCNN(BeliefCascade):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int, belief_input: str = "softmax"):
        super().__init__(make_extractor(tuple(input_shape)), FEATURE_DIM, input_shape, num_classes, depth, belief_input)
