"""How alike two networks' representations are, and how a cascade's belief in the true class moves.

For SID's "converge then refine" claim (its Figures 5 and 8): linear CKA between the beliefs of
SID's modules and BP's, and the true-class belief along the depth of a cascade on hard examples.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _centred(x: Tensor) -> Tensor:
    x = x.double().flatten(1)
    return x - x.mean(0, keepdim=True)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same n samples (rows):
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring each column (Kornblith et al. 2019).
    1 for representations equal up to rotation and isotropic scaling, 0 for orthogonal ones."""
    if len(x) != len(y):
        raise ValueError(f"CKA compares representations of the same samples; got {len(x)} and {len(y)} rows")
    x, y = _centred(x), _centred(y)
    cross = (y.T @ x).pow(2).sum()
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def cka_matrix(first: list[Tensor], second: list[Tensor]) -> Tensor:
    """``linear_cka(first[i], second[j])`` for every pair: rows follow ``first``, columns ``second``."""
    return torch.tensor([[linear_cka(a, b) for b in second] for a in first], dtype=torch.float64)


def true_class_beliefs(log_beliefs: list[Tensor], labels: Tensor) -> Tensor:
    """p_i(y) for every module i (rows) and sample (columns), from a cascade's log-beliefs."""
    return torch.stack([b.gather(1, labels[:, None]).squeeze(1).exp() for b in log_beliefs])


def hard_examples(predictions: list[Tensor], labels: Tensor) -> Tensor:
    """Mask of the samples that at least one of the models misclassifies (the paper's "hard" ones)."""
    wrong = torch.zeros_like(labels, dtype=torch.bool)
    for predicted in predictions:
        wrong |= predicted != labels
    return wrong


def monotone_share(trajectories: Tensor, tolerance: float = 0.0) -> float:
    """Share of samples (columns) whose value never falls by more than ``tolerance`` from one module
    (row) to the next."""
    steps = trajectories[1:] - trajectories[:-1]
    return float((steps >= -tolerance).all(0).double().mean())


def largest_drop(trajectories: Tensor) -> Tensor:
    """Per sample (column), the largest fall of the value from one module (row) to the next; 0 where it never falls."""
    if len(trajectories) < 2:  # one module: nothing to fall from
        return trajectories.new_zeros(trajectories.shape[1:])
    return (trajectories[:-1] - trajectories[1:]).clamp_min(0).amax(0)


@torch.no_grad()
def belief_snapshot(model, data, config, test_samples: int = 1000, decimals: int = 5) -> dict:
    """The beliefs p_1..p_L of a trained cascade on the first ``test_samples`` test images, with their
    labels, ready for a run's JSON (meant as the ``analyse`` of ``sidlib.book.experiments.run_grid``):
    CKA and belief trajectories compare two networks' beliefs on the same images, so the beliefs
    themselves are kept, rounded to ``decimals`` (1e-5 is far below any difference read from them)."""
    from .descent import cascade_log_beliefs  # the cascade's own forward pass, as inference runs it

    count = min(test_samples, len(data.test_labels))
    images, labels = data.prepare(data.test_images[:count]), data.test_labels[:count]
    beliefs = cascade_log_beliefs(model, images)[1:]  # p_0 is uniform: nothing to compare
    return {"test_samples": count, "labels": labels.tolist(),
            "beliefs": [belief.exp().round(decimals=decimals).tolist() for belief in beliefs]}


def snapshot_tensors(snapshot: dict) -> tuple[list[Tensor], Tensor]:
    """The per-module beliefs (float64, samples x classes each) and labels of a :func:`belief_snapshot`."""
    return ([torch.tensor(b, dtype=torch.float64) for b in snapshot["beliefs"]],
            torch.tensor(snapshot["labels"], dtype=torch.long))
