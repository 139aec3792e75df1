"""SID's structure, on any backbone: a shared extractor g_phi and L belief-refinement modules.

    h   = g_phi(x)                                   shared features
    p_0 = uniform over C classes
    p_i = softmax(f_i(concat(p_{i-1}, h)))           f_i: Linear(C + d, 256) - ReLU - Linear(256, C)

Inference is one ordinary forward pass; the prediction is argmax p_L. ``blocks`` are the
refinement modules (the units SID trains locally); there is no other head.

The SID paper's SimpleCNN is this structure with a small convolutional extractor
(``sidlib.models.simplecnn``). For VGG-11, ResNet-18 and ViT-Tiny the paper says only that it used
"standard, off-the-shelf implementations". We read that as the SimpleCNN's design with the
backbone in the extractor's place (``cascade_on``): the backbone's blocks and the reduction of its
head (pooling, flattening, or the class token) give h, of the backbone's feature width d, and its
classifier is replaced by the L modules. The other reading, cutting the backbone itself into
modules, would need a belief head on every stage; it is not implemented (see the book's models page).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .layered import LayeredNetwork

HIDDEN_DIM = 256


class RefinementModule(nn.Module):
    """f_i: maps the previous belief and the shared features to the logits of the next belief."""

    def __init__(self, num_classes: int, feature_dim: int, hidden_dim: int = HIDDEN_DIM):
        super().__init__()
        self.hidden = nn.Linear(num_classes + feature_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, num_classes)

    def forward(self, belief: Tensor, features: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(torch.cat([belief, features], dim=1))))


class BeliefCascade(nn.Module):
    def __init__(self, extractor: nn.Module, feature_dim: int, input_shape: tuple[int, ...], num_classes: int,
                 depth: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.extractor = extractor
        self.blocks = nn.ModuleList(RefinementModule(num_classes, feature_dim) for _ in range(depth))

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def uniform_belief(self, features: Tensor) -> Tensor:
        """p_0: the uniform belief, one row per sample."""
        return features.new_full((features.shape[0], self.num_classes), 1.0 / self.num_classes)

    def refine(self, features: Tensor) -> list[Tensor]:
        """Run the module cascade from p_0 and return every module's logits (differentiable end to end)."""
        belief = self.uniform_belief(features)
        all_logits = []
        for block in self.blocks:
            logits = block(belief, features)
            all_logits.append(logits)
            belief = torch.softmax(logits, dim=1)
        return all_logits

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the last module: the network's prediction."""
        return self.refine(self.extractor(x))[-1]


def cascade_on(backbone: LayeredNetwork, depth: int) -> BeliefCascade:
    """SID on a backbone: its blocks and head reduction as the shared extractor, then ``depth`` modules."""
    extractor = nn.Sequential(*backbone.blocks, *backbone.reduce())
    return BeliefCascade(extractor, backbone.feature_dim, backbone.input_shape, backbone.num_classes, depth)
