"""Models by name, as torchvision.models keeps them: one file per family, builder functions, a registry.

Every model takes the input shape ``(channels, *spatial)`` and the number of classes, and is one of
two structures:

* ``LayeredNetwork`` (``layered.py``): ``blocks`` in order, then a classifier ``head``. The
  backbones below have this structure (their "linear" head).
* ``BeliefCascade`` (``cascade.py``): SID's shared ``extractor`` and L refinement modules as
  ``blocks``. The SimpleCNN is one; ``--head cascade`` puts one on any backbone.

``build_model(name, input_shape, num_classes, depth, head)`` builds either. ``depth`` is the number
of refinement modules of a cascade, or the number of blocks of a stack (``stacks.py``: ``deep-*``).
"""
from __future__ import annotations

from functools import partial

from .cascade import BELIEF_INPUTS, BeliefCascade, cascade_on
from .layered import LayeredNetwork
from .mlp import mlp_2x800, mlp_3x1000
from .resnet import resnet18
from .simplecnn import SimpleCNN
from .stacks import deep_cnn, deep_mlp, deep_vit
from .vgg import SLL_CNN_LAYERS, sll_cnn, vgg11
from .vit import sll_vit, vit_tiny

# name -> builder(input_shape, num_classes) of a LayeredNetwork
BACKBONES = {
    "mlp-2x800": mlp_2x800,
    "mlp-3x1000": mlp_3x1000,
    **{f"sll-cnn-{row}": partial(sll_cnn, spec=spec, name=f"sll-cnn-{row}") for row, spec in SLL_CNN_LAYERS.items()},
    "vgg11": vgg11,
    "resnet18": resnet18,
    "vit-tiny": vit_tiny,
    "sll-vit": sll_vit,
}
# name -> builder(input_shape, num_classes, depth) of a BeliefCascade
CASCADES = {"simplecnn": SimpleCNN}
# name -> builder(input_shape, num_classes, depth) of a LayeredNetwork of ``depth`` blocks
STACKS = {"deep-mlp": deep_mlp, "deep-cnn": deep_cnn, "deep-vit": deep_vit}
MODELS = {**CASCADES, **BACKBONES, **STACKS}
HEADS = ("linear", "cascade")


def default_head(name: str) -> str:
    return "cascade" if name in CASCADES else "linear"


# models whose hidden width is an option (``width``: every hidden layer's number of units)
WIDTH_MODELS = ("mlp-2x800", "mlp-3x1000", "deep-mlp")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, depth: int = 10,
                head: str | None = None, width: int | None = None,
                belief_input: str = "softmax") -> LayeredNetwork | BeliefCascade:
    """Model ``name`` with its classifier head (``linear``) or with SID's ``depth`` refinement
    modules on its features (``cascade``); ``head=None`` is the model's own (cascade for the SimpleCNN).
    ``width`` replaces the hidden width of an MLP (``WIDTH_MODELS``); ``belief_input`` is what a
    cascade's modules pass on (``BELIEF_INPUTS``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if width is not None:
        if name not in WIDTH_MODELS:
            raise ValueError(f"a width can be set for {', '.join(WIDTH_MODELS)} only, not {name}; drop --width")
        if width < 1:
            raise ValueError(f"the width must be at least 1, got {width}")
    head = head or default_head(name)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
    if head != "cascade" and belief_input != "softmax":
        raise ValueError(f"a belief input sets what a cascade's modules pass on, and {name} with a linear head has "
                         f"none; drop --belief-input or add --head cascade")
    if name in CASCADES:
        if head != "cascade":
            raise ValueError(f"{name} is a belief cascade by construction (SID Table 2); it has no linear head")
        return CASCADES[name](input_shape, num_classes, depth, belief_input)
    if name in STACKS:
        if head != "linear":
            raise ValueError(f"{name} takes --depth as its number of blocks; it has no cascade head")
        return STACKS[name](tuple(input_shape), num_classes, depth, **({"width": width} if width else {}))
    backbone = BACKBONES[name](tuple(input_shape), num_classes, **({"width": width} if width else {}))
    return backbone if head == "linear" else cascade_on(backbone, depth, belief_input)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def size_table(input_shape: tuple[int, ...], num_classes: int, depth: int) -> list[dict]:
    """Per model: its number of blocks (refinement modules for a cascade by construction) and its
    parameter counts with each head, None where it cannot take this input or has no such head.
    Built on the meta device: shapes and counts only, nothing allocated."""
    import torch

    rows = []
    for name in MODELS:
        row = {"model": name, "blocks": None, **{head: None for head in HEADS}}
        for head in HEADS:
            try:
                with torch.device("meta"):
                    model = build_model(name, input_shape, num_classes, depth, head)
            except ValueError:
                continue
            row[head] = parameter_count(model)
            if row["blocks"] is None:
                row["blocks"] = len(model.blocks)
        rows.append(row)
    return rows
