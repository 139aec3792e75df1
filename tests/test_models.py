"""The model zoo: parameter counts against published ones, computation against torchvision's own
models, the blocks-plus-head structure, any input shape, and SID's cascade on a backbone."""
import pytest
import torch
from torch import nn
from torchvision.models import ResNet18_Weights, VGG11_BN_Weights, ViT_B_16_Weights, VisionTransformer
from torchvision.models import resnet18 as torchvision_resnet18

from sidlib.models import (BACKBONES, CASCADES, MODELS, STACKS, BeliefCascade, LayeredNetwork, build_model, parameter_count,
                           size_table)
from sidlib.models.resnet import resnet18
from sidlib.models.vgg import SLL_CNN_LAYERS, parse_layers
from sidlib.models.vit import vit

FMNIST, CIFAR = (1, 28, 28), (3, 32, 32)


def test_resnet18_is_torchvisions_with_the_published_count():
    # torchvision's published count for ResNet-18 on ImageNet: our builder with its stem, 1000 classes.
    published = ResNet18_Weights.IMAGENET1K_V1.meta["num_params"]
    assert published == 11_689_512
    torch.manual_seed(0)
    ours = resnet18((3, 224, 224), 1000, stem="imagenet")
    assert parameter_count(ours) == published
    # The same computation as torchvision's model, given the same initialisation.
    torch.manual_seed(0)
    reference = torchvision_resnet18(num_classes=1000)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=0)
    # CIFAR stem: 7x7 stride-2 conv (3*64*49) and max-pool -> 3x3 stride-1 conv (3*64*9); 10-class fc.
    cifar = published - 3 * 64 * 49 + 3 * 64 * 9 - (512 * 1000 + 1000) + (512 * 10 + 10)
    assert cifar == 11_173_962 == parameter_count(build_model("resnet18", CIFAR, 10))


def test_vgg11_is_torchvisions_configuration_a_with_a_cifar_classifier():
    # torchvision's vgg11_bn minus its ImageNet classifier (25088-4096-4096-1000), plus Linear(512, 10).
    imagenet_classifier = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    expected = VGG11_BN_Weights.IMAGENET1K_V1.meta["num_params"] - imagenet_classifier + 512 * 10 + 10
    assert expected == 9_231_114 == parameter_count(build_model("vgg11", CIFAR, 10))
    convs = [m for m in build_model("vgg11", CIFAR, 10).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]


