"""ResNet-18 (SID Table 3), built from torchvision's ``resnet18``.

The CIFAR-style stem replaces torchvision's 7x7 stride-2 convolution and max-pool by one 3x3
stride-1 convolution, as CIFAR ResNets do (He et al. 2016, section 4.2; kuangliu/pytorch-cifar), so
a 32x32 image keeps its resolution into the first stage. ``stem="imagenet"`` keeps torchvision's.
Blocks: the stem, then the eight BasicBlocks in order; head: global average pool, Linear(512, classes).
"""
from __future__ import annotations

from torch import nn

from .layered import LayeredNetwork, image_shape

STEMS = ("cifar", "imagenet")


def resnet18(input_shape: tuple[int, ...], num_classes: int, stem: str = "cifar") -> LayeredNetwork:
    channels, _, _ = image_shape("resnet18", input_shape)
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose from {STEMS}")
    # imported here, when a model is built: importing torchvision loads torch._dynamo, about 2 s for every process
    from torchvision.models import resnet18 as torchvision_resnet18
    net = torchvision_resnet18(num_classes=num_classes)
    if stem == "cifar" or channels != 3:
        kernel, stride, padding = (3, 1, 1) if stem == "cifar" else (7, 2, 3)
        net.conv1 = nn.Conv2d(channels, 64, kernel, stride, padding, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    if stem == "cifar":
        net.maxpool = nn.Identity()
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    blocks = [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)] + [block for stage in stages for block in stage]
    head = nn.Sequential(net.avgpool, nn.Flatten(), net.fc)
    return LayeredNetwork(blocks, head, input_shape, num_classes)
