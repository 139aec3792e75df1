"""Small shared fixtures for the tests."""
import contextlib
from dataclasses import replace

import torch

from sidlib.config import TrainConfig
from sidlib.models import build_model

SHAPE = (1, 12, 12)
CLASSES = 10


def tiny_problem(depth=4, batch=16, seed=0, shape=SHAPE):
    torch.manual_seed(seed)
    model = build_model("simplecnn", shape, CLASSES, depth)
    images = torch.randn(batch, *shape)
    labels = torch.randint(0, CLASSES, (batch,))
    return model, images, labels


def config(**changes):
    return replace(TrainConfig(dataset="synthetic", device="cpu"), **changes)


no_autocast = contextlib.nullcontext


def grads(model):
    return {name: (p.grad.clone() if p.grad is not None else None) for name, p in model.named_parameters()}


def random_log_beliefs(n, c, seed, concentration=1.0):
    """Random full-support beliefs (float64 log-probabilities), softmax of scaled Gaussian logits."""
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(concentration * torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)


def trained_synthetic_sid(depth, train_subset=200):
    """(data, config, model in eval mode): SID trained for one epoch on the synthetic dataset, for
    tests of what an analysis reads from a trained cascade."""
    from sidlib import data as datasets
    from sidlib.analysis import descent

    data = datasets.load("synthetic", train_subset=train_subset)
    cfg = TrainConfig(method="sid", dataset="synthetic", depth=depth, epochs=1, batch_size=64).validate()
    return data, cfg, descent.train_sid_model(cfg, data).eval()
