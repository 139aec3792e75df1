"""Linear CKA and true-class belief trajectories against properties and hand computations."""
import pytest
import torch

from helpers import trained_synthetic_sid

from sidlib.analysis import similarity


def test_linear_cka_is_one_under_rotation_scaling_and_shift_and_small_for_independent_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    assert similarity.linear_cka(x, x) == pytest.approx(1.0)
    assert similarity.linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    independent = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    assert similarity.linear_cka(x, independent) < 0.15
    # a non-isotropic scaling of the columns is not an invariance of linear CKA
    assert similarity.linear_cka(x, x * torch.tensor([10.0, 1, 1, 1, 1, 1])) < 0.99


def test_linear_cka_against_a_hand_computation():
    # centred, x = [-1, 0, 1] and y = [1, -1, 1] - 1/3 = [2/3, -4/3, 2/3] are orthogonal: CKA 0
    x = torch.tensor([[0.0], [1.0], [2.0]])
    assert similarity.linear_cka(x, torch.tensor([[1.0], [-1.0], [1.0]])) == pytest.approx(0.0, abs=1e-12)
    # two columns: X = [[1,0],[0,1],[-1,-1]] (already centred), Y = X[:, :1]
    # ||Y^T X||^2 = 2^2 + 1^2 = 5, ||X^T X|| = ||[[2,1],[1,2]]|| = sqrt(10), ||Y^T Y|| = 2
    big = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert similarity.linear_cka(big, big[:, :1]) == pytest.approx(5 / (10 ** 0.5 * 2))
    with pytest.raises(ValueError, match="same samples"):
        similarity.linear_cka(big, big[:2])
    matrix = similarity.cka_matrix([big, big[:, :1]], [big])
    assert matrix.shape == (2, 1) and matrix[0, 0] == pytest.approx(1.0)


def test_true_class_beliefs_hard_examples_and_monotone_share():
    labels = torch.tensor([0, 1, 1])
    beliefs = [torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]), torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])]
    trajectories = similarity.true_class_beliefs([b.log() for b in beliefs], labels)
    assert torch.allclose(trajectories, torch.tensor([[0.5, 0.5, 0.5], [0.9, 0.7, 0.4]]))
    assert similarity.monotone_share(trajectories) == pytest.approx(2 / 3)
    assert similarity.monotone_share(trajectories, tolerance=0.1) == 1.0
    hard = similarity.hard_examples([torch.tensor([0, 1, 0]), torch.tensor([1, 1, 1])], labels)
    assert hard.tolist() == [True, False, True]
    assert similarity.largest_drop(trajectories).tolist() == pytest.approx([0.0, 0.0, 0.1])
    assert similarity.largest_drop(trajectories[:1]).tolist() == [0.0, 0.0, 0.0]  # one module: no fall


def test_belief_snapshot_keeps_the_cascades_beliefs_on_the_first_test_images():
    from sidlib.analysis import descent

    data, cfg, model = trained_synthetic_sid(depth=3)
    snapshot = similarity.belief_snapshot(model, data, cfg, test_samples=40, decimals=5)
    beliefs, labels = similarity.snapshot_tensors(snapshot)
    assert snapshot["test_samples"] == 40 and len(beliefs) == 3 and labels.tolist() == data.test_labels[:40].tolist()
    expected = descent.cascade_log_beliefs(model, data.prepare(data.test_images[:40]))[1:]
    for kept, want in zip(beliefs, expected):
        assert kept.shape == (40, data.info.num_classes)
        assert torch.allclose(kept, want.exp(), atol=5e-6)  # rounded to 5 decimals, nothing else
    assert similarity.snapshot_tensors(similarity.belief_snapshot(model, data, cfg, test_samples=10**6))[1].numel() \
        == len(data.test_labels)
