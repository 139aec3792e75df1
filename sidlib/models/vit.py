"""Vision transformers from torchvision's blocks: ViT-Tiny (SID Table 3) and SLL's ViT (SLL Table A6).

``vit`` builds ``torchvision.models.VisionTransformer`` and regroups its parts: the patch embedding
(convolution, class token, position embedding) is folded into the first block, so the blocks are
exactly the encoder layers; the head is the final LayerNorm, the class token, and the classifier.
The computation is torchvision's, unchanged. Inputs may have any number of channels; height and
width must be equal and divisible by the patch size.

* ViT-Tiny: width 192, 12 layers, 3 heads, MLP 768 (DeiT-Ti, Touvron et al. 2021); for 32x32 or
  28x28 inputs we use 4x4 patches, the usual CIFAR adaptation (the SID paper does not give its patch size).
* SLL's ViT: width 384, 7 blocks, 12 heads, MLP ratio 2 (768); patch size not given, 4x4 here too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .layered import LayeredNetwork, image_shape

if TYPE_CHECKING:
    from torchvision.models.vision_transformer import VisionTransformer


class PatchEmbedding(nn.Module):
    """Image -> tokens: torchvision's ``_process_input``, the class token, and the encoder's
    position embedding and dropout, in torchvision's order."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ClassToken(nn.Module):
    def forward(self, tokens: Tensor) -> Tensor:
        return tokens[:, 0]


def vit(input_shape: tuple[int, ...], num_classes: int, width: int, layers: int, heads: int, mlp_dim: int,
        patch_size: int = 4, dropout: float = 0.0, name: str = "vit") -> LayeredNetwork:
    channels, height, width_px = image_shape(name, input_shape)
    if height != width_px or height % patch_size:
        raise ValueError(f"{name} needs square images whose side is divisible by the patch size {patch_size}, "
                         f"got {height}x{width_px}")
    # imported here, when a model is built: importing torchvision loads torch._dynamo, about 2 s for every process
    from torchvision.models.vision_transformer import VisionTransformer
    net = VisionTransformer(image_size=height, patch_size=patch_size, num_layers=layers, num_heads=heads,
                            hidden_dim=width, mlp_dim=mlp_dim, dropout=dropout, num_classes=num_classes)
    if channels != 3:
        net.conv_proj = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        fan_in = channels * patch_size * patch_size  # torchvision's initialisation of the patch stem
        nn.init.trunc_normal_(net.conv_proj.weight, std=(1 / fan_in) ** 0.5)
        nn.init.zeros_(net.conv_proj.bias)
    encoder_layers = list(net.encoder.layers)
    blocks = [nn.Sequential(PatchEmbedding(net), encoder_layers[0])] + encoder_layers[1:]
    head = nn.Sequential(net.encoder.ln, ClassToken(), net.heads.head)
    return LayeredNetwork(blocks, head, input_shape, num_classes)


def vit_tiny(input_shape, num_classes, patch_size: int = 4) -> LayeredNetwork:
    return vit(input_shape, num_classes, width=192, layers=12, heads=3, mlp_dim=768, patch_size=patch_size,
               name="vit-tiny")


def sll_vit(input_shape, num_classes, patch_size: int = 4) -> LayeredNetwork:
    return vit(input_shape, num_classes, width=384, layers=7, heads=12, mlp_dim=2 * 384, patch_size=patch_size,
               name="sll-vit")
