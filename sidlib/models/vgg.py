"""VGG-style convolutional networks: VGG-11 (SID Table 3) and SLL's CNNs (SLL appendix Table A5).

Each block is one convolution (3x3, padding 1) - BatchNorm - ReLU, with the 2x2 max-pooling that
follows it in the architecture folded into the same block; the head flattens (after a global
average pool for VGG-11) and applies one Linear layer. Fully connected hidden layers, where an
architecture has them, are blocks too (Flatten - Linear - ReLU).

* ``vgg11``: torchvision's configuration "A" with batch norm (``torchvision.models.vgg.make_layers``),
  as the CIFAR versions of VGG (e.g. kuangliu/pytorch-cifar) use it: the 4096-wide classifier of the
  ImageNet model is replaced by Linear(512, classes) after the five poolings. Poolings round up
  (``ceil_mode``), so 28x28 inputs reach 1x1 as 32x32 ones do; on 32x32 nothing changes.
* ``sll_cnn``: the layer strings of SLL's Table A5, parsed as written. The paper does not say
  whether its convolutions use batch norm; we use it (``batch_norm=False`` drops it). Poolings
  round down, as PyTorch's default; the flattened size follows from the input.
"""
from __future__ import annotations

import math
import re

from torch import nn

from .layered import LayeredNetwork, image_shape, spatial_size_after

# SLL appendix Table A5, one row per dataset; the last FC's width is the number of classes.
SLL_CNN_LAYERS = {
    "fmnist": "Conv64k3-MaxPool2-Conv128k3-MaxPool2-Conv256k3-Conv256k3-MaxPool2-Conv512k3-MaxPool2-FC10",
    "cifar10": "Conv64k3-MaxPool2-Conv128k3-MaxPool2-Conv256k3-Conv256k3-MaxPool2-Conv512k3-MaxPool2-"
               "Conv512k3-Conv1024k3-FC10",
    "cifar100": "Conv256k3-MaxPool2-Conv512k3-MaxPool2-Conv512k3-Conv1024k3-MaxPool2-Conv1024k3-MaxPool2-"
                "Conv1024k3-Conv1024k3-FC2048-FC100",
    "tiny": "Conv64k3-MaxPool2-Conv128k3-MaxPool2-Conv256k3-Conv256k3-MaxPool2-Conv512k3-MaxPool2-"
            "Conv512k3-Conv1024k3-FC4096-FC200",
}
TOKEN = re.compile(r"Conv(\d+)k(\d+)|MaxPool2|FC(\d+)")


def parse_layers(spec: str) -> list[tuple[str, int]]:
    """'Conv64k3-MaxPool2-FC10' -> [('conv', 64), ('pool', 2), ('fc', 10)] (3x3 kernels only)."""
    layers = []
    for part in spec.split("-"):
        match = TOKEN.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"cannot read layer {part!r} in {spec!r}")
        if match.group(1):
            if match.group(2) != "3":
                raise ValueError(f"only 3x3 convolutions are supported, got {part!r}")
            layers.append(("conv", int(match.group(1))))
        elif match.group(3):
            layers.append(("fc", int(match.group(3))))
        else:
            layers.append(("pool", 2))
    return layers


def sll_cnn(input_shape: tuple[int, ...], num_classes: int, spec: str = SLL_CNN_LAYERS["fmnist"],
            batch_norm: bool = True, name: str = "sll-cnn") -> LayeredNetwork:
    """A CNN from a Table A5 layer string, for images (C, H, W) or 1-D signals (C, L)."""
    if len(input_shape) not in (2, 3):
        raise ValueError(f"{name} takes (channels, length) or (channels, height, width), got {tuple(input_shape)}")
    two_d = len(input_shape) == 3
    conv, norm, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
    layers = parse_layers(spec)
    if layers[-1][0] != "fc":
        raise ValueError(f"{spec!r} must end with its classifier, an FC layer")
    pools = sum(kind == "pool" for kind, _ in layers)
    spatial = [spatial_size_after(s, pools) for s in input_shape[1:]]
    if min(spatial) < 1:
        raise ValueError(f"{name}: input {tuple(input_shape)} is too small for {pools} poolings by 2")
    blocks, channels, flat_width = [], input_shape[0], None  # flat_width: set once the activations are vectors

    def fully_connected(width: int) -> list[nn.Module]:
        nonlocal flat_width
        flatten = [] if flat_width else [nn.Flatten()]  # the first FC layer flattens the feature maps
        layer = nn.Linear(flat_width or channels * math.prod(spatial), width)
        flat_width = width
        return flatten + [layer]

    for kind, width in layers[:-1]:
        if kind == "conv":
            block = [conv(channels, width, 3, padding=1)] + ([norm(width)] if batch_norm else []) + [nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*block))
            channels = width
        elif kind == "pool":
            blocks[-1].append(pool(2))
        else:
            blocks.append(nn.Sequential(*fully_connected(width), nn.ReLU(inplace=True)))
    head = nn.Sequential(*fully_connected(num_classes))
    return LayeredNetwork(blocks, head, input_shape, num_classes)


def _init_as_torchvision(module: nn.Module) -> None:
    # torchvision.models.VGG's initialisation, applied to the layers we keep.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)


def vgg11(input_shape: tuple[int, ...], num_classes: int, batch_norm: bool = True) -> LayeredNetwork:
    """VGG-11 for small images: torchvision's configuration "A", a global average pool, Linear(512, classes)."""
    channels, _, _ = image_shape("vgg11", input_shape)
    # imported here, when a model is built: importing torchvision loads torch._dynamo, about 2 s for every process
    from torchvision.models.vgg import cfgs, make_layers
    features = make_layers(cfgs["A"], batch_norm=batch_norm)
    features[0] = nn.Conv2d(channels, 64, 3, padding=1)
    blocks = []
    for layer in features:  # a convolution opens a block; its norm, ReLU and pooling join it
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = True
        if isinstance(layer, nn.Conv2d):
            blocks.append(nn.Sequential())
        blocks[-1].append(layer)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))
    network = LayeredNetwork(blocks, head, input_shape, num_classes)
    _init_as_torchvision(network)
    return network