def transformer_parameters(channels, side, patch, width, layers, mlp, classes):
    """Count by hand: patch conv, class token, position embedding, per layer two LayerNorms,
    attention (qkv and output projection) and MLP, the final LayerNorm and the classifier."""
    tokens = (side // patch) ** 2 + 1
    embedding = channels * patch * patch * width + width + width + tokens * width
    per_layer = 2 * 2 * width + (3 * width * width + 3 * width) + (width * width + width) + (width * mlp + mlp) + (mlp * width + width)
    return embedding + layers * per_layer + 2 * width + width * classes + classes


def test_vit_builder_matches_torchvision_and_the_published_counts():
    # ViT-B/16 through our builder: torchvision's published count.
    b16 = vit((3, 224, 224), 1000, width=768, layers=12, heads=12, mlp_dim=3072, patch_size=16)
    assert parameter_count(b16) == ViT_B_16_Weights.IMAGENET1K_V1.meta["num_params"] == 86_567_656
    # ViT-Tiny (DeiT-Ti: width 192, 12 layers, 3 heads, MLP 768) at 224/16 with 1000 classes: 5,717,416,
    # the count timm reports for deit_tiny_patch16_224 (the DeiT paper rounds it to 5M).
    tiny = vit((3, 224, 224), 1000, width=192, layers=12, heads=3, mlp_dim=768, patch_size=16)
    assert parameter_count(tiny) == transformer_parameters(3, 224, 16, 192, 12, 768, 1000) == 5_717_416
    # The CIFAR versions (4x4 patches) and SLL's ViT (7 blocks, 12 heads, width 384, MLP ratio 2).
    assert parameter_count(build_model("vit-tiny", CIFAR, 10)) == transformer_parameters(3, 32, 4, 192, 12, 768, 10)
    sll = build_model("sll-vit", CIFAR, 10)
    assert parameter_count(sll) == transformer_parameters(3, 32, 4, 384, 7, 768, 10) == 8_335_882
    assert len(sll.blocks) == 7 and all(b.self_attention.num_heads == 12 for b in sll.blocks[1:])
    # Same computation as torchvision's VisionTransformer with the same initialisation.
    torch.manual_seed(0)
    ours = vit(CIFAR, 10, width=64, layers=2, heads=4, mlp_dim=128, patch_size=4)
    torch.manual_seed(0)
    reference = VisionTransformer(32, 4, 2, 4, 64, 128, num_classes=10)
    x = torch.randn(3, *CIFAR)
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def test_mlp_counts():
    # SLL Table 1's MLPs: 2x800 on MNIST, 3x1000 on CIFAR.
    assert parameter_count(build_model("mlp-2x800", FMNIST, 10)) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10 == 1_276_810
    assert parameter_count(build_model("mlp-3x1000", CIFAR, 10)) == 3072 * 1000 + 1000 + 2 * (1000 * 1000 + 1000) + 1000 * 10 + 10


def table_a5_count(spec, shape, classes):
    """Count SLL Table A5's layer string by hand: 3x3 conv + bias + BatchNorm (2 per channel),
    2x2 pooling rounding down, FC layers on the flattened output; the last FC has ``classes`` outputs."""
    channels, side, total, flat = shape[0], shape[1], 0, None
    layers = parse_layers(spec)
    for kind, width in layers[:-1]:
        if kind == "conv":
            total += 9 * channels * width + width + 2 * width
            channels = width
        elif kind == "pool":
            side //= 2
        else:
            total += (flat or channels * side * side) * width + width
            flat = width
    return total + (flat or channels * side * side) * classes + classes


@pytest.mark.parametrize("row,shape,classes", [("fmnist", FMNIST, 10), ("cifar10", CIFAR, 10),
                                               ("cifar100", CIFAR, 100), ("tiny", (3, 64, 64), 200)])
def test_sll_cnns_follow_table_a5(row, shape, classes):
    model = build_model(f"sll-cnn-{row}", shape, classes)
    assert parameter_count(model) == table_a5_count(SLL_CNN_LAYERS[row], shape, classes)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [w for k, w in parse_layers(SLL_CNN_LAYERS[row]) if k == "conv"]
    if row == "fmnist":
        assert parameter_count(model) == 2_147_466


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("shape", [FMNIST, CIFAR])
def test_a_backbone_is_its_blocks_then_its_head(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 7).eval()
    assert isinstance(model, LayeredNetwork) and len(model.blocks) >= 2
    x = torch.randn(2, *shape)
    h = x
    for block in model.blocks:
        h = block(h)
    torch.testing.assert_close(model.head(h), model(x), rtol=0, atol=0)
    assert model(x).shape == (2, 7) and model.features(x).shape == (2, model.feature_dim)


@pytest.mark.parametrize("name", ["simplecnn", "vgg11", "resnet18", "vit-tiny", "mlp-2x800"])
def test_sid_on_a_backbone_is_a_cascade_reading_its_features(name):
    torch.manual_seed(0)
    model = build_model(name, FMNIST, 10, depth=3, head="cascade").eval()
    assert isinstance(model, BeliefCascade) and model.depth == 3
    x = torch.randn(2, *FMNIST)
    features = model.extractor(x)
    assert features.shape == (2, model.feature_dim)
    torch.testing.assert_close(model(x), model.refine(features)[-1], rtol=0, atol=0)
    if name in BACKBONES:  # the extractor is the backbone without its classifier
        torch.manual_seed(0)
        backbone = build_model(name, FMNIST, 10).eval()
        torch.testing.assert_close(features, backbone.features(x))


def test_input_shapes_a_model_cannot_take_are_named():
    for name in ("vgg11", "resnet18", "vit-tiny"):
        with pytest.raises(ValueError, match=f"{name} takes images"):
            build_model(name, (1, 40), 10)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        build_model("vit-tiny", (3, 30, 30), 10)
    with pytest.raises(ValueError, match="too small"):
        build_model("sll-cnn-fmnist", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="no linear head"):
        build_model("simplecnn", FMNIST, 10, head="linear")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet", FMNIST, 10)
    # 1-D signals (MNIST-1D) work where the architecture allows it
    for name in ("mlp-2x800", "sll-cnn-fmnist", "simplecnn"):
        assert build_model(name, (1, 40), 10).eval()(torch.randn(2, 1, 40)).shape == (2, 10)


def test_every_model_builds_on_the_meta_device():
    # TrainConfig.validate builds models there to check shapes without allocating anything.
    with torch.device("meta"):
        for name in MODELS:
            model = build_model(name, CIFAR, 100, depth=2)
            assert all(p.is_meta for p in model.parameters())
    assert set(MODELS) == set(BACKBONES) | set(CASCADES) | set(STACKS)


@pytest.mark.parametrize("name", list(STACKS))
@pytest.mark.parametrize("depth", [1, 2, 5])
def test_a_stacks_depth_is_its_number_of_blocks(name, depth):
    torch.manual_seed(0)
    model = build_model(name, FMNIST, 10, depth=depth).eval()
    assert isinstance(model, LayeredNetwork) and len(model.blocks) == depth
    x = torch.randn(2, *FMNIST)
    h = x
    for block in model.blocks:
        h = block(h)
    torch.testing.assert_close(model.head(h), model(x), rtol=0, atol=0)
    if name == "deep-cnn":
        widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert widths == [64, 128, 256, 256, 256][:depth]
    with pytest.raises(ValueError, match="no cascade head"):
        build_model(name, FMNIST, 10, depth=depth, head="cascade")


def test_the_books_table_of_models_is_what_the_builders_build():
    from pathlib import Path
    page = (Path(__file__).resolve().parents[1] / "book" / "models.md").read_text()
    rows = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = cells[1:]
    assert set(rows) == set(MODELS)
    for row in size_table(FMNIST, 10, 10):
        linear, cascade = (f"{row[h]:,}" if row[h] is not None else "-" for h in ("linear", "cascade"))
        assert rows[row["model"]] == [str(row["blocks"]), linear, cascade], row
    # the table's counts are the builders' own, not only the table function's
    assert rows["resnet18"][1] == f"{parameter_count(build_model('resnet18', FMNIST, 10)):,}"
    assert rows["simplecnn"][2] == f"{parameter_count(build_model('simplecnn', FMNIST, 10, 10)):,}"


def test_an_mlps_width_is_an_option_and_only_an_mlps():
    model = build_model("mlp-2x800", FMNIST, 10, width=30)
    assert parameter_count(model) == (784 * 30 + 30) + (30 * 30 + 30) + (30 * 10 + 10)
    assert [b[-2].out_features for b in build_model("deep-mlp", FMNIST, 10, depth=3, width=7).blocks] == [7, 7, 7]
    with pytest.raises(ValueError, match="a width can be set for"):
        build_model("vgg11", FMNIST, 10, width=30)
