"""SID's structure, on any backbone: a shared extractor g_phi and L belief-refinement modules.

    h   = g_phi(x)                                   shared features
    p_0 = uniform over C classes
    p_i = softmax(f_i(concat(p_{i-1}, h)))           f_i: Linear(C + d, 256) - ReLU - Linear(256, C)

Inference is one ordinary forward pass; the prediction is argmax p_L. Two variants the paper does
not have separate what this structure does to BP's gradients from what BP itself does (SID
Figure 4), through ``belief_input``:

    softmax   (the paper's)  z_i = f_i(concat(softmax(z_{i-1}), h)),  p_0 uniform
    logits                   z_i = f_i(concat(z_{i-1}, h)),           z_0 = 0: no softmax between modules
    residual                 z_i = z_{i-1} + f_i(concat(z_{i-1}, h)), z_0 = 0: an identity path as well

where z_i are module i's logits and p_i = softmax(z_i) its belief in every variant. ``blocks`` are the
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
BELIEF_INPUTS = ("softmax", "logits", "residual")  # what a module reads of the one before it, and adds to


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
                 depth: int, belief_input: str = "softmax"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if belief_input not in BELIEF_INPUTS:
            raise ValueError(f"unknown belief input {belief_input!r}; choose from {', '.join(BELIEF_INPUTS)}")
        self.belief_input = belief_input
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.extractor = extractor
        self.blocks = nn.ModuleList(RefinementModule(num_classes, feature_dim) for _ in range(depth))

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def uniform_belief(self, features: Tensor) -> Tensor:
        """p_0 as module 1 reads it, one row per sample: the uniform belief, or its logits (zeros)."""
        if self.belief_input != "softmax":
            return features.new_zeros((features.shape[0], self.num_classes))
        return features.new_full((features.shape[0], self.num_classes), 1.0 / self.num_classes)

    def module_input(self, logits: Tensor) -> Tensor:
        """What the next module reads of a module's logits: the belief softmax(logits), or the logits."""
        return torch.softmax(logits, dim=-1) if self.belief_input == "softmax" else logits  # classes: last axis

    def module_logits(self, index: int, belief: Tensor, features: Tensor) -> Tensor:
        """z_i of module ``index`` from what it reads of the module before (``module_input``) and h."""
        logits = self.blocks[index](belief, features)
        return belief + logits if self.belief_input == "residual" else logits

    def refine(self, features: Tensor) -> list[Tensor]:
        """Run the module cascade from p_0 and return every module's logits (differentiable end to end)."""
        belief = self.uniform_belief(features)
        all_logits = []
        for i in range(self.depth):
            logits = self.module_logits(i, belief, features)
            all_logits.append(logits)
            belief = self.module_input(logits)
        return all_logits

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the last module: the network's prediction."""
        return self.refine(self.extractor(x))[-1]


def cascade_on(backbone: LayeredNetwork, depth: int, belief_input: str = "softmax") -> BeliefCascade:
    """SID on a backbone: its blocks and head reduction as the shared extractor, then ``depth`` modules."""
    extractor = nn.Sequential(*backbone.blocks, *backbone.reduce())
    return BeliefCascade(extractor, backbone.feature_dim, backbone.input_shape, backbone.num_classes, depth,
                         belief_input)
