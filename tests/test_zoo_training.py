"""Every model trains with BP through the command line on real data (Fashion-MNIST, a smoke-scale
subset), SID trains on the SimpleCNN and on VGG-11 and ResNet-18 backbones, and SLL on SLL's MLP,
CNN and ViT (with units of one block and of two)."""
import json
import math

import pytest

from sidlib import cli
from sidlib import data as datasets
from sidlib.models import BACKBONES, parameter_count

pytestmark = pytest.mark.skipif(
    not datasets.DEBIAN_FASHION_MNIST.is_dir() and not (datasets.default_data_root() / "FashionMNIST").is_dir(),
    reason="Fashion-MNIST is not on this machine (make setup installs Debian's dataset-fashion-mnist)")

SMOKE = ["--dataset", "fashion-mnist", "--epochs", "1", "--train-subset", "64", "--test-subset", "100",
         "--batch-size", "32", "--no-progress", "--device", "cpu"]


def train(tmp_path, capsys, *options):
    out = tmp_path / "run.json"
    assert cli.main(["train", *options, *SMOKE, "--out", str(out)]) == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    (epoch,) = results["history"]
    assert math.isfinite(epoch["train_loss"]) and 0 <= epoch["test_acc"] <= 100
    return results


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_model_trains_with_bp(name, tmp_path, capsys):
    results = train(tmp_path, capsys, "--method", "bp", "--model", name)
    assert results["config"]["model"] == name and results["config"]["head"] is None


@pytest.mark.parametrize("name", ["simplecnn", "vgg11", "resnet18"])
def test_sid_trains_on_a_backbone(name, tmp_path, capsys):
    results = train(tmp_path, capsys, "--method", "sid", "--model", name, "--head", "cascade", "--depth", "3")
    assert results["config"]["head"] == "cascade"


@pytest.mark.parametrize("name, options", [("mlp-2x800", []), ("sll-cnn-fmnist", []), ("sll-vit", []),
                                           ("sll-vit", ["--sll-unit", "2", "--sll-tokens", "mean"]),
                                           ("mlp-3x1000", ["--sll-codes", "50", "--sll-predict", "average"])])
def test_sll_trains_on_its_papers_models(name, options, tmp_path, capsys):
    results = train(tmp_path, capsys, "--method", "sll", "--model", name, *options)
    assert results["config"]["method"] == "sll"


def test_parameter_counts_are_reported_per_model(capsys):
    assert cli.main(["models", "--dataset", "fashion-mnist"]) == 0
    table = capsys.readouterr().out
    for name, build in BACKBONES.items():
        assert f"{parameter_count(build((1, 28, 28), 10)):,}" in table, name
