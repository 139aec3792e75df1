"""The structure every feed-forward model in sidlib shares: blocks in order, then a classifier head.

    h_0 = x,   h_l = block_l(h_{l-1}) for l = 1..n,   logits = head(h_n)

``blocks`` are the units a layer-local method trains one by one (SLL's layers, FA's layers, the
units of SLL+); ``head`` is the reduction to a feature vector (pooling, flattening, a class token)
followed by one ``nn.Linear``. ``features(x)`` is the input of that last linear layer, the vector
a belief cascade reads when SID is put on this network as a backbone (``sidlib.models.cascade``).
"""
from __future__ import annotations

from torch import Tensor, nn


class LayeredNetwork(nn.Module):
    def __init__(self, blocks: list[nn.Module], head: nn.Sequential, input_shape: tuple[int, ...],
                 num_classes: int):
        super().__init__()
        if not isinstance(head[-1], nn.Linear):
            raise TypeError("a head must end with its classifier, an nn.Linear")
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    @property
    def feature_dim(self) -> int:
        """Width of the vector the classifier reads."""
        return self.head[-1].in_features

    def reduce(self) -> nn.Sequential:
        """The head without its classifier: the last block's output -> the feature vector."""
        return self.head[:-1]

    def features(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.reduce()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head[-1](self.features(x))


def spatial_size_after(size: int, pools: int) -> int:
    """Side length after ``pools`` 2x2 max-poolings of stride 2, rounding down as PyTorch does."""
    return size // 2 ** pools


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``input_shape`` as (channels, height, width), or a ValueError naming the model."""
    if len(input_shape) != 3:
        raise ValueError(f"{name} takes images (channels, height, width), not input of shape {tuple(input_shape)}; "
                         f"use mlp-2x800 or simplecnn for 1-D signals")
    return tuple(input_shape)
